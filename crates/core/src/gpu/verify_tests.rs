//! The whole GPU appraisal against NVIDIA's own verdicts: every case of
//! tests/vectors/nvidia/cases.json (NVIDIA's `nv-local-gpu-verifier` 2.7.3, run offline),
//! check by check, with each place where we are deliberately stricter named and asserted.

use serde_json::Value;

use super::verify::check;
use super::*;
use crate::test_support::vector;
use crate::verify::time::parse_rfc3339;

fn cases() -> Vec<Value> {
    serde_json::from_slice(&vector("nvidia/cases.json")).unwrap()
}

fn nv(path: &str) -> Vec<u8> {
    vector(&format!("nvidia/{path}"))
}

/// The stapled answers of a case's `ocsp_dir` (base64 text files), sorted by name.
fn ocsp_dir(dir: &str) -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/nvidia");
    let mut names: Vec<_> = std::fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| decode_ocsp_file(std::fs::read(p).unwrap()))
        .collect()
}

struct Run {
    report: GpuReport,
    case: Value,
}

fn run(case: &Value, policy: &GpuPolicy) -> GpuReport {
    let s = |k: &str| case[k].as_str().map(str::to_string);
    let mut collateral = GpuCollateral::default();
    for k in ["driver_rim", "vbios_rim"] {
        if let Some(p) = s(k) {
            collateral.rims.push(RimFile {
                id: None,
                xml: nv(&p),
            });
        }
    }
    if let Some(d) = s("ocsp_dir") {
        collateral.ocsp = ocsp_dir(&d);
    }
    let nonce: [u8; 32] = hex::decode(s("nonce").unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let report = nv(&s("report").unwrap());
    let chain = nv(&s("cert_chain").unwrap());
    verify_gpu(
        GpuEvidenceRef {
            report: &report,
            chain_pem: &chain,
        },
        &nonce,
        &collateral,
        policy,
        &GpuRoots::nvidia().unwrap(),
        parse_rfc3339(&s("verify_at").unwrap()).unwrap(),
    )
}

/// NVIDIA ran OCSP only in the two stapled cases; elsewhere its OCSP was stubbed "good", so
/// ours is skipped to compare like with like.
fn policy_for(case: &Value) -> GpuPolicy {
    GpuPolicy {
        insecure_skip_ocsp: case["ocsp_dir"].is_null(),
        ..GpuPolicy::default()
    }
}

fn ok(r: &GpuReport, name: &str) -> Option<bool> {
    r.check_named(name).map(|c| c.ok)
}

fn all_runs() -> Vec<Run> {
    cases()
        .into_iter()
        .map(|case| Run {
            report: run(&case, &policy_for(&case)),
            case,
        })
        .collect()
}

fn is_trailing_byte_case(case: &Value) -> bool {
    case["report"].as_str() == Some("coco-trustee/hopper-580.95.05/report.bin")
}

#[test]
fn every_case_gives_nvidias_result_for_every_check_nvidia_ran() {
    let runs = all_runs();
    assert_eq!(runs.len(), 23);
    for Run { report: r, case } in &runs {
        let name = case["case"].as_str().unwrap();
        let e = &case["expect"];
        let ctx = || format!("{name}:\n{}", r.render_text());
        assert_eq!(
            ok(r, check::DEVICE_CHAIN),
            e["device_chain_valid"].as_bool(),
            "{}",
            ctx()
        );
        if is_trailing_byte_case(case) {
            // Stricter (docs/verification.md): the byte after the signature makes the report
            // malformed, so nothing that reads it is evaluated. NVIDIA reads the signature as
            // the last 96 bytes, which then fails to verify.
            assert_eq!(ok(r, check::STRUCTURE), Some(false), "{}", ctx());
            assert_eq!(e["signature_valid"], false);
            assert!(
                r.not_evaluated_checks()
                    .iter()
                    .any(|n| n == check::SIGNATURE)
            );
            assert!(!r.accepted());
            continue;
        }
        assert_eq!(ok(r, check::STRUCTURE), Some(true), "{}", ctx());
        match &e["fwid_match"] {
            Value::Bool(b) => assert_eq!(ok(r, check::FWID), Some(*b), "{}", ctx()),
            // NVIDIA skips the check when the report has no FWID; we fail it by default
            // (stricter; `missing_fwid_is_refused_unless_the_policy_allows_it`).
            _ => {
                let c = r.check_named(check::FWID).unwrap();
                assert!(!c.ok && c.found.contains("no FWID field"), "{}", ctx());
            }
        }
        assert_eq!(ok(r, check::NONCE), e["nonce_match"].as_bool(), "{}", ctx());
        assert_eq!(
            ok(r, check::SIGNATURE),
            e["signature_valid"].as_bool(),
            "{}",
            ctx()
        );
        let gpu = r.gpu();
        assert_eq!(
            gpu.driver_version.as_deref(),
            e["report_driver_version"].as_str()
        );
        assert_eq!(
            gpu.vbios_version
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref(),
            e["report_vbios_version"].as_str()
        );
        for (kind, key) in [
            (RimKind::Driver, "driver_rim"),
            (RimKind::Vbios, "vbios_rim"),
        ] {
            let x = &e[key];
            if x == "not supplied" {
                let c = r.check_named(&kind.check_name("")).unwrap();
                assert!(!c.ok && c.found == "not supplied", "{}", ctx());
                assert!(
                    r.not_evaluated_checks()
                        .contains(&kind.check_name("signature"))
                );
                continue;
            }
            assert_eq!(
                ok(r, &kind.check_name("")),
                x["schema_valid"].as_bool(),
                "{}",
                ctx()
            );
            assert_eq!(
                ok(r, &kind.check_name("version")),
                x["version_match"].as_bool(),
                "{}",
                ctx()
            );
            let chain = r.check_named(&kind.check_name("signing chain")).unwrap();
            assert_eq!(Some(chain.ok), x["cert_chain_valid"].as_bool(), "{}", ctx());
            if x["cert_status"] == "expired" {
                assert!(chain.found.contains("not valid at"), "{}", ctx());
            }
            match x["signature_valid"].as_bool() {
                Some(b) => assert_eq!(ok(r, &kind.check_name("signature")), Some(b), "{}", ctx()),
                // NVIDIA stops at the failed chain; the signature itself is sound and we say so.
                None => assert_eq!(
                    ok(r, &kind.check_name("signature")),
                    Some(true),
                    "{}",
                    ctx()
                ),
            }
        }
        match &e["measurements_match"] {
            Value::Null => {
                assert!(
                    r.not_evaluated_checks()
                        .iter()
                        .any(|n| n == check::MEASUREMENTS),
                    "{}",
                    ctx()
                )
            }
            Value::Bool(b) => {
                let c = r.check_named(check::MEASUREMENTS).unwrap();
                assert_eq!(c.ok, *b, "{}", ctx());
                let listed: Vec<String> = e["mismatched_indexes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| format!("{} [{}]", m[0], m[1].as_str().unwrap()))
                    .collect();
                if !b {
                    assert!(c.found.ends_with(&listed.join(", ")), "{}", ctx());
                }
            }
            other => panic!("{name}: measurements_match {other}"),
        }
    }
}

#[test]
fn the_overall_verdict_is_nvidias_except_where_we_are_stricter() {
    for Run { report: r, case } in all_runs() {
        let name = case["case"].as_str().unwrap();
        let nvidia = case["expect"]["nvidia_attest_overall"].as_bool().unwrap();
        let no_fwid = !case["expect"]["fwid_match"].is_boolean();
        let stapled_august = name.ends_with("stapled-ocsp-at-2025-08-21.json");
        if nvidia && no_fwid {
            // Accepted by NVIDIA without an FWID; by us only when the policy says so.
            assert!(!r.accepted(), "{name}");
            let lenient = GpuPolicy {
                insecure_allow_missing_fwid: true,
                ..policy_for(&case)
            };
            let again = run(&case, &lenient);
            assert!(again.accepted(), "{name}:\n{}", again.render_text());
            assert!(again.skipped().iter().any(|s| s.name == check::FWID));
        } else if stapled_august {
            // NVIDIA does not judge OCSP freshness: the RIM chains' answers were produced in
            // October, after this verification time, so we refuse them.
            assert!(!r.accepted(), "{name}");
            for kind in [RimKind::Driver, RimKind::Vbios] {
                let c = r.check_named(&kind.check_name("revocation")).unwrap();
                assert!(!c.ok, "{name}: {c:?}");
            }
            assert_eq!(ok(&r, check::DEVICE_REVOCATION), Some(true), "{name}");
        } else {
            assert_eq!(r.accepted(), nvidia, "{name}:\n{}", r.render_text());
        }
    }
}

#[test]
fn stapled_answers_in_october_fail_the_device_chain_as_nvidia_does_and_pass_the_rims() {
    let case = cases()
        .into_iter()
        .find(|c| {
            c["case"]
                .as_str()
                .unwrap()
                .ends_with("stapled-ocsp-at-2025-10-24.json")
        })
        .unwrap();
    let r = run(&case, &policy_for(&case));
    let device = r.check_named(check::DEVICE_REVOCATION).unwrap();
    assert!(!device.ok, "{device:?}");
    assert!(device.found.contains("Responder"), "{device:?}");
    for kind in [RimKind::Driver, RimKind::Vbios] {
        assert_eq!(
            ok(&r, &kind.check_name("revocation")),
            Some(true),
            "{}",
            r.render_text()
        );
    }
}

#[test]
fn a_skipped_check_is_reported_as_skipped_never_as_passed() {
    let case = &cases()[0];
    let policy = GpuPolicy {
        insecure_skip_rims: true,
        insecure_skip_ocsp: true,
        ..GpuPolicy::default()
    };
    let r = run(case, &policy);
    assert!(r.accepted(), "{}", r.render_text());
    let skipped: Vec<&str> = r.skipped().iter().map(|s| s.name.as_str()).collect();
    for name in [
        check::DEVICE_REVOCATION,
        check::MEASUREMENTS,
        "GPU driver RIM",
        "GPU driver RIM version",
        "GPU driver RIM signing chain",
        "GPU driver RIM signature",
        "GPU driver RIM revocation",
        "GPU VBIOS RIM",
        "GPU VBIOS RIM version",
        "GPU VBIOS RIM signing chain",
        "GPU VBIOS RIM signature",
        "GPU VBIOS RIM revocation",
    ] {
        assert!(skipped.contains(&name), "{name}: {skipped:?}");
        assert!(
            r.check_named(name).is_none(),
            "{name} is both skipped and a check"
        );
    }
    assert!(
        r.warnings()
            .iter()
            .any(|w| w.contains("insecure_skip_rims"))
    );
    // Every check the full appraisal reports is, with the switches, a check or skipped.
    let full = run(case, &policy_for(case));
    let names: Vec<&str> = full
        .checks()
        .iter()
        .map(|c| c.name.as_str())
        .chain(full.skipped().iter().map(|s| s.name.as_str()))
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    for name in &names {
        assert!(
            r.check_named(name).is_some() || skipped.contains(name),
            "{name} is neither a check nor skipped"
        );
    }
    // An unreadable report: every check that reads it, the RIM checks among them, is listed
    // as not evaluated.
    let mut bad = case.clone();
    bad["report"] = "nvidia-nvtrust/hopper-550.90.07/nonce.hex".into();
    let r = run(&bad, &policy_for(case));
    assert_eq!(r.check_named(check::STRUCTURE).map(|c| c.ok), Some(false));
    for name in &names {
        assert!(
            r.check_named(name).is_some()
                || r.not_evaluated_checks().iter().any(|n| n == name)
                || r.skipped().iter().any(|s| s.name == *name),
            "{name} is missing from the appraisal of an unreadable report"
        );
    }
}

#[test]
fn policy_versions_and_architectures_are_enforced() {
    let case = &cases()[0]; // 550.90.07, VBIOS 96.00.9F.00.01, Hopper
    let base = policy_for(case);
    let strict = |f: &dyn Fn(&mut GpuPolicy)| {
        let mut p = base.clone();
        f(&mut p);
        run(case, &p)
    };
    let r = strict(&|p| p.min_driver_version = Some(DriverVersion::parse("550.100").unwrap()));
    assert_eq!(ok(&r, check::DRIVER_VERSION), Some(false));
    let r = strict(&|p| p.min_driver_version = Some(DriverVersion::parse("550.90.07").unwrap()));
    assert_eq!(ok(&r, check::DRIVER_VERSION), Some(true));
    let r = strict(&|p| {
        p.vbios_versions = Some([VbiosVersion::parse("96.00.88.00.11").unwrap()].into())
    });
    assert_eq!(ok(&r, check::VBIOS_VERSION), Some(false));
    let r = strict(&|p| {
        p.vbios_versions = Some([VbiosVersion::parse("96.00.9f.00.01").unwrap()].into())
    });
    assert_eq!(ok(&r, check::VBIOS_VERSION), Some(true));
    let r = strict(&|p| p.architectures = [Architecture::Blackwell].into());
    assert_eq!(ok(&r, check::ARCHITECTURE), Some(false));
    assert!(!r.accepted());
}

#[test]
fn every_real_report_names_its_architecture_and_rim_ids() {
    for (dir, arch, driver_id) in [
        (
            "nvidia-nvtrust/hopper-550.90.07",
            "hopper",
            "NV_GPU_DRIVER_GH100_550.90.07",
        ),
        (
            "coco-trustee/blackwell-gb202-595.58.03",
            "blackwell",
            "NV_GPU_CC_DRIVER_GB202_595.58.03",
        ),
        (
            "google-go-nvattest-tools/mpt-blackwell-gb100-590.48.01-gpu0",
            "blackwell",
            "NV_GPU_CC_DRIVER_GB100_590.48.01",
        ),
    ] {
        let chain = chain_der(&nv(&format!("{dir}/cert_chain.pem"))).unwrap();
        let subjects = verify_device_chain(
            &chain,
            GpuRoots::nvidia().unwrap().device_der(),
            parse_rfc3339("2026-12-04T15:00:00Z").unwrap(),
        )
        .unwrap();
        let a = Architecture::from_leaf_subject(&subjects[0]).unwrap();
        assert_eq!(a.to_string(), arch, "{dir}");
        let report = SpdmReport::parse(&nv(&format!("{dir}/report.bin"))).unwrap();
        let (d, v) = rim_ids(&report, Some(a));
        assert_eq!(d.as_deref(), Some(driver_id), "{dir}");
        assert!(v.unwrap().starts_with("NV_GPU_VBIOS_"), "{dir}");
    }
    // The VBIOS id of the 550.90.07 vector is the RIM service id its RIM file is named by.
    let report = SpdmReport::parse(&nv("nvidia-nvtrust/hopper-550.90.07/report.bin")).unwrap();
    assert_eq!(
        rim_ids(&report, Some(Architecture::Hopper)).1.as_deref(),
        Some("NV_GPU_VBIOS_1010_0200_882_96009F0001")
    );
}

#[test]
fn a_warm_verifier_gives_the_cold_report_and_never_uses_a_verdict_outside_its_window() {
    let find = |suffix: &str| {
        cases()
            .into_iter()
            .find(|c| c["case"].as_str().unwrap().ends_with(suffix))
            .unwrap()
    };
    let verifier = GpuVerifier::new();
    let warm_run = |case: &Value| {
        let s = |k: &str| case[k].as_str().unwrap().to_string();
        let collateral = GpuCollateral {
            rims: ["driver_rim", "vbios_rim"]
                .map(|k| RimFile {
                    id: None,
                    xml: nv(&s(k)),
                })
                .to_vec(),
            ocsp: vec![],
        };
        let nonce: [u8; 32] = hex::decode(s("nonce")).unwrap().try_into().unwrap();
        verifier.verify(
            GpuEvidenceRef {
                report: &nv(&s("report")),
                chain_pem: &nv(&s("cert_chain")),
            },
            &nonce,
            &collateral,
            &policy_for(case),
            &GpuRoots::nvidia().unwrap(),
            parse_rfc3339(&s("verify_at")).unwrap(),
        )
    };
    let early = find("solpbc/hopper-595.71.05-96.00.88.00.11/expected-at-2026-10-02.json");
    let late = find("solpbc/hopper-595.71.05-96.00.88.00.11/expected-at-2028-01-01.json");
    for _ in 0..2 {
        assert_eq!(warm_run(&early), run(&early, &policy_for(&early)));
    }
    // Cached as valid in 2026; in 2028 the VBIOS RIM's signer has expired.
    let r = warm_run(&late);
    assert_eq!(r, run(&late, &policy_for(&late)));
    assert_eq!(ok(&r, "GPU VBIOS RIM signing chain"), Some(false));
}

/// The chains do not re-verify the pinned roots' signatures on themselves, so loading the
/// roots must: a roots file whose certificate is not self-issued, or whose self-signature
/// fails, is refused.
#[test]
fn gpu_roots_that_are_not_self_signed_are_refused() {
    let pem = |der: &[u8]| {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            crate::encoding::b64(der)
        )
    };
    let device = chain_der(NVIDIA_DEVICE_ROOT_PEM).unwrap().remove(0);
    let rim = chain_der(NVIDIA_RIM_ROOT_PEM).unwrap().remove(0);
    let good = format!("{}{}", pem(&device), pem(&rim));
    let roots = GpuRoots::insecure_from_pem(good.as_bytes()).unwrap();
    assert_eq!(roots.rim_der(), rim.as_slice());

    // The RIM chain's CA (issued by the root) in the RIM root's place.
    let rim_file = nv("nvidia-nvtrust/hopper-550.90.07/NV_GPU_DRIVER_GH100_550.90.07.xml");
    let ca = Rim::parse(&rim_file).unwrap().signing_chain()[2].clone();
    let err = GpuRoots::insecure_from_pem(format!("{}{}", pem(&device), pem(&ca)).as_bytes())
        .unwrap_err();
    assert!(
        matches!(err, GpuRootsError::NotSelfSigned { index: 1, .. }),
        "{err}"
    );

    // The device root with one bit of its signature flipped.
    let mut forged = device.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let err = GpuRoots::insecure_from_pem(format!("{}{}", pem(&forged), pem(&rim)).as_bytes())
        .unwrap_err();
    assert!(
        matches!(err, GpuRootsError::NotSelfSigned { index: 0, .. }),
        "{err}"
    );
}
