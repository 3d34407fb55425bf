//! The GPUs a server attests with its certificate (docs/gpu.md): when the policy's `[gpu]`
//! table requires any, the evidence and its collateral are fetched once per certificate
//! from /.well-known/attestation, appraised against the certificate's claims, and the
//! verdict, when it accepts, is cached by certificate for an hour so later connections cost
//! nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tdx_core::gpu::{GpuEvidenceSet, GpuRoots, GpuVerifier, nonce_for_certificate};
use tdx_core::verify::Report;
use tdx_core::verify::gpus::appraise_served_gpus;
use tdx_core::wire::{EvidenceJson, WELL_KNOWN};

use super::{ClientError, Session};

/// Certificates whose GPU verdicts are kept; a server rotates daily, so this is plenty.
const CACHE_LIMIT: usize = 256;
/// How long an accepted verdict is reused: time alone moves it (stapled OCSP answers age,
/// certificates expire), so it is judged again at least this often.
const VERDICT_TTL: Duration = Duration::from_secs(3600);

/// An accepted verdict and when it was reached.
type Kept = (Arc<Report>, Instant);

/// The GPU roots and verifier a client appraises servers' GPUs with, and its verdicts.
pub struct GpuAppraiser {
    pub(crate) verifier: GpuVerifier,
    pub(crate) roots: GpuRoots,
    /// Certificate SHA-256 → the accepted report with the GPU checks added, and when.
    verdicts: Mutex<HashMap<[u8; 32], Kept>>,
}

impl std::fmt::Debug for GpuAppraiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuAppraiser").finish_non_exhaustive()
    }
}

impl GpuAppraiser {
    pub fn new(roots: GpuRoots) -> Self {
        Self {
            verifier: GpuVerifier::new(),
            roots,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, cert: &[u8; 32], now: Instant) -> Option<Arc<Report>> {
        self.verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cert)
            .filter(|(_, at)| now.saturating_duration_since(*at) < VERDICT_TTL)
            .map(|(r, _)| Arc::clone(r))
    }

    /// Keep an accepted verdict. A rejection is never kept: it may be passing (evidence
    /// fetched just as the server rotated its certificate), and a kept one would refuse the
    /// server until the certificate changed.
    fn remember(&self, cert: [u8; 32], report: Arc<Report>, now: Instant) {
        if !report.accepted() {
            return;
        }
        let mut v = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= CACHE_LIMIT {
            v.clear();
        }
        v.insert(cert, (report, now));
    }
}

/// Add the GPU checks to `session`'s report when the policy requires GPUs; a server whose
/// GPUs fail is [`ClientError::Rejected`] with the whole report.
pub async fn check_session(
    client: &super::Client,
    session: &mut Session,
) -> Result<(), ClientError> {
    let policy = &client.policy().gpu;
    if policy.count == 0 {
        return Ok(());
    }
    let appraiser = client.gpus();
    let cert_hash: [u8; 32] = Sha256::digest(&session.peer_cert).into();
    let report = match appraiser.cached(&cert_hash, Instant::now()) {
        Some(r) => r,
        None => {
            let evidence: EvidenceJson = session.request_json("GET", WELL_KNOWN, None).await?;
            // A cold appraisal verifies a chain of P-384 signatures per GPU, milliseconds
            // each: kept off the runtime, which serves other connections (as the challenge's).
            let (owner, report, peer_cert, spki) = (
                client.clone(),
                (*session.report).clone(),
                session.peer_cert.clone(),
                session.spki_sha256,
            );
            let report = tokio::task::spawn_blocking(move || {
                appraise(
                    owner.gpus(),
                    report,
                    &peer_cert,
                    &spki,
                    &owner.policy().gpu,
                    &evidence,
                )
            })
            .await
            .map_err(|e| ClientError::Setup(format!("the GPUs' appraisal did not finish: {e}")))?;
            let report = Arc::new(report);
            appraiser.remember(cert_hash, Arc::clone(&report), Instant::now());
            report
        }
    };
    if !report.accepted() {
        return Err(ClientError::Rejected(Box::new((*report).clone())));
    }
    session.report = report;
    Ok(())
}

/// `report` (the session's) with the GPU checks of the certificate `peer_cert` (key digest
/// `spki`) added.
fn appraise(
    appraiser: &GpuAppraiser,
    mut report: Report,
    peer_cert: &[u8],
    spki: &[u8; 32],
    policy: &tdx_core::gpu::GpuPolicy,
    evidence: &EvidenceJson,
) -> Report {
    let claimed = tdx_core::ratls::certificate_claims(peer_cert)
        .ok()
        .and_then(|c| c.gpu_evidence_sha256);
    let served = if tdx_core::encoding::hex(spki) != evidence.spki_sha256 {
        Err(
            "the served evidence belongs to another certificate (the server rotated it); reconnect"
                .to_string(),
        )
    } else {
        match &evidence.gpu_evidence {
            None => Err("the server serves no GPU evidence".to_string()),
            Some(v) => GpuEvidenceSet::from_json_value(v.clone()).map_err(|e| e.to_string()),
        }
    };
    appraise_into(
        &mut report,
        appraiser,
        policy,
        peer_cert,
        evidence,
        served.as_ref().map_err(Clone::clone),
        claimed,
        nonce_for_certificate(spki),
        tdx_core::verify::time::now_unix(),
    );
    report
}

/// The GPU checks of `evidence` (served by `session`'s server) over `nonce`, added to
/// `report`: for the certificate's GPUs and for a challenge batch's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn appraise_into(
    report: &mut Report,
    appraiser: &GpuAppraiser,
    policy: &tdx_core::gpu::GpuPolicy,
    peer_cert: &[u8],
    evidence: &EvidenceJson,
    set: Result<&GpuEvidenceSet, String>,
    claimed: Option<[u8; 32]>,
    nonce: [u8; 32],
    at: i64,
) {
    appraise_served_gpus(
        report,
        &appraiser.verifier,
        &appraiser.roots,
        policy,
        peer_cert,
        evidence.gpu_collateral.as_ref(),
        set,
        claimed,
        nonce,
        at,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_accepted_verdicts_are_kept_and_only_for_an_hour() {
        let a = GpuAppraiser::new(GpuRoots::nvidia().unwrap());
        let now = Instant::now();
        let rejected = Arc::new(crate::tests::report_with(&[("GPU count", false)]));
        a.remember([1; 32], rejected, now);
        assert!(a.cached(&[1; 32], now).is_none());
        let accepted = Arc::new(crate::tests::report_with(&[("GPU count", true)]));
        a.remember([2; 32], accepted, now);
        assert!(a.cached(&[2; 32], now + Duration::from_secs(60)).is_some());
        assert!(a.cached(&[2; 32], now + VERDICT_TTL).is_none());
    }
}
