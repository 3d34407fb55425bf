//! `tdx-agent verify` as a user runs it: every vector row's outcome, exit codes, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use support::{Run, tdx_agent, vector_path};

const PHALA_AT: &str = "1751328000";
const OUTDATED_AT: &str = "1772000000";
const GOOGLE_AT: &str = "1688173200";

fn verify(quote: &str, collateral: &str, at: &str, extra: &[&str]) -> Run {
    let q = vector_path(quote);
    let c = vector_path(collateral);
    let mut args = vec!["verify", q.as_str(), "--collateral", c.as_str(), "--at", at];
    args.extend_from_slice(extra);
    tdx_agent(&args)
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn failed_checks(v: &serde_json::Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn phala_v4_is_accepted_with_a_full_json_report() {
    let r = verify(
        "phala-dcap-qvl/tdx_quote",
        "phala-dcap-qvl/tdx_quote_collateral.json",
        PHALA_AT,
        &["--json"],
    );
    assert_eq!(r.code, 0, "{r}");
    let v = json(&r);
    assert_eq!(v["verdict"], "accepted");
    assert_eq!(v["tcb_status"], "UpToDate");
    assert_eq!(v["advisory_ids"], serde_json::json!([]));
    for key in [
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "report_data",
        "td_attributes",
        "xfam",
        "mrservicetd",
    ] {
        let s = v["measurements"][key].as_str().unwrap();
        assert!(
            s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{key}={s}"
        );
    }
    let check = &v["checks"][0];
    for key in ["name", "ok", "expected", "found"] {
        assert!(!check[key].is_null(), "check lacks {key}");
    }
}

#[test]
fn rfc3339_time_is_accepted_and_expiry_is_half_open() {
    let ok = verify(
        "phala-dcap-qvl/tdx_quote",
        "phala-dcap-qvl/tdx_quote_collateral.json",
        "2025-07-19T10:00:34Z",
        &[],
    );
    assert_eq!(ok.code, 0, "{ok}");
    let expired = verify(
        "phala-dcap-qvl/tdx_quote",
        "phala-dcap-qvl/tdx_quote_collateral.json",
        "1752919235",
        &[],
    );
    assert_eq!(expired.code, 1, "{expired}");
    assert!(expired.stderr.contains("collateral window"), "{expired}");
    let later = verify(
        "phala-dcap-qvl/tdx_quote",
        "phala-dcap-qvl/tdx_quote_collateral.json",
        "1785888000",
        &[],
    );
    assert_eq!(later.code, 1);
}

#[test]
fn each_vector_row_gives_its_outcome() {
    let rows: &[(&str, &str, &str, i32, &str)] = &[
        (
            "phala-dcap-qvl/tdx_quote_outdated",
            "phala-dcap-qvl/tdx_quote_outdated_collateral.json",
            OUTDATED_AT,
            1,
            "TCB level",
        ),
        (
            "phala-dcap-qvl/tdx-quote.hex",
            "phala-dcap-qvl/tdx_quote_collateral.json",
            PHALA_AT,
            1,
            "TCB level",
        ),
        (
            "phala-dcap-qvl/quote-from-tappd.hex",
            "phala-dcap-qvl/tdx_quote_collateral.json",
            PHALA_AT,
            1,
            "TCB level",
        ),
        (
            "phala-dcap-qvl/sgx_quote",
            "phala-dcap-qvl/sgx_quote_collateral.json",
            PHALA_AT,
            1,
            "quote structure",
        ),
        (
            "google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
            "google-go-tdx-guest/tdx_prod_quote_SPR_E4_collateral.json",
            GOOGLE_AT,
            1,
            "TCB level",
        ),
        (
            "google-go-tdx-guest/quote_v5_sample.dat",
            "phala-dcap-qvl/tdx_quote_outdated_collateral.json",
            OUTDATED_AT,
            0,
            "",
        ),
        (
            "coco-trustee/tdx_quote_4.dat",
            "google-go-tdx-guest/tdx_prod_quote_SPR_E4_collateral.json",
            GOOGLE_AT,
            1,
            "TD attribute DEBUG",
        ),
        (
            "coco-trustee/tdx_quote_5.dat",
            "phala-dcap-qvl/tdx_quote_outdated_collateral.json",
            OUTDATED_AT,
            1,
            "TCB level",
        ),
    ];
    for (quote, coll, at, code, failing) in rows {
        let r = verify(quote, coll, at, &["--json"]);
        assert_eq!(r.code, *code, "{quote}: {r}");
        let failed = failed_checks(&json(&r));
        if *code == 0 {
            assert!(failed.is_empty(), "{quote}: {failed:?}");
        } else {
            // The one failing check, named on stderr in one line.
            assert_eq!(failed, vec![failing.to_string()], "{quote}");
            assert!(r.stderr.contains(failing), "{quote}: {r}");
        }
    }
}

#[test]
fn sgx_quote_message_says_not_tdx() {
    let r = verify(
        "phala-dcap-qvl/sgx_quote",
        "phala-dcap-qvl/sgx_quote_collateral.json",
        PHALA_AT,
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a TDX quote"), "{r}");
}

#[test]
fn intel_synthetic_sample_is_refused() {
    let r = verify(
        "intel-qvl-sample-tdx/quote.dat",
        "phala-dcap-qvl/tdx_quote_collateral.json",
        PHALA_AT,
        &[],
    );
    assert_eq!(r.code, 1, "{r}");
}

#[test]
fn bad_input_gives_exit_1_or_2_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let coll = vector_path("phala-dcap-qvl/tdx_quote_collateral.json");
    let quote = std::fs::read(vector_path("phala-dcap-qvl/tdx_quote")).unwrap();

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for n in (0..quote.len()).step_by(211) {
        cases.push((format!("trunc{n}"), quote[..n].to_vec()));
    }
    let mut junk = vec![0u8; 1 << 20];
    let mut x: u32 = 0x1234_5678;
    for b in junk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    cases.push(("junk-1MiB".into(), junk.clone()));
    cases.push(("random-small".into(), junk[..700].to_vec()));
    cases.push(("empty".into(), Vec::new()));
    for (name, bytes) in cases {
        let p = dir.path().join(&name);
        std::fs::write(&p, bytes).unwrap();
        let r = tdx_agent(&[
            "verify",
            p.to_str().unwrap(),
            "--collateral",
            &coll,
            "--at",
            PHALA_AT,
        ]);
        assert_eq!(r.code, 1, "{name}: {r}");
        assert!(!r.stderr.contains("panicked"), "{name}: {r}");
        assert_eq!(
            r.stderr.lines().filter(|l| l.contains("rejected")).count(),
            1,
            "{name}: {r}"
        );
    }

    // Collateral with a field missing or malformed: a bundle that is not valid collateral is
    // malformed evidence, so exit 1 with no report and a one-line reason naming the field
    // (docs/formats.md "Exit status", docs/verification.md section 2); 2 would claim nothing
    // was decided.
    let full: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&coll).unwrap()).unwrap();
    let q = vector_path("phala-dcap-qvl/tdx_quote");
    for (i, key) in [
        "tcb_info",
        "pck_crl",
        "root_ca_crl",
        "qe_identity",
        "qe_identity_signature",
        "tcb_info_issuer_chain",
    ]
    .into_iter()
    .enumerate()
    {
        for (j, bad) in [None, Some("not-hex-or-json")].into_iter().enumerate() {
            let mut v = full.clone();
            match bad {
                None => {
                    v.as_object_mut().unwrap().remove(key);
                }
                Some(text) => v[key] = serde_json::Value::String(text.into()),
            }
            // Neutral file names, so the message must name the field itself.
            let p = dir.path().join(format!("coll-{i}-{j}.json"));
            std::fs::write(&p, v.to_string()).unwrap();
            let r = tdx_agent(&[
                "verify",
                &q,
                "--collateral",
                p.to_str().unwrap(),
                "--at",
                PHALA_AT,
            ]);
            assert_eq!(r.code, 1, "{key}: {r}");
            assert!(r.stdout.is_empty(), "{key}: {r}");
            assert_eq!(r.stderr.lines().count(), 1, "{key}: {r}");
            assert!(r.stderr.contains(key), "{key}: {r}");
            assert!(!r.stderr.contains("panicked"), "{r}");
        }
    }

    // A policy with an unknown key is a usage error naming the key.
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "[td]\nallow_debug = true\n").unwrap();
    let r = tdx_agent(&[
        "verify",
        &q,
        "--collateral",
        &coll,
        "--at",
        PHALA_AT,
        "--policy",
        policy.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("allow_debug"), "{r}");

    // Missing files and bad flags are exit 2.
    let r = tdx_agent(&["verify", "/nonexistent/quote", "--collateral", &coll]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("/nonexistent/quote"), "{r}");
    let r = tdx_agent(&["verify", &q, "--collateral", &coll, "--at", "tomorrow"]);
    assert_eq!(r.code, 2, "{r}");
    let r = tdx_agent(&["verify", &q]);
    assert_eq!(r.code, 2, "{r}");
}

#[test]
fn policy_pins_name_the_register() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        format!("[measurements]\nmrtd = [\"{}\"]\n", "11".repeat(48)),
    )
    .unwrap();
    let r = verify(
        "phala-dcap-qvl/tdx_quote",
        "phala-dcap-qvl/tdx_quote_collateral.json",
        PHALA_AT,
        &["--policy", policy.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("MRTD check failed"), "{r}");
}
