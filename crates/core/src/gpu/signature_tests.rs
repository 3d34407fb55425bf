//! The report signature against every real report and its own chain's leaf key, and the
//! tampering a signature must catch.

use super::spdm_tests::{REPORTS, report};
use super::*;
use crate::test_support::vector;

fn leaf(dir: &str) -> Vec<u8> {
    let chain = chain_der(&vector(&format!("nvidia/{dir}/cert_chain.pem"))).unwrap();
    assert_eq!(chain.len(), 5, "{dir}: NVIDIA's chains have 5 certificates");
    chain[0].clone()
}

#[test]
fn every_real_report_is_signed_by_its_leaf() {
    for (dir, _) in REPORTS {
        let raw = report(dir);
        let r = SpdmReport::parse(&raw).unwrap();
        verify_report_signature(&raw, &r, &leaf(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
    }
    // trustee's report, without its trailing byte, is genuine too.
    let dir = "coco-trustee/hopper-580.95.05";
    let raw = vector(&format!("nvidia/{dir}/report-trimmed.bin"));
    let r = SpdmReport::parse(&raw).unwrap();
    verify_report_signature(&raw, &r, &leaf(dir)).unwrap();
}

/// On real evidence the signature covers everything: any byte changed before it (that still
/// parses) fails the signature, as does a changed signature or another GPU's key.
#[test]
fn a_flipped_byte_another_key_or_a_changed_signature_fail() {
    let dir = "nvidia-nvtrust/hopper-550.90.07";
    let raw = report(dir);
    let good = SpdmReport::parse(&raw).unwrap();
    let key = leaf(dir);
    let mut tried = 0;
    for at in (0..good.signed_len()).step_by(37) {
        let mut m = raw.clone();
        m[at] ^= 0x01;
        let Ok(r) = SpdmReport::parse(&m) else {
            continue;
        };
        tried += 1;
        assert_eq!(
            verify_report_signature(&m, &r, &key),
            Err(GpuSignatureError::Mismatch),
            "byte {at}"
        );
    }
    assert!(tried > 50, "only {tried} mutations parsed");
    let mut m = raw.clone();
    let last = m.len() - 1;
    m[last] ^= 0x01;
    let r = SpdmReport::parse(&m).unwrap();
    assert!(verify_report_signature(&m, &r, &key).is_err());
    let other = leaf("solpbc/hopper-595.71.05-96.00.88.00.11");
    assert_eq!(
        verify_report_signature(&raw, &good, &other),
        Err(GpuSignatureError::Mismatch)
    );
    // Not a certificate, or not a P-384 key: named, not a panic.
    assert!(matches!(
        verify_report_signature(&raw, &good, b"\x30\x03\x02\x01\x00"),
        Err(GpuSignatureError::Chain(_))
    ));
    assert!(matches!(
        chain_der(b"no pem here"),
        Err(GpuSignatureError::Chain(_))
    ));
}
