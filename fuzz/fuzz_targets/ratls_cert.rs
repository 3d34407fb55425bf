//! The RA-TLS certificate as a client receives it in the handshake: the verifier's whole
//! path on the end-entity DER (X.509, self-signature, evidence and endorsements extensions,
//! claims, the quote against the stapled collateral, policy), and the claim readers the
//! clients use on the same bytes.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::ratls::{self, CollateralSource, RaTlsVerifier};
use tdx_core::verify::{Policy, Verifier};

fuzz_target!(|data: &[u8]| {
    let sim = tdx_agent_fuzz::sim();
    let Ok(verifier) = RaTlsVerifier::new(
        Verifier::with_insecure_root(sim.root_der.clone()),
        Policy::default(),
        CollateralSource::Stapled,
    ) else {
        return;
    };
    let _ = verifier.verify_certificate(data, sim.now);
    let _ = ratls::certificate_claims(data);
    let _ = ratls::certificate_spki_sha256(data);
});
