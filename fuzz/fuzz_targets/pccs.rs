//! A PCCS's answers for one platform (PCK CRL, TCB info, QE identity, root CA CRL, and the
//! issuer-chain headers), as the agent's PCCS client turns them into collateral, then
//! dcap-qvl's preparation of it.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_net::pccs::PccsAnswers;

fuzz_target!(|data: &[u8]| {
    // Seven parts, separated by 0xFF 0x00 (fuzz/src/lib.rs): the order of the fields below.
    let p = tdx_agent_fuzz::split(data, 7);
    let answers = PccsAnswers {
        pck_crl: p[0],
        pck_crl_issuer_chain: p[1],
        tcb_info: p[2],
        tcb_info_issuer_chain: p[3],
        qe_identity: p[4],
        qe_identity_issuer_chain: p[5],
        root_ca_crl: p[6],
    };
    if let Ok(c) = answers.collateral("https://pccs.invalid") {
        let _ = c.window();
        let _ = tdx_net::pccs::fresh(&c, 0);
        let _ = c.prepare();
    }
});
