//! Fresh evidence on an open connection (docs/design.md §6): send a random nonce, get a quote whose
//! REPORTDATA commits to it and to this connection's key, and check that quote came from the
//! same TD the certificate describes. A certificate's quote proves the key; only this proves
//! the TD is live now.

use super::{Client, ClientError, Session};
use tdx_core::verify::{Collateral, Expectations, Policy, Report, Verifier};
use tdx_core::wire::{CHALLENGE, ChallengeResponseJson, EvidenceJson, WELL_KNOWN};

/// Check names a fresh challenge adds to a report.
pub const CHECK_KEY: &str = "challenge key";
pub const CHECK_PROOF: &str = "challenge proof";
pub const CHECK_QUOTE: &str = "challenge quote";
pub const CHECK_SAME_TD: &str = "challenge from the same TD";
pub const CHECK_GPUS: &str = "challenge GPUs";

/// 32 random bytes from the OS.
pub fn random_nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    nonce
}

/// Run one challenge on `session`'s connection: the certificate's report with the challenge
/// checks added (see [`check_challenge`]). A failed check is in the report (rejected), not
/// an error; errors are for exchanges that produced nothing to check.
pub async fn fresh(client: &Client, session: &mut Session) -> Result<Report, ClientError> {
    fresh_with_evidence(client, session).await.map(|f| f.report)
}

/// What one fresh challenge saw, for those who keep the evidence (an archive).
pub struct Fresh {
    pub report: Report,
    /// The server's evidence document, fetched on the same connection.
    pub evidence: EvidenceJson,
    pub challenge: ChallengeResponseJson,
    pub nonce: [u8; 32],
}

/// [`fresh`], returning the evidence it was appraised on too.
pub async fn fresh_with_evidence(
    client: &Client,
    session: &mut Session,
) -> Result<Fresh, ClientError> {
    // The served evidence carries the collateral the challenge quote is appraised with.
    let evidence: EvidenceJson = session.request_json("GET", WELL_KNOWN, None).await?;
    let nonce = random_nonce();
    let body = serde_json::json!({"nonce": tdx_core::encoding::b64(&nonce)}).to_string();
    let challenge: ChallengeResponseJson =
        session.request_json("POST", CHALLENGE, Some(body)).await?;
    // Appraising the quote (and any GPUs: a cold chain of P-384 signatures each) is CPU work
    // of milliseconds to tens of them: kept off the runtime, which serves other connections.
    let report = (*session.report).clone();
    let (client, peer_cert, spki) = (
        client.clone(),
        session.peer_cert.clone(),
        session.spki_sha256,
    );
    let (report, evidence, challenge) = tokio::task::spawn_blocking(move || {
        let mut report = report;
        check_challenge(
            &mut report,
            client.verifier(),
            client.policy(),
            &evidence,
            &challenge,
            &nonce,
            &spki,
            tdx_core::verify::time::now_unix(),
        );
        let gpus = client.gpus();
        check_challenge_gpus_with(
            &mut report,
            &gpus.verifier,
            &gpus.roots,
            &client.policy().gpu,
            &peer_cert,
            &spki,
            &evidence,
            &challenge,
            &nonce,
            tdx_core::verify::time::now_unix(),
        );
        (report, evidence, challenge)
    })
    .await
    .map_err(|e| ClientError::Setup(format!("the challenge's appraisal did not finish: {e}")))?;
    Ok(Fresh {
        report,
        evidence,
        challenge,
        nonce,
    })
}

/// The GPU evidence of a challenge answer, where it carries any.
fn challenge_gpus(
    challenge: &ChallengeResponseJson,
) -> Result<Option<tdx_core::gpu::GpuEvidenceSet>, String> {
    challenge
        .gpu_evidence
        .clone()
        .map(tdx_core::gpu::GpuEvidenceSet::from_json_value)
        .transpose()
        .map_err(|e| format!("the answer's GPU evidence: {e}"))
}

/// What the GPU checks of a challenge answer are made with beside the answer and our nonce:
/// the client's GPU verifier and roots, the policy's `[gpu]` table, the certificate of the
/// connection the challenge went over (its claims carry the RTMR3 event log the GPUs' CC state
/// is read from), the evidence document served on it (the GPU collateral) and the time to
/// appraise at.
pub struct ChallengeGpus<'a> {
    pub verifier: &'a tdx_core::gpu::GpuVerifier,
    pub roots: &'a tdx_core::gpu::GpuRoots,
    pub policy: &'a tdx_core::gpu::GpuPolicy,
    pub peer_cert: &'a [u8],
    pub evidence: &'a EvidenceJson,
    pub now: i64,
}

/// With a policy requiring GPUs: the challenge answer's GPU reports, one per GPU over the
/// batch's GPU nonce (derived from the Merkle root our nonce is under), pass every GPU check
/// with the collateral the server serves ([`CHECK_GPUS`]). From stored parts, without a
/// connection, it is what an auditor re-runs offline at the appraisal's own time.
#[allow(clippy::too_many_arguments)]
pub fn check_challenge_gpus_with(
    report: &mut Report,
    verifier: &tdx_core::gpu::GpuVerifier,
    roots: &tdx_core::gpu::GpuRoots,
    policy: &tdx_core::gpu::GpuPolicy,
    peer_cert: &[u8],
    spki: &[u8; 32],
    evidence: &EvidenceJson,
    challenge: &ChallengeResponseJson,
    nonce: &[u8],
    now: i64,
) {
    if policy.count == 0 {
        return;
    }
    let gpus = ChallengeGpus {
        verifier,
        roots,
        policy,
        peer_cert,
        evidence,
        now,
    };
    let (ok, found) = match appraise_challenge_gpus(report, &gpus, challenge, nonce, spki) {
        Ok(passed) => (true, passed),
        Err(failed) => (false, failed),
    };
    report.push_check(
        CHECK_GPUS,
        ok,
        "every GPU's report over this batch's GPU nonce passes the GPU checks".into(),
        found,
    );
}

/// The core of [`check_challenge_gpus_with`] (for a policy requiring GPUs), with `spki` the
/// key our nonce's leaf is hashed with: this connection's for the challenge itself, the
/// answered key when judging a rotation ([`answered_for_another_key`]). What was found, as
/// `Ok` when every GPU check passed and `Err` naming the failures otherwise. `report` is the
/// certificate's appraisal (the GPUs' CC state needs its RTMR3 event log replayed); it is
/// left as it was.
fn appraise_challenge_gpus(
    report: &Report,
    gpus: &ChallengeGpus<'_>,
    challenge: &ChallengeResponseJson,
    nonce: &[u8],
    spki: &[u8; 32],
) -> Result<String, String> {
    let set = match challenge_gpus(challenge) {
        Ok(Some(s)) => s,
        Ok(None) => return Err("the answer carries no GPU evidence".into()),
        Err(e) => return Err(e),
    };
    // The root our own nonce is under, recomputed: the GPU nonce must come from it.
    let root = tdx_core::challenge::merkle::Proof::try_from(challenge.proof.clone())
        .ok()
        .and_then(|p| {
            let leaf = tdx_core::challenge::merkle::leaf_hash(nonce, spki).ok()?;
            tdx_core::challenge::merkle::root_from_inclusion(&leaf, &p)
        })
        .ok_or_else(|| "no Merkle root for our nonce".to_string())?;
    // The batch's GPU checks are gathered apart and summed up as one check of the report.
    let mut scratch = report.clone();
    let before = scratch.failures().count();
    tdx_core::verify::gpus::appraise_served_gpus(
        &mut scratch,
        gpus.verifier,
        gpus.roots,
        gpus.policy,
        gpus.peer_cert,
        gpus.evidence.gpu_collateral.as_ref(),
        Ok(&set),
        Some(set.digest()),
        tdx_core::gpu::nonce_for_batch(&root),
        gpus.now,
    );
    let failed: Vec<String> = scratch
        .failures()
        .skip(before)
        .map(|c| format!("{}: {}", c.name, c.found))
        .collect();
    if failed.is_empty() {
        Ok(format!("{} GPUs passed", set.gpus().len()))
    } else {
        Err(failed.join("; "))
    }
}

/// Add the fresh-challenge checks to `report`: the challenge quote verifies, commits to our
/// nonce and the key we are talking to, and comes from the same TD as the certificate.
#[allow(clippy::too_many_arguments)]
pub fn check_challenge(
    report: &mut Report,
    verifier: &Verifier,
    policy: &Policy,
    evidence: &EvidenceJson,
    challenge: &ChallengeResponseJson,
    nonce: &[u8],
    spki: &[u8; 32],
    now: i64,
) {
    let quote = match tdx_core::encoding::from_b64(&challenge.quote) {
        Ok(q) => q,
        Err(e) => {
            report.push_check(CHECK_QUOTE, false, "base64".into(), e.to_string());
            return;
        }
    };
    let report_data = match tdx_core::encoding::hex_array::<64>(&challenge.report_data) {
        Ok(r) => r,
        Err(e) => {
            report.push_check(CHECK_PROOF, false, "64 bytes of REPORTDATA".into(), e);
            return;
        }
    };
    report.push_check(
        CHECK_KEY,
        tdx_core::encoding::hex(spki) == challenge.spki_sha256,
        format!(
            "the key of this connection (spki sha256 {})",
            tdx_core::encoding::hex(spki)
        ),
        challenge.spki_sha256.clone(),
    );
    let proof = tdx_core::challenge::merkle::Proof::try_from(challenge.proof.clone());
    let expected_proof = "our nonce in the Merkle tree under REPORTDATA[0..32]";
    // An answer with GPU evidence commits to the root and that evidence's digest together.
    let gpu_digest = challenge_gpus(challenge).map(|s| s.map(|s| s.digest()));
    match proof
        .map_err(|e| e.to_string())
        .and_then(|p| Ok((p, gpu_digest?)))
        .and_then(|(p, digest)| {
            tdx_core::challenge::verify_challenge_bound(
                nonce,
                spki,
                &report_data,
                &p,
                digest.as_ref(),
            )
            .map_err(|e| e.to_string())
        }) {
        Ok(()) => report.push_check(CHECK_PROOF, true, expected_proof.into(), "included".into()),
        Err(e) => report.push_check(CHECK_PROOF, false, expected_proof.into(), e),
    }
    let collateral =
        match Collateral::from_bundle_json(&evidence.collateral.to_string(), "agent evidence")
            .and_then(Collateral::prepare)
        {
            Ok(c) => c,
            Err(e) => {
                report.push_check(
                    CHECK_QUOTE,
                    false,
                    "verifiable collateral".into(),
                    e.to_string(),
                );
                return;
            }
        };
    let fresh = verifier.appraise(
        &quote,
        &collateral,
        now,
        policy,
        &Expectations {
            report_data: Some(report_data),
        },
    );
    report.push_check(
        CHECK_QUOTE,
        fresh.accepted(),
        "a quote that passes every check".into(),
        fresh.summary(),
    );
    let same_td = report
        .measurements()
        .as_ref()
        .zip(fresh.measurements())
        .map(|(a, b)| {
            // RTMR3 too: the certificate's events were appraised for its RTMR3 only.
            a.mrtd == b.mrtd
                && a.rtmr0 == b.rtmr0
                && a.rtmr1 == b.rtmr1
                && a.rtmr2 == b.rtmr2
                && a.rtmr3 == b.rtmr3
        });
    report.push_check(
        CHECK_SAME_TD,
        same_td == Some(true),
        "MRTD and RTMR0-3 equal to the certificate's quote".into(),
        match same_td {
            Some(true) => "equal".into(),
            Some(false) => "different".into(),
            None => "unknown".into(),
        },
    );
}

/// Whether a failed challenge shows only that the server now serves another key, as it does
/// after re-issuing its certificate (an open connection keeps the old key): the answer's
/// quote passed and came from the same TD, our nonce is under its REPORTDATA bound to the
/// key the answer names, and nothing else failed. The key check alone proves nothing: the
/// server writes the key it names, so a server naming another key without the quote and
/// proof to go with it has failed the challenge, not rotated its key. (The proof check
/// fails too on a real rotation, since it binds our nonce to this connection's key.)
///
/// Under a policy requiring GPUs the GPU check fails too on a real rotation: the batch's GPU
/// nonce comes from the root over our nonce and the *answered* key, not this connection's.
/// That failure is forgiven only when the answer's GPU evidence passes every GPU check again
/// under the answered key (`gpus`: what [`check_challenge_gpus_with`] was given), so naming
/// another key never gets a server past GPUs that fail. The certificate's event log still
/// speaks for the GPUs' CC state: the answer's quote has the certificate's RTMR3 (same TD).
pub fn answered_for_another_key(
    report: &Report,
    challenge: &ChallengeResponseJson,
    nonce: &[u8],
    gpus: &ChallengeGpus<'_>,
) -> bool {
    let gpus_required = gpus.policy.count > 0;
    let checked =
        |name: &str, ok: bool| report.checks().iter().any(|c| c.name == name && c.ok == ok);
    // A failed GPU check passes this gate only to be judged again below, under the answered
    // key; that verdict decides, whatever the check on this connection's key found.
    let only_key_proof_gpus = report.failures().all(|c| {
        c.name == CHECK_KEY || c.name == CHECK_PROOF || (gpus_required && c.name == CHECK_GPUS)
    });
    if !(checked(CHECK_KEY, false)
        && only_key_proof_gpus
        && checked(CHECK_QUOTE, true)
        && checked(CHECK_SAME_TD, true))
    {
        return false;
    }
    let (Ok(answered_key), Ok(report_data), Ok(proof), Ok(gpu_set)) = (
        tdx_core::encoding::hex_array::<32>(&challenge.spki_sha256),
        tdx_core::encoding::hex_array::<64>(&challenge.report_data),
        tdx_core::challenge::merkle::Proof::try_from(challenge.proof.clone()),
        challenge_gpus(challenge),
    ) else {
        return false;
    };
    let bound = tdx_core::challenge::verify_challenge_bound(
        nonce,
        &answered_key,
        &report_data,
        &proof,
        gpu_set.map(|s| s.digest()).as_ref(),
    )
    .is_ok();
    // The GPU appraisal (a chain of signatures per GPU) runs only for an answer that is
    // otherwise a proven rotation.
    bound
        && (!gpus_required
            || appraise_challenge_gpus(report, gpus, challenge, nonce, &answered_key).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdx_core::challenge::merkle::ProofJson;

    fn accepted() -> Report {
        crate::tests::report_with(&[])
    }

    fn evidence() -> EvidenceJson {
        EvidenceJson {
            version: 1,
            tee: "simulated".into(),
            certificate: String::new(),
            quote: String::new(),
            spki_sha256: String::new(),
            not_before: String::new(),
            not_after: String::new(),
            collateral: serde_json::json!({}),
            event_log: String::new(),
            tcb_status: None,
            gpu_evidence: None,
            gpu_collateral: None,
        }
    }

    fn response(quote: &str, spki: &[u8; 32]) -> ChallengeResponseJson {
        ChallengeResponseJson {
            quote: quote.into(),
            report_data: "00".repeat(64),
            audit_head: "00".repeat(32),
            root: "00".repeat(32),
            leaf_hash: "00".repeat(32),
            proof: ProofJson {
                leaf_index: 0,
                tree_size: 1,
                audit_path: vec![],
            },
            spki_sha256: tdx_core::encoding::hex(spki),
            gpu_evidence: None,
        }
    }

    fn failed(report: &Report) -> Vec<&str> {
        report.failures().map(|c| c.name.as_str()).collect()
    }

    /// [`answered_for_another_key`] under a policy that requires no GPU.
    fn no_gpus(report: &Report, answer: &ChallengeResponseJson, nonce: &[u8]) -> bool {
        let (verifier, roots) = (
            tdx_core::gpu::GpuVerifier::new(),
            tdx_core::gpu::GpuRoots::nvidia().unwrap(),
        );
        let evidence = evidence();
        let gpus = ChallengeGpus {
            verifier: &verifier,
            roots: &roots,
            policy: &tdx_core::gpu::GpuPolicy::default(),
            peer_cert: &[],
            evidence: &evidence,
            now: 0,
        };
        answered_for_another_key(report, answer, nonce, &gpus)
    }

    /// An answer that binds `nonce` to `key` (a tree of one leaf) and names `named`.
    fn bound_answer(nonce: &[u8], key: &[u8; 32], named: &[u8; 32]) -> ChallengeResponseJson {
        let leaf = tdx_core::challenge::merkle::leaf_hash(nonce, key).unwrap();
        let mut r = response("AAAA", named);
        r.report_data = format!("{}{}", tdx_core::encoding::hex(&leaf), "00".repeat(32));
        r
    }

    #[test]
    fn only_a_proven_answer_for_another_key_of_the_same_td_is_a_key_change() {
        let (ours, new, nonce) = ([7u8; 32], [8u8; 32], [1u8; 32]);
        let rotated = bound_answer(&nonce, &new, &new);
        let report = |checks: &[(&str, bool)]| crate::tests::report_with(checks);
        // A real rotation: the key differs and so our proof fails; everything else passed.
        let genuine = report(&[
            (CHECK_KEY, false),
            (CHECK_PROOF, false),
            (CHECK_QUOTE, true),
            (CHECK_SAME_TD, true),
        ]);
        assert!(no_gpus(&genuine, &rotated, &nonce));
        // The same answer to another nonce (a replayed answer) proves nothing now.
        assert!(!no_gpus(&genuine, &rotated, &[2u8; 32]));
        // Naming another key than the one the proof holds for.
        let misnamed = bound_answer(&nonce, &new, &[9u8; 32]);
        assert!(!no_gpus(&genuine, &misnamed, &nonce));
        // The proof holds for our key while the answer names another: not what a rotated
        // server sends.
        let ours_named_new = bound_answer(&nonce, &ours, &new);
        let key_only = report(&[
            (CHECK_KEY, false),
            (CHECK_PROOF, true),
            (CHECK_QUOTE, true),
            (CHECK_SAME_TD, true),
        ]);
        assert!(!no_gpus(&key_only, &ours_named_new, &nonce));
        // A server that names another key and fails anything else failed the challenge,
        // whichever check comes first in the report.
        for others in [
            vec![(CHECK_QUOTE, false), (CHECK_SAME_TD, true)],
            vec![(CHECK_QUOTE, true), (CHECK_SAME_TD, false)],
            vec![
                (CHECK_QUOTE, true),
                (CHECK_SAME_TD, true),
                (CHECK_GPUS, false),
            ],
            vec![(CHECK_QUOTE, true)],
            vec![],
        ] {
            let mut checks = vec![(CHECK_KEY, false), (CHECK_PROOF, false)];
            checks.extend(others.iter().copied());
            assert!(!no_gpus(&report(&checks), &rotated, &nonce), "{checks:?}");
        }
        // The key matched: whatever failed, it is not a key change.
        let same_key = report(&[
            (CHECK_KEY, true),
            (CHECK_PROOF, false),
            (CHECK_QUOTE, true),
            (CHECK_SAME_TD, true),
        ]);
        assert!(!no_gpus(&same_key, &rotated, &nonce));
    }

    #[test]
    fn garbage_answers_reject_and_name_the_check() {
        let v = Verifier::production();
        let p = Policy::default();
        let spki = [7u8; 32];
        let mut r = accepted();
        let ch = response("***", &spki);
        check_challenge(&mut r, &v, &p, &evidence(), &ch, &[1; 32], &spki, 0);
        assert!(!r.accepted());
        assert_eq!(failed(&r), vec![CHECK_QUOTE]);

        // A quote committing to another key, a proof that does not hold, no collateral,
        // and no quote body to compare: each is its own failed check, the key first.
        let mut r = accepted();
        let ch = response("AAAA", &[8u8; 32]);
        check_challenge(&mut r, &v, &p, &evidence(), &ch, &[1; 32], &spki, 0);
        assert!(!r.accepted());
        assert_eq!(
            failed(&r),
            vec![CHECK_KEY, CHECK_PROOF, CHECK_QUOTE],
            "{:?}",
            r.checks()
        );
    }

    /// A simulated TD with simulated GPUs as a client sees it on one connection, every part
    /// made by the simulations and appraised as a client does: the certificate (its claims
    /// carry the RTMR3 log, one `gpu` event per GPU in CC mode, extended into the TD's RTMR3),
    /// its appraisal with the log replayed, the evidence document (TD and GPU collateral) and
    /// the GPU roots, with a policy requiring every GPU.
    struct GpuTd {
        _tmp: tempfile::TempDir,
        fx: tdx_sim::SimFixture,
        gpus: tdx_sim::SimGpus,
        verifier: Verifier,
        gpu_verifier: tdx_core::gpu::GpuVerifier,
        roots: tdx_core::gpu::GpuRoots,
        policy: Policy,
        evidence: EvidenceJson,
        cert: Vec<u8>,
        /// The certificate's appraisal, accepted.
        report: Report,
        /// This connection's key: the certificate's.
        spki: [u8; 32],
        now: i64,
    }

    impl GpuTd {
        fn new(count: u32) -> Self {
            use tdx_core::measure::rtmr3_log::{Event, LogLine};
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("td");
            let fx = tdx_sim::SimFixture::create(&dir, tdx_sim::SimSettings::default()).unwrap();
            let gpus = tdx_sim::SimGpus::create(&dir, count).unwrap();
            let now = tdx_core::verify::time::now_unix();
            let roots =
                tdx_core::gpu::GpuRoots::insecure_from_pem(gpus.roots_pem().as_bytes()).unwrap();
            let gpu_verifier = tdx_core::gpu::GpuVerifier::new();
            let mut policy = Policy::default();
            policy.gpu.count = count;
            let gpu_collateral = gpus.collateral(now).unwrap();
            // The log as the agent measures it: per GPU, the measurements its verified
            // report shows and CC on, each event extended into RTMR3.
            let mut log = String::new();
            for (seq, entry) in (1..).zip(gpus.entries().unwrap()) {
                let report = gpus.report(&entry, &[0; 32]).unwrap();
                let verified = gpu_verifier.verify(
                    tdx_core::gpu::GpuEvidenceRef {
                        report: &report,
                        chain_pem: gpus.chain_pem().as_bytes(),
                    },
                    &[0; 32],
                    &gpu_collateral,
                    &policy.gpu,
                    &roots,
                    now,
                );
                assert!(verified.accepted(), "{verified:?}");
                let data = tdx_core::gpu::GpuEventData {
                    index: entry.index,
                    architecture: verified.gpu().architecture.clone().unwrap(),
                    uuid_sha256: tdx_core::gpu::GpuEventData::uuid_digest(&entry.uuid),
                    driver_version: gpus.driver_version().into(),
                    vbios_version: gpus.vbios_version().into(),
                    cc_mode: tdx_core::gpu::CcMode::On,
                    multi_gpu_mode: tdx_core::gpu::MultiGpuMode::None,
                    measurements_sha384: verified.gpu().measurements_sha384.clone().unwrap(),
                };
                let event = Event {
                    kind: tdx_core::gpu::GPU_EVENT.into(),
                    data: serde_json::to_value(data).unwrap(),
                };
                let digest = event.digest().unwrap();
                fx.td
                    .extend(tdx_core::registers::Rtmr::R3, &digest)
                    .unwrap();
                let line = LogLine {
                    seq,
                    rtmr: 3,
                    digest: tdx_core::encoding::hex(&digest),
                    event,
                };
                log.push_str(&serde_json::to_string(&line).unwrap());
                log.push('\n');
            }
            let key = tdx_core::ratls::generate_key().unwrap();
            let (claims, rd) = tdx_core::ratls::claims_with_event_log(&key, log.as_bytes());
            let quote = fx.quote(&rd).unwrap();
            let cert = tdx_core::ratls::build_certificate(
                &key,
                &claims,
                &quote,
                None,
                tdx_core::ratls::Validity::starting_at(now, 3600),
                &["localhost".into()],
            )
            .unwrap()
            .cert_der
            .to_vec();
            let verifier = Verifier::with_insecure_root(fx.root_der().to_vec());
            let collateral = fx.collateral(now as u64).unwrap();
            let mut report = verifier.appraise(
                &quote,
                &collateral.clone().prepare().unwrap(),
                now,
                &policy,
                &tdx_core::verify::Expectations {
                    report_data: Some(rd),
                },
            );
            tdx_core::verify::events::appraise_events(
                &mut report,
                Some(&log),
                &policy.rtmr3_events,
            );
            assert!(report.accepted(), "{}", report.render_text());
            let mut evidence = evidence();
            evidence.collateral = serde_json::from_str(&collateral.to_bundle_json()).unwrap();
            evidence.gpu_collateral =
                Some(serde_json::from_str(&gpu_collateral.to_bundle_json()).unwrap());
            GpuTd {
                spki: tdx_core::ratls::certificate_spki_sha256(&cert).unwrap(),
                _tmp: tmp,
                fx,
                gpus,
                verifier,
                gpu_verifier,
                roots,
                policy,
                evidence,
                cert,
                report,
                now,
            }
        }

        /// Every GPU's evidence over the GPU nonce of a batch whose root is `root`.
        fn gpu_evidence(&self, root: &[u8; 32]) -> tdx_core::gpu::GpuEvidenceSet {
            let nonce = tdx_core::gpu::nonce_for_batch(root);
            let gpus =
                self.gpus
                    .entries()
                    .unwrap()
                    .into_iter()
                    .map(|e| tdx_core::gpu::GpuEvidence {
                        index: e.index,
                        report: self.gpus.report(&e, &nonce).unwrap(),
                        uuid: e.uuid,
                        chain_pem: self.gpus.chain_pem().into_bytes(),
                    });
            tdx_core::gpu::GpuEvidenceSet::new(gpus.collect()).unwrap()
        }

        /// The root of the agent's batch of one: `nonce` under `key`.
        fn root(nonce: &[u8], key: &[u8; 32]) -> [u8; 32] {
            let leaf = tdx_core::challenge::merkle::leaf_hash(nonce, key).unwrap();
            tdx_core::challenge::merkle::root(&[leaf])
        }

        /// The agent's answer to `nonce` while its key is `key`: a batch of one, `gpus` (when
        /// any) bound with the root into a quote's REPORTDATA as the agent binds them.
        fn answer(
            &self,
            nonce: &[u8],
            key: &[u8; 32],
            gpus: Option<&tdx_core::gpu::GpuEvidenceSet>,
        ) -> ChallengeResponseJson {
            let leaf = tdx_core::challenge::merkle::leaf_hash(nonce, key).unwrap();
            let (root, proofs) = tdx_core::challenge::merkle::all_proofs(&[leaf]);
            let committed = match gpus {
                Some(s) => tdx_core::challenge::gpu_bound_root(&root, &s.digest()),
                None => root,
            };
            let mut report_data = [0u8; 64];
            report_data[..32].copy_from_slice(&committed);
            let mut r = response(
                &tdx_core::encoding::b64(&self.fx.quote(&report_data).unwrap()),
                key,
            );
            r.report_data = tdx_core::encoding::hex(&report_data);
            r.root = tdx_core::encoding::hex(&root);
            r.leaf_hash = tdx_core::encoding::hex(&leaf);
            r.proof = proofs[0].clone().into();
            r.gpu_evidence = gpus.map(|s| s.to_json_value());
            r
        }

        /// What [`check_challenge_gpus_with`] is given on this connection.
        fn gpus(&self) -> ChallengeGpus<'_> {
            ChallengeGpus {
                verifier: &self.gpu_verifier,
                roots: &self.roots,
                policy: &self.policy.gpu,
                peer_cert: &self.cert,
                evidence: &self.evidence,
                now: self.now,
            }
        }

        /// The report a challenge with `nonce` answered by `answer` ends in on this
        /// connection, as [`fresh`] appraises it.
        fn appraise(&self, answer: &ChallengeResponseJson, nonce: &[u8]) -> Report {
            let mut report = self.report.clone();
            check_challenge(
                &mut report,
                &self.verifier,
                &self.policy,
                &self.evidence,
                answer,
                nonce,
                &self.spki,
                self.now,
            );
            check_challenge_gpus_with(
                &mut report,
                &self.gpu_verifier,
                &self.roots,
                &self.policy.gpu,
                &self.cert,
                &self.spki,
                &self.evidence,
                answer,
                nonce,
                self.now,
            );
            report
        }

        /// Whether the answer to `nonce` is taken for a rotation on this connection, after
        /// checking it failed exactly `failing` there.
        fn rotated(&self, answer: &ChallengeResponseJson, nonce: &[u8], failing: &[&str]) -> bool {
            let report = self.appraise(answer, nonce);
            assert_eq!(failed(&report), failing, "{}", report.render_text());
            answered_for_another_key(&report, answer, nonce, &self.gpus())
        }
    }

    /// What a rotated key fails on a connection under a GPU policy.
    const ALL: &[&str] = &[CHECK_KEY, CHECK_PROOF, CHECK_GPUS];

    #[test]
    fn under_a_gpu_policy_a_rotation_is_one_whose_gpus_pass_under_the_answered_key() {
        let td = GpuTd::new(2);
        let (nonce, new) = (random_nonce(), [8u8; 32]);
        // Unrotated, the agent's answer passes every check, the GPUs included.
        let ours = td.gpu_evidence(&GpuTd::root(&nonce, &td.spki));
        let report = td.appraise(&td.answer(&nonce, &td.spki, Some(&ours)), &nonce);
        assert!(report.accepted(), "{}", report.render_text());

        // After a re-issue the agent answers for its new key, and its GPUs over the nonce
        // derived from that batch's root: the GPU check fails on this connection's key with
        // the key and proof checks, yet the answer proves a rotation.
        let rotated = td.gpu_evidence(&GpuTd::root(&nonce, &new));
        let answer = td.answer(&nonce, &new, Some(&rotated));
        assert!(td.rotated(&answer, &nonce, ALL));
        // Under another nonce the same answer proves nothing.
        let other = random_nonce();
        let report = td.appraise(&answer, &other);
        assert!(!answered_for_another_key(
            &report,
            &answer,
            &other,
            &td.gpus()
        ));
    }

    #[test]
    fn under_a_gpu_policy_naming_another_key_gets_no_failing_gpu_past() {
        let td = GpuTd::new(2);
        let (nonce, new) = (random_nonce(), [8u8; 32]);
        let rotated = td.gpu_evidence(&GpuTd::root(&nonce, &new));
        let mut gpus = rotated.gpus().to_vec();
        if let Some(byte) = gpus[1].report.last_mut() {
            *byte ^= 1;
        }
        let tampered = tdx_core::gpu::GpuEvidenceSet::new(gpus).unwrap();
        let one = tdx_core::gpu::GpuEvidenceSet::new(rotated.gpus()[..1].to_vec()).unwrap();
        let stale = td.gpu_evidence(&GpuTd::root(&nonce, &td.spki));
        let taken: Vec<&str> = [
            // GPU reports over the nonce of this connection's root, not the answered key's:
            // they pass on this connection, but the GPUs did not answer the batch the quote
            // commits to.
            (
                "GPUs over this connection's root",
                td.answer(&nonce, &new, Some(&stale)),
                &[CHECK_KEY, CHECK_PROOF][..],
            ),
            (
                "a GPU report altered after the GPU signed it",
                td.answer(&nonce, &new, Some(&tampered)),
                ALL,
            ),
            (
                "fewer GPUs than the policy requires",
                td.answer(&nonce, &new, Some(&one)),
                ALL,
            ),
            ("no GPU evidence", td.answer(&nonce, &new, None), ALL),
        ]
        .iter()
        .filter(|(_, answer, failing)| td.rotated(answer, &nonce, failing))
        .map(|(case, _, _)| *case)
        .collect();
        assert!(taken.is_empty(), "taken for a rotation: {taken:?}");
    }
}
