//! The DCAP collateral bundle (docs/formats.md), as a client or `verify --collateral` reads
//! it: the JSON, its window and evaluation number, dcap-qvl's preparation, and the bundle
//! writer as the round-trip oracle.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::verify::Collateral;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Collateral::from_bundle_json(text, "fuzz") else {
        return;
    };
    let _ = c.window();
    let _ = c.tcb_evaluation_data_number();
    let again = Collateral::from_bundle_json(&c.to_bundle_json(), "fuzz");
    assert_eq!(again.ok().as_ref(), Some(&c), "bundle round trip");
    let _ = c.prepare();
});
