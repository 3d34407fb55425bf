//! The FWID on every real report against its leaf certificate, Hopper and Blackwell.

use super::spdm_tests::{REPORTS, report};
use super::*;
use crate::test_support::vector;

fn leaf(dir: &str) -> Vec<u8> {
    chain_der(&vector(&format!("nvidia/{dir}/cert_chain.pem")))
        .unwrap()
        .remove(0)
}

#[test]
fn every_real_fwid_matches_its_leaf_and_old_drivers_have_none() {
    for (dir, has_fwid) in REPORTS {
        let r = SpdmReport::parse(&report(dir)).unwrap();
        let result = check_fwid(&r, &leaf(dir));
        if *has_fwid {
            result.unwrap_or_else(|e| panic!("{dir}: {e}"));
        } else {
            assert_eq!(result, Err(GpuFwidError::MissingInReport), "{dir}");
        }
    }
}

#[test]
fn another_gpus_fwid_is_a_mismatch_naming_both() {
    // Blackwell GB202's report against a Hopper leaf, and the reverse: both parse, the
    // FWIDs differ.
    let bw = "coco-trustee/blackwell-gb202-595.58.03";
    let hp = "nvidia-nvtrust/hopper-550.90.07";
    for (rep, cert) in [(bw, hp), (hp, bw)] {
        let r = SpdmReport::parse(&report(rep)).unwrap();
        match check_fwid(&r, &leaf(cert)) {
            Err(GpuFwidError::Mismatch {
                report,
                certificate,
            }) => {
                assert_ne!(report, certificate);
                assert_eq!(report.len(), 96);
            }
            other => panic!("{rep} against {cert}: {other:?}"),
        }
    }
    // A certificate without a TcbInfo extension (the root) is named.
    let root = chain_der(&vector(&format!("nvidia/{hp}/cert_chain.pem"))).unwrap()[4].clone();
    let r = SpdmReport::parse(&report(hp)).unwrap();
    assert!(matches!(
        check_fwid(&r, &root),
        Err(GpuFwidError::Certificate(_))
    ));
}
