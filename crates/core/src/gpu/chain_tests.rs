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
    // Another root (a simulated NVIDIA device root): the identity certificate's issuer is
    // not it.
    let other = root_of(&sim_pki(None).chain_der());
    assert!(matches!(
        verify_device_chain(&good, &other, AT),
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

/// A simulated Hopper PKI; the simulator links the library build of this crate, so its
/// `Architecture` is another type here and crosses over by name.
fn sim_pki(non_ca: Option<(usize, bool)>) -> tdx_sim::gpu::SimGpuPki {
    use tdx_sim::gpu::{SIM_RIM_NOT_AFTER, SimGpuPki};
    let hopper = serde_json::from_value(serde_json::json!("hopper")).unwrap();
    match non_ca {
        None => SimGpuPki::generate(hopper, SIM_RIM_NOT_AFTER),
        Some((index, omit)) => {
            SimGpuPki::generate_with_non_ca_issuer(hopper, SIM_RIM_NOT_AFTER, index, omit)
        }
    }
    .unwrap()
}

#[test]
fn an_issuer_that_is_not_a_ca_breaks_the_chain() {
    let good = sim_pki(None).chain_der();
    assert!(verify_device_chain(&good, &root_of(&good), AT).is_ok());
    for (index, cn) in [(1, "GSP BROM"), (2, "Provisioner ICA"), (3, "Identity")] {
        // CA:FALSE, and no basicConstraints at all: either way an end-entity certificate.
        for omit in [false, true] {
            let chain = sim_pki(Some((index, omit))).chain_der();
            match verify_device_chain(&chain, &root_of(&chain), AT) {
                Err(GpuChainError::NotCa { index: i, subject }) => {
                    assert_eq!(i, index);
                    assert!(subject.contains(cn), "{subject}");
                }
                other => panic!("certificate {index} (omit {omit}): {other:?}"),
            }
        }
    }
}

fn root_of(chain: &[Vec<u8>]) -> Vec<u8> {
    chain[DEVICE_CHAIN_LEN - 1].clone()
}

#[test]
fn a_non_ca_issuer_fails_the_device_chain_check_naming_it() {
    let pki = sim_pki(Some((2, false)));
    let hopper = serde_json::from_value(serde_json::json!("hopper")).unwrap();
    let gpu = tdx_sim::gpu::SimGpu::typical(hopper, "0");
    let nonce = [7; 32];
    let report = pki.report(&gpu, &nonce).unwrap();
    let roots = GpuRoots::insecure_from_pem(pki.roots_pem().as_bytes()).unwrap();
    let policy = GpuPolicy {
        insecure_skip_rims: true,
        insecure_skip_ocsp: true,
        ..GpuPolicy::default()
    };
    let r = verify_gpu(
        GpuEvidenceRef {
            report: &report,
            chain_pem: pki.chain_pem().as_bytes(),
        },
        &nonce,
        &GpuCollateral::default(),
        &policy,
        &roots,
        AT,
    );
    let c = r.check_named(check::DEVICE_CHAIN).unwrap();
    assert!(!c.ok, "{}", r.render_text());
    assert!(
        c.found.contains("certificate 2") && c.found.contains("Provisioner ICA"),
        "{}",
        c.found
    );
    assert!(c.found.contains("not a CA"), "{}", c.found);
    assert!(!r.accepted());
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
