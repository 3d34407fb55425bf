//! The GPU collateral bundle (RIMs and OCSP answers) a server serves beside its evidence:
//! its JSON reader, with the writer as the round-trip oracle.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::gpu::GpuCollateral;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = GpuCollateral::from_bundle_json(data, "fuzz") else {
        return;
    };
    let back = GpuCollateral::from_bundle_json(c.to_bundle_json().as_bytes(), "fuzz");
    assert_eq!(back.ok().as_ref(), Some(&c), "GPU collateral round trip");
});
