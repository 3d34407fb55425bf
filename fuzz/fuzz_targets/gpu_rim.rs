//! A RIM (NVIDIA's signed SWID XML) as fetched from the RIM service or served in a GPU
//! collateral bundle: the restricted XML reader, the SWID fields, exclusive C14N, the
//! XML-DSig signature and the chain to NVIDIA's RIM root.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::gpu::Rim;
use tdx_core::gpu::rim::canonicalize_for_signing;

fuzz_target!(|data: &[u8]| {
    let _ = canonicalize_for_signing(data);
    let Ok(rim) = Rim::parse(data) else {
        return;
    };
    let _ = rim.tag_id();
    let _ = rim.colloquial_version();
    let _ = rim.measurements();
    let _ = rim.verify_signature();
    let _ = rim.verify_chain(
        tdx_agent_fuzz::gpu_roots().rim_der(),
        tdx_agent_fuzz::GPU_AT,
    );
});
