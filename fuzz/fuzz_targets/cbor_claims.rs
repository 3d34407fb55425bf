//! The CBOR inside an RA-TLS certificate: the generic decoder (with its encoder as the
//! round-trip oracle), the evidence envelope, the claims map and the endorsements.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::ratls::{Claims, Evidence, cbor, endorsements};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = cbor::decode(data) {
        // Decoding what we encoded must give the value back: the encoder is what the agent
        // puts in its certificates, the decoder what every client reads them with.
        let again = cbor::decode(&cbor::encode(&v));
        assert_eq!(again.ok(), Some(v), "decode(encode(v)) != v");
    }
    if let Ok(e) = Evidence::from_cbor(data) {
        assert_eq!(Evidence::from_cbor(&e.to_cbor()).ok(), Some(e));
    }
    if let Ok(c) = Claims::from_cbor(data) {
        let _ = Claims::from_cbor(&c.to_cbor());
    }
    if let Ok(e) = endorsements::decode(data) {
        let _ = e.collateral.prepare();
    }
});
