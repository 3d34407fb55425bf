//! Every real device chain up to the pinned NVIDIA root, and the ways a chain must fail.

use super::spdm_tests::REPORTS;
use super::*;
use crate::test_support::vector;

/// 2025-06-01T00:00:00Z, when NVIDIA's verifier accepts the 550.90.07 case.
const AT: i64 = 1_748_736_000;

fn chain(dir: &str) -> Vec<Vec<u8>> {
    chain_der(&vector(&format!("nvidia/{dir}/cert_chain.pem"))).unwrap()
}

fn root() -> Vec<u8> {
    chain_der(NVIDIA_DEVICE_ROOT_PEM).unwrap().remove(0)
}

#[test]
fn the_pinned_root_is_nvidias() {
    use sha2::{Digest as _, Sha256};
    assert_eq!(
        hex::encode(Sha256::digest(root())),
        "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
    );
}

#[test]
fn every_real_chain_reaches_the_pinned_root() {
    for (dir, _) in REPORTS {
        let subjects =
            verify_device_chain(&chain(dir), &root(), AT).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(subjects[0].contains("GSP FMC LF"), "{dir}: {subjects:?}");
        assert!(subjects[4].contains("NVIDIA Device Identity CA"), "{dir}");
    }
}

#[test]
fn a_broken_chain_fails_naming_the_certificate() {
    let good = chain("nvidia-nvtrust/hopper-550.90.07");
    let root = root();
    // Four certificates, or six.
    assert_eq!(
        verify_device_chain(&good[..4], &root, AT),
        Err(GpuChainError::Length { found: 4 })
    );
    // Another GPU's leaf in front of this GPU's intermediates: not issued by them.
    let mut mixed = good.clone();
    mixed[0] = chain("solpbc/hopper-595.71.05-96.00.88.00.11")[0].clone();
    match verify_device_chain(&mixed, &root, AT) {
        Err(GpuChainError::Issuer { index: 0, .. } | GpuChainError::Signature { index: 0, .. }) => {
        }
        other => panic!("{other:?}"),
    }
    // Out of order.
    let mut swapped = good.clone();
    swapped.swap(1, 2);
    assert!(matches!(
        verify_device_chain(&swapped, &root, AT),
        Err(GpuChainError::Issuer { index: 0, .. })
    ));
    // Another root: the identity certificate's issuer is not it.
    let other = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap())
        .unwrap();
    assert!(matches!(
        verify_device_chain(&good, other.der(), AT),
        Err(GpuChainError::Issuer { index: 3, .. })
    ));
    // Before the chain's certificates were issued.
    assert!(matches!(
        verify_device_chain(&good, &root, 0),
        Err(GpuChainError::Validity { index: 0, .. })
    ));
    // A certificate that is not DER.
    let mut junk = good.clone();
    junk[2] = vec![0x30, 0x03, 0x02, 0x01, 0x00];
    assert!(matches!(
        verify_device_chain(&junk, &root, AT),
        Err(GpuChainError::Unreadable { index: 2, .. })
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Hostile chains: a real chain with bytes changed, cut short or extended, as PEM text and
    /// as DER, never panics the chain check, the FWID reader or the whole appraisal.
    #[test]
    fn mutated_real_chains_never_panic(
        which in 0usize..5,
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..8),
        cut in proptest::prelude::any::<usize>(),
    ) {
        let mut c = chain(REPORTS[0].0);
        let cert = &mut c[which];
        for (at, byte) in &edits {
            let i = at % cert.len();
            cert[i] ^= byte | 1;
        }
        let _ = verify_device_chain(&c, &root(), AT);
        let _ = leaf_fwid(&c[0]);
        let mut pem = vector(&format!("nvidia/{}/cert_chain.pem", REPORTS[0].0));
        let i = cut % pem.len();
        pem[i] ^= edits[0].1 | 1;
        pem.truncate(cut % (pem.len() + 1));
        let _ = verify_gpu(
            GpuEvidenceRef { report: &vector(&format!("nvidia/{}/report.bin", REPORTS[0].0)), chain_pem: &pem },
            &[0; 32],
            &GpuCollateral::default(),
            &GpuPolicy::default(),
            &GpuRoots::nvidia().unwrap(),
            AT,
        );
    }
}
