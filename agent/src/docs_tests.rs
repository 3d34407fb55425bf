//! Keeps docs/ honest: the policy examples load, the check names exist, and the example
//! report has exactly the keys the code serialises.

use std::collections::BTreeSet;

use crate::test_support::{vector, vector_text};
use crate::verify::{self, Collateral, Expectations, Policy, Verifier};

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
    names
}

/// The check names docs/formats.md lists: the first column of the table under
/// "### Check names", each written as `name`.
fn documented_check_names() -> Vec<String> {
    let text = doc("formats.md");
    let section = text
        .split("### Check names")
        .nth(1)
        .expect("docs/formats.md has a \"### Check names\" section");
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
