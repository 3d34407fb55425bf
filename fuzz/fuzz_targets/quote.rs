//! The TD quote as a verifier receives it: the structural parser, the PCK chain reader and
//! the whole appraisal (dcap-qvl's checks, then ours) against real Intel collateral.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::quote::{self, Quote};
use tdx_core::verify::{Expectations, Policy, Verifier};

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = Quote::parse(data) {
        let _ = q.pck_chain_der();
    }
    let _ = quote::parse_head_only(data);
    // Quotes also arrive as files in base64, hex or raw (`verify --quote FILE`).
    let _ = Quote::parse(&quote::decode_file(data.to_vec()));
    let verifier = Verifier::production();
    let now = tdx_agent_fuzz::intel_now();
    let report = verifier.appraise(
        data,
        tdx_agent_fuzz::intel_collateral(),
        now,
        &Policy::default(),
        &Expectations::default(),
    );
    let _ = report.to_json();
    let _ = verifier.appraise_without_collateral(data, now, "fuzz");
});
