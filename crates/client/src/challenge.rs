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
    let expected = "every GPU's report over this batch's GPU nonce passes the GPU checks";
    let set = match challenge_gpus(challenge) {
        Ok(Some(s)) => s,
        Ok(None) => {
            report.push_check(
                CHECK_GPUS,
                false,
                expected.into(),
                "the answer carries no GPU evidence".into(),
            );
            return;
        }
        Err(e) => {
            report.push_check(CHECK_GPUS, false, expected.into(), e);
            return;
        }
    };
    // The root our own nonce is under, recomputed: the GPU nonce must come from it.
    let root = tdx_core::challenge::merkle::Proof::try_from(challenge.proof.clone())
        .ok()
        .and_then(|p| {
            let leaf = tdx_core::challenge::merkle::leaf_hash(nonce, spki).ok()?;
            tdx_core::challenge::merkle::root_from_inclusion(&leaf, &p)
        });
    let Some(root) = root else {
        report.push_check(
            CHECK_GPUS,
            false,
            expected.into(),
            "no Merkle root for our nonce".into(),
        );
        return;
    };
    // The batch's GPU checks are gathered apart and summed up as one check of the report.
    let mut scratch = report.clone();
    let before = scratch.failures().count();
    tdx_core::verify::gpus::appraise_served_gpus(
        &mut scratch,
        verifier,
        roots,
        policy,
        peer_cert,
        evidence.gpu_collateral.as_ref(),
        Ok(&set),
        Some(set.digest()),
        tdx_core::gpu::nonce_for_batch(&root),
        now,
    );
    let failed: Vec<String> = scratch
        .failures()
        .skip(before)
        .map(|c| format!("{}: {}", c.name, c.found))
        .collect();
    report.push_check(
        CHECK_GPUS,
        failed.is_empty(),
        expected.into(),
        if failed.is_empty() {
            format!("{} GPUs passed", set.gpus().len())
        } else {
            failed.join("; ")
        },
    );
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
pub fn answered_for_another_key(
    report: &Report,
    challenge: &ChallengeResponseJson,
    nonce: &[u8],
) -> bool {
    let checked =
        |name: &str, ok: bool| report.checks().iter().any(|c| c.name == name && c.ok == ok);
    let only_key_and_proof = report
        .failures()
        .all(|c| c.name == CHECK_KEY || c.name == CHECK_PROOF);
    if !(checked(CHECK_KEY, false)
        && only_key_and_proof
        && checked(CHECK_QUOTE, true)
        && checked(CHECK_SAME_TD, true))
    {
        return false;
    }
    let (Ok(answered_key), Ok(report_data), Ok(proof), Ok(gpus)) = (
        tdx_core::encoding::hex_array::<32>(&challenge.spki_sha256),
        tdx_core::encoding::hex_array::<64>(&challenge.report_data),
        tdx_core::challenge::merkle::Proof::try_from(challenge.proof.clone()),
        challenge_gpus(challenge),
    ) else {
        return false;
    };
    tdx_core::challenge::verify_challenge_bound(
        nonce,
        &answered_key,
        &report_data,
        &proof,
        gpus.map(|s| s.digest()).as_ref(),
    )
    .is_ok()
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
        assert!(answered_for_another_key(&genuine, &rotated, &nonce));
        // The same answer to another nonce (a replayed answer) proves nothing now.
        assert!(!answered_for_another_key(&genuine, &rotated, &[2u8; 32]));
        // Naming another key than the one the proof holds for.
        let misnamed = bound_answer(&nonce, &new, &[9u8; 32]);
        assert!(!answered_for_another_key(&genuine, &misnamed, &nonce));
        // The proof holds for our key while the answer names another: not what a rotated
        // server sends.
        let ours_named_new = bound_answer(&nonce, &ours, &new);
        let key_only = report(&[
            (CHECK_KEY, false),
            (CHECK_PROOF, true),
            (CHECK_QUOTE, true),
            (CHECK_SAME_TD, true),
        ]);
        assert!(!answered_for_another_key(
            &key_only,
            &ours_named_new,
            &nonce
        ));
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
            assert!(
                !answered_for_another_key(&report(&checks), &rotated, &nonce),
                "{checks:?}"
            );
        }
        // The key matched: whatever failed, it is not a key change.
        let same_key = report(&[
            (CHECK_KEY, true),
            (CHECK_PROOF, false),
            (CHECK_QUOTE, true),
            (CHECK_SAME_TD, true),
        ]);
        assert!(!answered_for_another_key(&same_key, &rotated, &nonce));
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
}
