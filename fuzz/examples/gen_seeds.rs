//! Writes the seeds that no real vector provides, from the simulated TD and GPUs (tdx-sim),
//! and the fixtures the RA-TLS targets verify against: `cargo run --example gen_seeds` in
//! fuzz/. Its output is committed (fuzz/seeds/, fuzz/fixtures/); rerunning it gives new keys
//! and times, so only rerun it when a format changes.
#![forbid(unsafe_code)]

use std::path::Path;

use tdx_core::challenge::merkle;
use tdx_core::gpu::{GpuEvidence, GpuEvidenceSet, nonce_for_certificate};
use tdx_core::ratls::{self, Evidence, Validity, endorsements};
use tdx_core::wire::{ChallengeRequest, ChallengeResponseJson};
use tdx_daemon::audit::{AuditEvent, AuditOptions, AuditWriter, QuotePurpose};
use tdx_sim::{SimFixture, SimGpus, SimSettings};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Res<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)?;
    Ok(())
}

fn main() -> Res<()> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = here.join("seeds");
    let fixtures = here.join("fixtures");
    std::fs::create_dir_all(&fixtures)?;
    let scratch = std::env::temp_dir().join(format!("tdx-agent-gen-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;

    // The simulated TD, its root and collateral: the RA-TLS targets verify against these.
    let sim = SimFixture::create(&scratch.join("sim"), SimSettings::default())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let collateral = sim.collateral(u64::try_from(now)?)?;
    std::fs::write(fixtures.join("sim_root.der"), sim.root_der())?;
    std::fs::write(
        fixtures.join("sim_collateral.json"),
        collateral.to_bundle_json(),
    )?;
    let at = collateral.window()?.not_before() + 1;

    // An RA-TLS certificate as the agent issues it, for a key the harness also holds.
    let key = ratls::generate_key()?;
    std::fs::write(fixtures.join("ratls_key.pk8"), key.serialize_der())?;
    let spki = ratls::spki_der(&key);
    let spki_sha256: [u8; 32] = sha256(&spki);
    let log = rtmr3_log_seed(&scratch)?;
    // RTMR3 must hold what the log replays to, or the verifier stops at the event log check.
    for line in tdx_core::measure::rtmr3_log::parse_lines(log.lines().skip(1), 2)
        .map_err(|(n, e)| format!("line {n}: {e}"))?
    {
        tdx_tee::Tee::extend_rtmr(&*sim.td, tdx_tee::Rtmr::R3, &line.event.digest()?)?;
    }
    let event_lines: String = log.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let (claims, report_data) = ratls::claims_with_event_log(&key, event_lines.as_bytes());
    let quote = sim.quote(&report_data)?;
    let cert = ratls::build_certificate(
        &key,
        &claims,
        &quote,
        Some(&collateral),
        Validity::starting_at(at - 60, 3600),
        &[],
    )?;
    write(&seeds, "ratls_cert", "sim-cert.der", &cert.cert_der)?;
    let evidence = Evidence {
        quote: quote.clone(),
        claims: claims.clone(),
    }
    .to_cbor();
    write(&seeds, "ratls_evidence", "sim-evidence.cbor", &evidence)?;
    write(&seeds, "cbor_claims", "sim-evidence.cbor", &evidence)?;
    write(&seeds, "cbor_claims", "sim-claims.cbor", &claims)?;
    let (nonce_claims, _) = ratls::claims_with_nonce(&key, Some(b"fuzz nonce"));
    write(
        &seeds,
        "cbor_claims",
        "sim-claims-nonce.cbor",
        &nonce_claims,
    )?;
    write(
        &seeds,
        "cbor_claims",
        "sim-endorsements.cbor",
        &endorsements::encode(&collateral, at),
    )?;
    write(
        &seeds,
        "collateral",
        "sim-bundle.json",
        collateral.to_bundle_json().as_bytes(),
    )?;
    write(&seeds, "quote", "sim-quote.dat", &quote)?;
    write(&seeds, "rtmr3_log", "sim-rtmr3.jsonl", log.as_bytes())?;

    // A challenge as the daemon answers it: three clients' nonces in one batch.
    let nonce = b"tdx-agent fuzz nonce";
    let leaves = [
        merkle::leaf_hash(nonce, &[7u8; 32])?,
        merkle::leaf_hash(b"another client", &spki_sha256)?,
        merkle::leaf_hash(b"a third", &[9u8; 32])?,
    ];
    let (root, proofs) = merkle::all_proofs(&leaves);
    let head = [0x5au8; 32];
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(&root);
    rd[32..].copy_from_slice(&head);
    let challenge_quote = sim.quote(&rd)?;
    let answer = ChallengeResponseJson {
        quote: tdx_core::encoding::b64(&challenge_quote),
        report_data: hex::encode(rd),
        audit_head: hex::encode(head),
        root: hex::encode(root),
        leaf_hash: hex::encode(leaves[0]),
        proof: proofs[0].clone().into(),
        spki_sha256: hex::encode([7u8; 32]),
        gpu_evidence: None,
    };
    write(
        &seeds,
        "challenge",
        "sim-answer.json",
        serde_json::to_string_pretty(&answer)?.as_bytes(),
    )?;
    let request = ChallengeRequest {
        nonce: tdx_core::encoding::b64(nonce),
    };
    write(
        &seeds,
        "challenge",
        "request.json",
        serde_json::to_string(&request)?.as_bytes(),
    )?;

    // The audit log as the daemon writes it, rotated so the chain crosses a file boundary.
    let audit_dir = scratch.join("audit");
    std::fs::create_dir_all(&audit_dir)?;
    let mut w = AuditWriter::open(
        &audit_dir,
        AuditOptions {
            max_bytes: 1024,
            ..AuditOptions::default()
        },
    )?;
    w.append(AuditEvent::agent_started("0.1.0"))?;
    w.append(AuditEvent::policy_loaded(&[1u8; 32]))?;
    w.append(AuditEvent::quote_issued(
        QuotePurpose::Certificate,
        &rd,
        None,
    ))?;
    w.append(AuditEvent::rtmr_extended(3, &[2u8; 48], "model"))?;
    w.append(AuditEvent::verification_result("peer", "accepted", None))?;
    w.append(AuditEvent::notice("fuzz", "a notice"))?;
    w.append(AuditEvent::agent_stopped("signal"))?;
    w.finish()?;
    let files = tdx_daemon::audit::list_files(&audit_dir)?;
    let mut joined = Vec::new();
    for (i, f) in files.iter().take(2).enumerate() {
        if i > 0 {
            joined.extend_from_slice(&[0xFF, 0x00]);
        }
        joined.extend_from_slice(&std::fs::read(f)?);
    }
    write(&seeds, "audit_log", "sim-audit.jsonl", &joined)?;
    if let Some(f) = files.first() {
        write(
            &seeds,
            "audit_log",
            "sim-audit-one-file.jsonl",
            &std::fs::read(f)?,
        )?;
    }

    // Simulated GPU evidence and collateral (RIMs and OCSP answers), and the real Hopper
    // vector in the evidence document format.
    let gpus = SimGpus::create(&scratch.join("sim"), 1)?;
    let gpu_nonce = nonce_for_certificate(&cert.spki_sha256);
    let mut sim_gpus = Vec::new();
    for e in gpus.entries()? {
        sim_gpus.push(GpuEvidence {
            index: e.index,
            uuid: e.uuid.clone(),
            report: gpus.report(&e, &gpu_nonce)?,
            chain_pem: gpus.chain_pem().into_bytes(),
        });
    }
    let set = GpuEvidenceSet::new(sim_gpus)?;
    write(
        &seeds,
        "gpu_evidence",
        "sim-evidence.json",
        set.to_json_value().to_string().as_bytes(),
    )?;
    let gpu_collateral = gpus.collateral(now)?;
    write(
        &seeds,
        "gpu_collateral",
        "sim-bundle.json",
        gpu_collateral.to_bundle_json().as_bytes(),
    )?;
    for (i, o) in gpu_collateral.ocsp.iter().enumerate() {
        write(&seeds, "gpu_ocsp", &format!("sim-answer-{i}.der"), o)?;
    }
    for (i, r) in gpu_collateral.rims.iter().enumerate() {
        write(&seeds, "gpu_rim", &format!("sim-rim-{i}.xml"), &r.xml)?;
    }
    let real = GpuEvidenceSet::new(vec![GpuEvidence {
        index: 0,
        uuid: "GPU-00000000-0000-0000-0000-000000000000".into(),
        report: std::fs::read(
            here.join("../tests/vectors/nvidia/solpbc/hopper-595.71.05-96.00.88.00.11/report.bin"),
        )?,
        chain_pem: std::fs::read(here.join(
            "../tests/vectors/nvidia/solpbc/hopper-595.71.05-96.00.88.00.11/cert_chain.pem",
        ))?,
    }])?;
    write(
        &seeds,
        "gpu_evidence",
        "solpbc-evidence.json",
        real.to_json_value().to_string().as_bytes(),
    )?;

    // PCCS answers from the real Intel responses (tests/vectors/google-go-tdx-guest), in the
    // order and framing of the pccs target: the issuer chains URL-encoded as headers carry them.
    let v = |p: &str| std::fs::read(here.join("../tests/vectors/google-go-tdx-guest").join(p));
    let enc = |b: Vec<u8>| tdx_sim::pccs::url_encode(&String::from_utf8_lossy(&b)).into_bytes();
    let parts = [
        v("pckcrl")?,
        enc(v("pck_crl_issuer_chain.pem")?),
        v("sample_tcbInfo_response")?,
        enc(v("tcb_info_issuer_chain.pem")?),
        v("sample_qeIdentity_response")?,
        enc(v("qe_identity_issuer_chain.pem")?),
        v("rootcrl.der")?,
    ];
    write(
        &seeds,
        "pccs",
        "google-answers.bin",
        &parts.join(&[0xFFu8, 0x00][..]),
    )?;

    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

/// An RTMR3 log file as the daemon keeps it, for boot `fuzz-boot` (the target opens it so).
fn rtmr3_log_seed(scratch: &Path) -> Res<String> {
    use tdx_core::measure::rtmr3_log::Event;
    let path = scratch.join("rtmr3.jsonl");
    let mut log = tdx_tee::rtmr3_log::Rtmr3Log::open(&path, "fuzz-boot")?;
    log.append(Event {
        kind: "model".into(),
        data: serde_json::json!({"name": "tiny", "sha256": "00".repeat(32)}),
    })?;
    log.append(Event {
        kind: "config".into(),
        data: serde_json::json!({"digest": "ab".repeat(32), "n": 15, "list": [1, "x", null]}),
    })?;
    Ok(std::fs::read_to_string(&path)?)
}
