//! The appraisal policy file (docs/verification.md), TOML from the operator or a client's
//! `--policy`: parse and validate, then what a client does with it before any handshake
//! (the verifier keys its cache on the policy's JSON). The JSON is a digest input only, with
//! no reader (masks are written as numbers, read as hex text), so there is no round trip to
//! check.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::ratls::{CollateralSource, RaTlsVerifier};
use tdx_core::verify::{Policy, Verifier};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Policy::from_toml(text, "fuzz") {
        let _ = p.pins_anything();
        let _ = RaTlsVerifier::new(Verifier::production(), p, CollateralSource::Stapled);
    }
});
