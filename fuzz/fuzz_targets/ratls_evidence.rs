//! The RA-TLS evidence extension behind a valid self-signature: the fuzzed extension is put
//! in a certificate signed with the fixture key, so the verifier goes past the signature check
//! that stops almost every mutated DER in `ratls_cert`, through the claims' key binding, the
//! quote (simulated TD) against its stapled collateral, and the policy.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tdx_core::ratls::cert::danger_issue_unchecked;
use tdx_core::ratls::{CollateralSource, Evidence, RaTlsVerifier, Validity};
use tdx_core::verify::{Policy, Verifier};

fn key() -> &'static rcgen::KeyPair {
    static K: OnceLock<rcgen::KeyPair> = OnceLock::new();
    K.get_or_init(|| {
        // The fixture is written by examples/gen_seeds.rs; a harness without it is broken.
        #[allow(clippy::expect_used)]
        rcgen::KeyPair::try_from(&tdx_agent_fuzz::fixture!("ratls_key.pk8")[..])
            .expect("fuzz/fixtures/ratls_key.pk8")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(evidence) = Evidence::from_cbor(data) else {
        return;
    };
    let sim = tdx_agent_fuzz::sim();
    let Ok(cert) = danger_issue_unchecked(
        key(),
        &evidence,
        Some(&sim.collateral),
        Validity::starting_at(sim.now - 60, 3600),
        &[],
    ) else {
        return;
    };
    let Ok(verifier) = RaTlsVerifier::new(
        Verifier::with_insecure_root(sim.root_der.clone()),
        Policy::default(),
        CollateralSource::Stapled,
    ) else {
        return;
    };
    let _ = verifier.verify_certificate(&cert.cert_der, sim.now);
});
