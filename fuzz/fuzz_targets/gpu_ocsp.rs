//! OCSP answers (stapled in GPU collateral or fetched from NVIDIA's responder) and OCSP
//! requests (what the simulated responder reads): the DER parsers, and the full check of an
//! answer for the real Hopper chain's leaf.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::gpu::ocsp::{check_ocsp, parse_ocsp_request, parse_ocsp_response};

fuzz_target!(|data: &[u8]| {
    let _ = parse_ocsp_response(data);
    let _ = parse_ocsp_request(data);
    // Stapled answers arrive base64-encoded too.
    let der = tdx_core::gpu::decode_ocsp_file(data.to_vec());
    let _ = parse_ocsp_response(&der);
    let Ok(chain) = tdx_core::gpu::chain_der(tdx_agent_fuzz::GPU_CHAIN_PEM) else {
        return;
    };
    for pair in chain.windows(2) {
        let _ = check_ocsp(&der, &pair[0], &pair[1], tdx_agent_fuzz::GPU_AT, 7 * 86_400);
    }
});
