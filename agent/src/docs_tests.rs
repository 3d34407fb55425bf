//! Keeps docs/ honest: the policy examples load, the check names exist, and the example
//! report has exactly the keys the code serialises.

use std::collections::BTreeSet;

use crate::test_support::{vector, vector_text};
use tdx_core::verify::{self, Collateral, Expectations, Policy, Verifier};

fn doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bodies of every fenced block whose info string is `lang`.
fn fenced(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                if let Some(info) = trimmed.strip_prefix("```")
                    && info.trim() == lang
                {
                    current = Some(String::new());
                }
            }
            Some(body) => {
                if trimmed.starts_with("```") {
                    blocks.push(std::mem::take(body));
                    current = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    blocks
}

/// Every check name the code can put in a report.
fn code_check_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = [
        verify::CHECK_STRUCTURE,
        verify::CHECK_QE_VENDOR,
        verify::CHECK_EMBEDDED_ROOT,
        verify::CHECK_WINDOW,
        verify::CHECK_CRLS,
        verify::CHECK_TCB_INFO,
        verify::CHECK_QE_IDENTITY_SIG,
        verify::CHECK_PCK_CHAIN,
        verify::CHECK_QE_REPORT_SIG,
        verify::CHECK_AK_BINDING,
        verify::CHECK_QE_IDENTITY,
        verify::CHECK_QUOTE_SIG,
        verify::CHECK_TCB_LEVEL,
        verify::CHECK_MODULE_IDENTITY,
        verify::CHECK_TD_ATTRIBUTES,
        verify::CHECK_TCB_STATUS,
        verify::CHECK_EVAL_NUMBER,
        verify::CHECK_DEBUG,
        verify::CHECK_SEPT,
        verify::CHECK_SERVICETD,
        verify::CHECK_XFAM,
        verify::CHECK_MRSEAM,
        verify::CHECK_TEE_TCB_SVN,
        verify::CHECK_REPORT_DATA,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // The pinned-register checks are named by the policy's register list.
    let m = verify::policy::MeasurementPolicy::default();
    names.extend(m.pins().iter().map(|(n, _)| n.to_string()));
    // Two names are string literals in the code, not CHECK_* consts: the advisory rule in
    // verify/mod.rs and dcap.rs's name for a dcap-qvl error it cannot classify.
    names.insert("TCB advisories".into());
    names.insert("DCAP verification".into());
    names.insert(verify::events::CHECK_EVENT_LOG.into());
    names.insert(verify::events::CHECK_AGENT_SETTINGS.into());
    names.insert(verify::events::event_check_name("<type>"));
    // What the client side adds: the fresh-challenge checks of `attest --nonce` and
    // `connect`, and the names connect gives failures that are not a quote appraisal.
    for c in [
        tdx_client::challenge::CHECK_KEY,
        tdx_client::challenge::CHECK_PROOF,
        tdx_client::challenge::CHECK_QUOTE,
        tdx_client::challenge::CHECK_SAME_TD,
        tdx_client::CHECK_CERTIFICATE,
        tdx_client::CHECK_CHALLENGE,
        tdx_client::challenge::CHECK_GPUS,
        verify::gpus::CHECK_GPU_BINDING,
        verify::gpus::CHECK_GPU_COUNT,
    ] {
        names.insert(c.into());
    }
    // Per GPU: the verifier's checks and the CC state, under the GPU's index.
    names.insert(verify::gpus::gpu_check_name(0, "<check>").replace("[0]", "[<I>]"));
    names.insert(
        verify::gpus::gpu_check_name(0, verify::gpus::CHECK_CC_STATE).replace("[0]", "[<I>]"),
    );
    names
}

/// The check names docs/formats.md lists: the first column of the table under `heading`
/// (`### Check names` for quotes, `### GPU check names` for GPUs), each written as `name`.
fn documented_names_under(heading: &str) -> Vec<String> {
    let text = doc("formats.md");
    let section = text
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/formats.md has a {heading:?} section"));
    let mut names = Vec::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let first = line.split('|').nth(1).unwrap_or("").trim();
        if let Some(name) = first.strip_prefix('`').and_then(|s| s.strip_suffix('`')) {
            names.push(name.to_string());
        }
    }
    names
}

fn documented_check_names() -> Vec<String> {
    documented_names_under("### Check names")
}

#[test]
fn every_toml_block_in_formats_md_is_a_valid_policy() {
    let blocks = fenced(&doc("formats.md"), "toml");
    assert!(!blocks.is_empty(), "docs/formats.md has no ```toml block");
    for (i, block) in blocks.iter().enumerate() {
        Policy::from_toml(block, &format!("docs/formats.md toml block {i}"))
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
    }
}

#[test]
fn documented_check_names_are_the_code_s() {
    let code = code_check_names();
    let documented = documented_check_names();
    assert!(
        documented.len() >= 20,
        "found only {documented:?} in docs/formats.md"
    );
    for name in &documented {
        assert!(
            code.contains(name),
            "docs name check {name:?}, the code has no such check"
        );
    }
    let documented: BTreeSet<String> = documented.into_iter().collect();
    for name in &code {
        assert!(
            documented.contains(name),
            "the code has check {name:?}, docs/formats.md does not list it"
        );
    }
    // docs/verification.md names checks too: each backquoted name in its check table exists.
    let guide = doc("verification.md");
    for line in guide.lines().filter(|l| l.starts_with("| `")) {
        let name = line.split('`').nth(1).unwrap_or("");
        assert!(code.contains(name), "docs/verification.md names {name:?}");
    }
}

fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                let path = format!("{prefix}.{k}");
                out.insert(path.clone());
                key_paths(child, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn example_report_has_the_keys_the_code_serialises() {
    let blocks = fenced(&doc("formats.md"), "json");
    let documented = blocks
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .find(|v| v.get("verdict").is_some() && v.get("checks").is_some())
        .expect("docs/formats.md has a ```json report example");

    let collateral = Collateral::from_bundle_json(
        &vector_text("phala-dcap-qvl/tdx_quote_collateral.json"),
        "bundle",
    )
    .and_then(Collateral::prepare)
    .unwrap();
    let report = Verifier::production().appraise(
        &vector("phala-dcap-qvl/tdx_quote"),
        &collateral,
        1_751_328_000,
        &Policy::default(),
        &Expectations::default(),
    );
    assert!(report.accepted());
    let real: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();

    let (mut want, mut have) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&real, "", &mut want);
    key_paths(&documented, "", &mut have);
    assert_eq!(
        want, have,
        "the report example in docs/formats.md and a real report differ in their keys"
    );
}

#[test]
fn documented_bundle_example_has_the_nine_fields() {
    let text = doc("formats.md");
    let fields = [
        "pck_crl_issuer_chain",
        "root_ca_crl",
        "pck_crl",
        "tcb_info_issuer_chain",
        "tcb_info",
        "tcb_info_signature",
        "qe_identity_issuer_chain",
        "qe_identity",
        "qe_identity_signature",
    ];
    let real: serde_json::Value =
        serde_json::from_str(&vector_text("phala-dcap-qvl/tdx_quote_collateral.json")).unwrap();
    for f in fields {
        assert!(
            text.contains(&format!("\"{f}\"")),
            "docs/formats.md lacks {f}"
        );
        assert!(real.get(f).is_some(), "the vector bundle lacks {f}");
    }
}

/// Sections 6, 8 and 9 of docs/formats.md: every worked value recomputed from the code.
#[test]
fn formats_worked_vectors() {
    use p256::pkcs8::EncodePrivateKey as _;
    use sha2::{Digest as _, Sha256};
    let text = doc("formats.md");
    let must = |value: &str, what: &str| {
        assert!(
            text.contains(value),
            "docs/formats.md lacks the {what} {value}"
        );
    };

    // 6. Claims and REPORTDATA for a fixed key.
    let scalar: Vec<u8> = (1u8..=32).collect();
    let sk = p256::SecretKey::from_slice(&scalar).unwrap();
    let pkcs8 = sk.to_pkcs8_der().unwrap();
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    must(&hex::encode(tdx_core::ratls::spki_der(&key)), "SPKI");
    let (claims, rd) = tdx_core::ratls::claims_for(&key);
    must(&format!("claims      {}", hex::encode(&claims)), "claims");
    must(&format!("reportdata  {}", hex::encode(rd)), "REPORTDATA");
    let (claims, rd) = tdx_core::ratls::claims_with_nonce(&key, Some(b"tdx-agent worked example"));
    must(
        &format!("claims      {}", hex::encode(&claims)),
        "claims with nonce",
    );
    must(
        &format!("reportdata  {}", hex::encode(rd)),
        "REPORTDATA with nonce",
    );

    // 8. The Merkle tree of three nonces.
    use tdx_core::challenge::merkle;
    let spki: [u8; 32] = Sha256::digest(b"spki").into();
    must(&hex::encode(spki), "SPKI hash");
    let leaves: Vec<[u8; 32]> = (0u8..3)
        .map(|i| {
            let nonce: Vec<u8> = (32 * i..32 * i + 32).collect();
            merkle::leaf_hash(&nonce, &spki).unwrap()
        })
        .collect();
    for (i, leaf) in leaves.iter().enumerate() {
        must(&format!("leaf{i}  {}", hex::encode(leaf)), "leaf");
    }
    must(
        &format!(
            "node01 {}",
            hex::encode(merkle::node_hash(&leaves[0], &leaves[1]))
        ),
        "node",
    );
    let root = merkle::root(&leaves);
    must(&format!("root   {}", hex::encode(root)), "root");
    let p2 = merkle::proof(&leaves, 2).unwrap();
    assert!(merkle::verify_inclusion(&leaves[2], &p2, &root));

    // 9. Audit lines written by the real writer with a fixed clock.
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(tdx_daemon::audit::ManualClock::new(
        time::macros::datetime!(
            2025-06-01 12:00:00 UTC
        ),
    ));
    let mut w = tdx_daemon::audit::AuditWriter::open(
        dir.path(),
        tdx_daemon::audit::AuditOptions {
            clock: clock.clone(),
            default_rate: None,
            ..tdx_daemon::audit::AuditOptions::default()
        },
    )
    .unwrap();
    w.append(tdx_daemon::audit::AuditEvent::policy_loaded(&[0x11; 32]))
        .unwrap();
    clock.advance(std::time::Duration::from_millis(1500));
    w.append(tdx_daemon::audit::AuditEvent::agent_started("0.1.0"))
        .unwrap();
    let written = std::fs::read_to_string(dir.path().join("audit-00000001.log")).unwrap();
    for line in written.lines() {
        must(line, "audit line");
    }
    must(&hex::encode(w.head()), "chain head");
}

/// Sections 7 and 8: the documented JSON shapes have exactly the keys the server sends.
#[test]
fn evidence_and_challenge_examples_match_the_server_types() {
    use tdx_core::wire::{ChallengeResponseJson, EvidenceJson};
    let text = doc("formats.md");
    let blocks: Vec<serde_json::Value> = fenced(&text, "json")
        .iter()
        .filter_map(|b| serde_json::from_str(b).ok())
        .collect();
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let evidence = serde_json::to_value(EvidenceJson {
        version: 1,
        tee: String::new(),
        certificate: String::new(),
        quote: String::new(),
        spki_sha256: String::new(),
        not_before: String::new(),
        not_after: String::new(),
        collateral: serde_json::Value::Null,
        event_log: String::new(),
        tcb_status: None,
        gpu_evidence: None,
        gpu_collateral: None,
    })
    .unwrap();
    assert!(
        blocks.iter().any(|b| keys(b) == keys(&evidence)),
        "no evidence JSON example with keys {:?}",
        keys(&evidence)
    );
    let challenge = serde_json::to_value(ChallengeResponseJson {
        quote: String::new(),
        report_data: String::new(),
        audit_head: String::new(),
        root: String::new(),
        leaf_hash: String::new(),
        proof: tdx_core::challenge::merkle::ProofJson {
            leaf_index: 0,
            tree_size: 1,
            audit_path: Vec::new(),
        },
        spki_sha256: String::new(),
        gpu_evidence: None,
    })
    .unwrap();
    assert!(
        blocks.iter().any(|b| keys(b) == keys(&challenge)),
        "no challenge response example with keys {:?}",
        keys(&challenge)
    );
}

/// docs/configuration.md: the "every key" example is a valid configuration whose values are
/// the code's defaults (apart from the PCCS URL, which has none).
#[test]
fn configuration_doc_lists_the_defaults() {
    let text = doc("configuration.md");
    let blocks = fenced(&text, "toml");
    let example = blocks
        .first()
        .expect("a toml block in docs/configuration.md");
    let parsed = tdx_daemon::config::Config::from_toml(example, "docs/configuration.md").unwrap();
    let mut expected = tdx_daemon::config::Config::default();
    expected.collateral.pccs_url = parsed.collateral.pccs_url.clone();
    assert!(parsed.collateral.pccs_url.is_some());
    assert_eq!(parsed, expected);
}

/// Section 10: the worked model tree is built from the doc's own `printf` lines, measured, and
/// its manifest and digest must be the doc's; the doc's coreutils one-liners must agree.
#[test]
fn model_manifest_worked_vector() {
    let text = doc("formats.md");
    let section = text
        .split("## 10. Model manifest")
        .nth(1)
        .expect("docs/formats.md has section 10, Model manifest");
    let sh = fenced(section, "sh").join("");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("m");
    let mut written = 0;
    for line in sh.lines() {
        let Some(rest) = line.strip_prefix("printf '") else {
            continue;
        };
        let (content, target) = rest.split_once("' > ").expect("printf 'X' > FILE");
        assert!(
            !content.contains(['%', '\\']),
            "keep printf contents literal: {content}"
        );
        let path = root.join(target.trim());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        written += 1;
    }
    assert_eq!(written, 3, "the worked example writes three files");

    let m = tdx_core::measure::model::manifest(&root).unwrap();
    let manifest = m.text();
    let digest = hex::encode(m.digest());
    assert!(
        fenced(section, "text").contains(&manifest),
        "docs/formats.md §10 lacks the manifest\n{manifest}"
    );
    assert!(
        section.contains(&format!("manifest digest `{digest}`")),
        "docs/formats.md §10 lacks the digest {digest}"
    );

    let one_liners: Vec<&str> = sh
        .lines()
        .filter(|l| l.starts_with("(cd DIR &&"))
        .map(|l| l.split(" #").next().unwrap_or(l).trim_end())
        .collect();
    assert_eq!(one_liners.len(), 2, "the manifest and digest one-liners");
    for (cmd, want) in one_liners.iter().zip([manifest, format!("{digest}  -\n")]) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.replace("cd DIR", "cd \"$1\""))
            .arg("sh")
            .arg(&root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}");
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{cmd}");
    }
}

/// Section 11: each worked event's JCS bytes are as printed, its SHA-384 is the digest shown,
/// and folding the digests gives each RTMR3 shown.
#[test]
fn rtmr3_events_worked_vector() {
    use tdx_core::measure::rtmr3_log::{Event, replay};
    let text = doc("formats.md");
    let section = text
        .split("## 11. RTMR3 runtime events")
        .nth(1)
        .expect("docs/formats.md has section 11");
    let block = fenced(section, "text").join("");
    let mut digests: Vec<[u8; 48]> = Vec::new();
    let mut checked = 0;
    for line in block.lines() {
        let (tag, value) = line.split_once(' ').expect("TAG VALUE");
        let value = value.trim();
        match tag {
            "event" => {
                let event: Event = serde_json::from_str(value).unwrap();
                let v = serde_json::to_value(&event).unwrap();
                assert_eq!(tdx_core::measure::jcs::canonicalize(&v).unwrap(), value);
                digests.push(event.digest().unwrap());
            }
            "digest" => assert_eq!(hex::encode(digests.last().unwrap()), value),
            "rtmr3" => {
                assert_eq!(hex::encode(replay(digests.iter())), value);
                checked += 1;
            }
            other => panic!("unexpected line {other}"),
        }
    }
    assert_eq!(checked, 3);
}

/// Every check a GPU report can carry, from the code.
fn code_gpu_check_names() -> BTreeSet<String> {
    use tdx_core::gpu::{RimKind, check};
    let mut names: BTreeSet<String> = [
        check::STRUCTURE,
        check::DEVICE_CHAIN,
        check::ARCHITECTURE,
        check::FWID,
        check::NONCE,
        check::SIGNATURE,
        check::DRIVER_VERSION,
        check::VBIOS_VERSION,
        check::DEVICE_REVOCATION,
        check::MEASUREMENTS,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for kind in [RimKind::Driver, RimKind::Vbios] {
        for what in ["", "version", "signing chain", "signature", "revocation"] {
            names.insert(kind.check_name(what));
        }
    }
    names
}

#[test]
fn documented_gpu_check_names_are_the_code_s() {
    let documented: BTreeSet<String> = documented_names_under("### GPU check names")
        .into_iter()
        .collect();
    assert_eq!(documented, code_gpu_check_names());
}

#[test]
fn documented_gpu_bundle_example_has_the_code_s_keys() {
    let text = doc("formats.md");
    let section = text.split("## 12. GPU collateral bundle").nth(1).unwrap();
    let example = fenced(section, "json").remove(0);
    let v: serde_json::Value = serde_json::from_str(&example).unwrap();
    assert_eq!(v["format"], tdx_core::gpu::GPU_COLLATERAL_FORMAT);
    // The real serialisation has exactly the documented keys.
    let real: serde_json::Value =
        serde_json::from_str(&tdx_core::gpu::GpuCollateral::default().to_bundle_json()).unwrap();
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(keys(&v), keys(&real));
    assert_eq!(
        keys(&v["rims"][0]),
        BTreeSet::from(["id".to_string(), "xml".to_string()])
    );
}
