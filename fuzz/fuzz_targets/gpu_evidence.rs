//! GPU evidence as a verifier receives it: the served evidence document (JSON, one SPDM
//! report and certificate chain per GPU, docs/formats.md) and a bare SPDM report, each
//! appraised in full (chain, signature, nonce, RIMs, measurements) against a real Hopper's
//! chain and RIMs at the instant they are valid.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::gpu::{GpuEvidenceRef, GpuEvidenceSet, SpdmReport, rim_ids, verify_gpu};

fuzz_target!(|data: &[u8]| {
    let nonce = tdx_agent_fuzz::gpu_nonce();
    let policy = tdx_agent_fuzz::gpu_policy();
    let roots = tdx_agent_fuzz::gpu_roots();
    let collateral = tdx_agent_fuzz::gpu_collateral();
    if let Ok(r) = SpdmReport::parse(data) {
        let _ = rim_ids(&r, None);
        let _ = r.driver_version();
        let _ = r.vbios_version();
    }
    let report = verify_gpu(
        GpuEvidenceRef {
            report: data,
            chain_pem: tdx_agent_fuzz::GPU_CHAIN_PEM,
        },
        &nonce,
        collateral,
        &policy,
        roots,
        tdx_agent_fuzz::GPU_AT,
    );
    let _ = report;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(set) = GpuEvidenceSet::from_json_value(v) else {
        return;
    };
    // The digest the certificate commits to is over the document the agent writes: reading
    // that back must give the same set.
    let back = GpuEvidenceSet::from_json_value(set.to_json_value());
    assert_eq!(
        back.ok().as_ref(),
        Some(&set),
        "evidence document round trip"
    );
    let _ = set.digest();
    for g in set.gpus() {
        let _ = verify_gpu(
            GpuEvidenceRef {
                report: &g.report,
                chain_pem: &g.chain_pem,
            },
            &nonce,
            collateral,
            &policy,
            roots,
            tdx_agent_fuzz::GPU_AT,
        );
    }
});
