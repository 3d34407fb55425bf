//! Link verdicts on NVIDIA's real chains: each link is verified once however many chains
//! share it, the pinned root's own signature is not re-verified, and a verdict is tied to the
//! issuer's key as well as the certificate.

use std::collections::HashMap;
use std::sync::Mutex;

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::cache::VerdictCache;
use super::link::{LinkMemo, signed_by};
use super::{NVIDIA_DEVICE_ROOT_PEM, NVIDIA_RIM_ROOT_PEM, Rim, chain_der};
use crate::test_support::vector;

const DIR: &str = "nvidia/nvidia-nvtrust/hopper-550.90.07";
/// 2025-06-01, inside every certificate's validity (the case's time in cases.json).
const AT: i64 = 1_748_736_000;

/// Remembers like the verifier's cache and counts the signatures actually verified.
#[derive(Default)]
struct Counting {
    seen: Mutex<HashMap<[u8; 32], bool>>,
    verified: Mutex<usize>,
}

impl LinkMemo for Counting {
    fn link(&self, key: [u8; 32], verify: &mut dyn FnMut() -> bool) -> bool {
        if let Some(v) = self.seen.lock().unwrap().get(&key) {
            return *v;
        }
        *self.verified.lock().unwrap() += 1;
        let v = verify();
        self.seen.lock().unwrap().insert(key, v);
        v
    }
}

impl Counting {
    fn verified(&self) -> usize {
        *self.verified.lock().unwrap()
    }
}

fn rim(file: &str) -> Rim {
    Rim::parse(&vector(&format!("{DIR}/{file}"))).unwrap()
}

fn root(pem: &[u8]) -> Vec<u8> {
    chain_der(pem).unwrap().remove(0)
}

#[test]
fn the_driver_and_vbios_rims_verify_their_shared_links_once() {
    let (driver, vbios) = (
        rim("NV_GPU_DRIVER_GH100_550.90.07.xml"),
        rim("NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"),
    );
    // Leaf, L3, CA, root: the two chains differ only in the leaf.
    assert_eq!(driver.signing_chain().len(), 4);
    assert_eq!(driver.signing_chain()[1..], vbios.signing_chain()[1..]);
    assert_ne!(driver.signing_chain()[0], vbios.signing_chain()[0]);
    let root = root(NVIDIA_RIM_ROOT_PEM);
    let memo = Counting::default();
    driver.verify_chain_with(&root, AT, &memo).unwrap();
    // Three links: the pinned root's self-signature is not one of them.
    assert_eq!(memo.verified(), 3);
    vbios.verify_chain_with(&root, AT, &memo).unwrap();
    // Only the VBIOS leaf's link is new.
    assert_eq!(memo.verified(), 4);
    // Without a memo the chain's verdict is the same.
    assert_eq!(
        vbios.verify_chain(&root, AT).unwrap(),
        vbios.verify_chain_with(&root, AT, &memo).unwrap()
    );
}

#[test]
fn the_device_chain_verifies_four_links() {
    let chain = chain_der(&vector(&format!("{DIR}/cert_chain.pem"))).unwrap();
    let memo = Counting::default();
    let subjects =
        super::chain::verify_device_chain_with(&chain, &root(NVIDIA_DEVICE_ROOT_PEM), AT, &memo)
            .unwrap();
    assert_eq!(subjects.len(), 5);
    assert_eq!(memo.verified(), 4);
}

#[test]
fn the_verifiers_cache_remembers_links_across_chains() {
    let cache = VerdictCache::default();
    let root = root(NVIDIA_RIM_ROOT_PEM);
    cache
        .rim_chain(&rim("NV_GPU_DRIVER_GH100_550.90.07.xml"), &root, AT)
        .unwrap();
    cache
        .rim_chain(&rim("NV_GPU_VBIOS_1010_0200_882_96009F0001.xml"), &root, AT)
        .unwrap();
    assert_eq!(cache.links_remembered(), 4);
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

#[test]
fn a_verdict_belongs_to_the_certificate_and_the_issuers_key() {
    let driver = rim("NV_GPU_DRIVER_GH100_550.90.07.xml");
    let ders = driver.signing_chain();
    let (leaf, l3, ca) = (parse(&ders[0]), parse(&ders[1]), parse(&ders[2]));
    let memo = Counting::default();
    assert!(signed_by(&ders[1], &l3, &ca, &memo));
    // The same certificate against another key is a new question, and its answer is no.
    assert!(!signed_by(&ders[1], &l3, &leaf, &memo));
    assert_eq!(memo.verified(), 2);
    // A certificate altered in its signature is a new question too.
    let mut forged = ders[1].clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged_cert = parse(&forged);
    assert!(!signed_by(&forged, &forged_cert, &ca, &memo));
    assert_eq!(memo.verified(), 3);
    // Asked again, each verdict is recalled, not recomputed.
    assert!(signed_by(&ders[1], &l3, &ca, &memo));
    assert!(!signed_by(&ders[1], &l3, &leaf, &memo));
    assert_eq!(memo.verified(), 3);
}
