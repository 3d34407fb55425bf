//! The shared real-hardware vectors, each with the outcome tests/vectors/README.md states.

use super::*;
use crate::test_support::{vector, vector_text};

fn collateral(path: &str) -> PreparedCollateral {
    Collateral::from_bundle_json(&vector_text(path), path)
        .unwrap()
        .prepare()
        .unwrap()
}

fn appraise(quote: &[u8], coll: &str, at: i64) -> Report {
    Verifier::production().appraise(
        quote,
        &collateral(coll),
        at,
        &Policy::default(),
        &Expectations::default(),
    )
}

const PHALA_COLL: &str = "phala-dcap-qvl/tdx_quote_collateral.json";
const PHALA_AT: i64 = 1_751_328_000;
const OUTDATED_COLL: &str = "phala-dcap-qvl/tdx_quote_outdated_collateral.json";
const OUTDATED_AT: i64 = 1_772_000_000;
const GOOGLE_COLL: &str = "google-go-tdx-guest/tdx_prod_quote_SPR_E4_collateral.json";
const GOOGLE_AT: i64 = 1_688_173_200;

fn only_failure(r: &Report) -> &Check {
    let failures: Vec<&Check> = r.failures().collect();
    assert_eq!(failures.len(), 1, "{}", r.render_text());
    failures[0]
}

#[test]
fn intel_root_is_pinned() {
    assert_eq!(
        hex(&Sha256::digest(INTEL_ROOT_CA_DER)),
        INTEL_ROOT_CA_SHA256
    );
}

#[test]
fn phala_v4_quote_is_up_to_date() {
    let r = appraise(&vector("phala-dcap-qvl/tdx_quote"), PHALA_COLL, PHALA_AT);
    assert!(r.accepted(), "{}", r.render_text());
    assert_eq!(r.tcb_status.as_deref(), Some("UpToDate"));
    assert!(r.advisory_ids.is_empty());
    for name in dcap::STEPS {
        assert!(r.check(name).is_some_and(|c| c.ok), "{name} missing");
    }
    assert!(r.not_evaluated.is_empty());
}

#[test]
fn collateral_window_is_half_open() {
    let q = vector("phala-dcap-qvl/tdx_quote");
    assert!(appraise(&q, PHALA_COLL, 1_752_919_234).accepted());
    let r = appraise(&q, PHALA_COLL, 1_752_919_235);
    assert_eq!(only_failure(&r).name, CHECK_WINDOW);
    assert!(only_failure(&r).found.contains("expired"));
    let r = appraise(&q, PHALA_COLL, PHALA_AT + 400 * 86_400);
    assert_eq!(only_failure(&r).name, CHECK_WINDOW);
    // Before any item was issued.
    let r = appraise(&q, PHALA_COLL, 1_700_000_000);
    assert!(only_failure(&r).found.contains("not yet valid"));
}

#[test]
fn flipped_report_data_breaks_the_quote_signature() {
    let mut q = vector("phala-dcap-qvl/tdx_quote");
    q[48 + crate::quote::layout::OFF_REPORT_DATA + 5] ^= 1;
    let r = appraise(&q, PHALA_COLL, PHALA_AT);
    assert_eq!(only_failure(&r).name, CHECK_QUOTE_SIG);
}

#[test]
fn outdated_v5_has_no_matching_tcb_level() {
    let r = appraise(
        &vector("phala-dcap-qvl/tdx_quote_outdated"),
        OUTDATED_COLL,
        OUTDATED_AT,
    );
    let f = only_failure(&r);
    assert_eq!(f.name, CHECK_TCB_LEVEL);
    assert!(f.found.contains("No matching TCB level"), "{}", f.found);
}

#[test]
fn hex_quotes_have_no_matching_tcb_level() {
    for path in [
        "phala-dcap-qvl/tdx-quote.hex",
        "phala-dcap-qvl/quote-from-tappd.hex",
    ] {
        let q = crate::encoding::from_hex_loose(&vector_text(path)).unwrap();
        let r = appraise(&q, PHALA_COLL, PHALA_AT);
        assert_eq!(only_failure(&r).name, CHECK_TCB_LEVEL, "{path}");
        assert!(r.check(CHECK_QUOTE_SIG).is_some_and(|c| c.ok));
        assert!(r.check(CHECK_PCK_CHAIN).is_some_and(|c| c.ok));
    }
}

#[test]
fn sgx_quote_is_refused_as_not_tdx() {
    let r = appraise(
        &vector("phala-dcap-qvl/sgx_quote"),
        "phala-dcap-qvl/sgx_quote_collateral.json",
        PHALA_AT,
    );
    let f = only_failure(&r);
    assert_eq!(f.name, CHECK_STRUCTURE);
    assert!(f.found.contains("not a TDX quote"), "{}", f.found);
}

#[test]
fn google_quote_with_trailing_bytes_has_no_matching_tcb_level() {
    let q = vector("google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    let r = appraise(&q, GOOGLE_COLL, GOOGLE_AT);
    assert_eq!(only_failure(&r).name, CHECK_TCB_LEVEL);
    assert!(r.check(CHECK_QUOTE_SIG).is_some_and(|c| c.ok));
    // SEPT_VE_DISABLE (bit 28) is clear in this TD's attributes.
    let attrs = u64::from_str_radix(&r.measurements.unwrap().td_attributes, 16).unwrap();
    assert_eq!(attrs & (1 << 28), 0);
}

#[test]
fn google_v5_sample_is_accepted() {
    let r = appraise(
        &vector("google-go-tdx-guest/quote_v5_sample.dat"),
        OUTDATED_COLL,
        OUTDATED_AT,
    );
    assert!(r.accepted(), "{}", r.render_text());
    assert_eq!(r.tcb_status.as_deref(), Some("UpToDate"));
    assert_eq!(r.quote_version, Some(5));
}

#[test]
fn debug_quote_is_refused_by_the_debug_check_alone() {
    let r = appraise(
        &vector("coco-trustee/tdx_quote_4.dat"),
        GOOGLE_COLL,
        GOOGLE_AT,
    );
    let f = only_failure(&r);
    assert_eq!(f.name, CHECK_DEBUG);
    assert!(r.render_text().contains("TD attribute DEBUG"));
    assert_eq!(r.tcb_status.as_deref(), Some("UpToDate"));

    let mut lax = Policy::default();
    lax.td.insecure_allow_debug = true;
    let r = Verifier::production().appraise(
        &vector("coco-trustee/tdx_quote_4.dat"),
        &collateral(GOOGLE_COLL),
        GOOGLE_AT,
        &lax,
        &Expectations::default(),
    );
    assert!(r.accepted(), "{}", r.render_text());
}

#[test]
fn coco_v5_service_td_quote_has_no_matching_tcb_level() {
    let r = appraise(
        &vector("coco-trustee/tdx_quote_5.dat"),
        OUTDATED_COLL,
        OUTDATED_AT,
    );
    assert_eq!(only_failure(&r).name, CHECK_TCB_LEVEL);
}

#[test]
fn intel_synthetic_sample_is_refused_against_the_production_root() {
    let r = appraise(
        &vector("intel-qvl-sample-tdx/quote.dat"),
        PHALA_COLL,
        PHALA_AT,
    );
    assert!(!r.accepted());
    assert!(
        r.check(CHECK_EMBEDDED_ROOT).is_some_and(|c| !c.ok)
            || r.check(CHECK_STRUCTURE).is_some_and(|c| !c.ok),
        "{}",
        r.render_text()
    );
}

#[test]
fn pinned_registers_name_the_mismatch() {
    let q = vector("phala-dcap-qvl/tdx_quote");
    let mut p = Policy::default();
    p.measurements.rtmr2 = vec![policy::HexBytes([7; 48])];
    let r = Verifier::production().appraise(
        &q,
        &collateral(PHALA_COLL),
        PHALA_AT,
        &p,
        &Expectations::default(),
    );
    assert_eq!(only_failure(&r).name, "RTMR2");

    let parsed = crate::quote::Quote::parse(&q).unwrap();
    p.measurements.rtmr2 = vec![policy::HexBytes(parsed.body.rtmr[2])];
    p.measurements.mrtd = vec![policy::HexBytes(parsed.body.mrtd)];
    let r = Verifier::production().appraise(
        &q,
        &collateral(PHALA_COLL),
        PHALA_AT,
        &p,
        &Expectations::default(),
    );
    assert!(r.accepted(), "{}", r.render_text());
    // Only that the image is half pinned.
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("(RTMR0, RTMR1 unpinned)"),
        "{:?}",
        r.warnings
    );

    let r = Verifier::production().appraise(
        &q,
        &collateral(PHALA_COLL),
        PHALA_AT,
        &p,
        &Expectations {
            report_data: Some([0; 64]),
        },
    );
    assert_eq!(only_failure(&r).name, CHECK_REPORT_DATA);
}

#[test]
fn wrong_root_is_refused() {
    let mut other = INTEL_ROOT_CA_DER.to_vec();
    let n = other.len();
    other[n - 10] ^= 1;
    let r = Verifier::with_insecure_root(other).appraise(
        &vector("phala-dcap-qvl/tdx_quote"),
        &collateral(PHALA_COLL),
        PHALA_AT,
        &Policy::default(),
        &Expectations::default(),
    );
    assert!(!r.accepted());
    assert_eq!(r.failures().next().unwrap().name, CHECK_EMBEDDED_ROOT);
}
