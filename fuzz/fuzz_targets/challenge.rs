//! Fresh challenges: the request body the daemon reads (JSON, base64 nonce), and the answer
//! a client checks (Merkle proof, REPORTDATA, the fresh quote against the served collateral).
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::challenge::{self, Proof};
use tdx_core::verify::{Policy, Verifier};
use tdx_core::wire::{ChallengeRequest, ChallengeResponseJson, EvidenceJson};

const NONCE: &[u8] = b"tdx-agent fuzz nonce";

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ChallengeRequest>(data) {
        let _ = tdx_core::encoding::from_b64(req.nonce.trim());
    }
    let Ok(answer) = serde_json::from_slice::<ChallengeResponseJson>(data) else {
        return;
    };
    if let Ok(p) = Proof::try_from(answer.proof.clone()) {
        // The proof's JSON form is what the daemon writes: it must read back as itself.
        let json = tdx_core::challenge::ProofJson::from(p.clone());
        assert_eq!(Proof::try_from(json).ok().as_ref(), Some(&p));
        let _ = challenge::verify_challenge(NONCE, &[7u8; 32], &[0u8; 64], &p);
    }
    // The simulated TD's root and collateral: the seed answer's quote (examples/gen_seeds.rs)
    // then passes every check, so mutations start from a fully verified answer.
    let sim = tdx_agent_fuzz::sim();
    let verifier = Verifier::with_insecure_root(sim.root_der.clone());
    let now = sim.now;
    let evidence = EvidenceJson {
        version: 1,
        tee: "tdx".into(),
        certificate: String::new(),
        quote: String::new(),
        spki_sha256: String::new(),
        not_before: String::new(),
        not_after: String::new(),
        collateral: serde_json::from_slice(tdx_agent_fuzz::fixture!("sim_collateral.json"))
            .unwrap_or_default(),
        event_log: String::new(),
        tcb_status: None,
        gpu_evidence: None,
        gpu_collateral: None,
    };
    let mut report = verifier.appraise_without_collateral(&[], now, "fuzz");
    tdx_client::challenge::check_challenge(
        &mut report,
        &verifier,
        &Policy::default(),
        &evidence,
        &answer,
        NONCE,
        &[7u8; 32],
        now,
    );
});
