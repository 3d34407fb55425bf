//! Issuing the RA-TLS certificate, and keeping it fresh: re-issued before it expires, when
//! the collateral refreshes, and when RTMR3 changes. A failed re-issue keeps the previous
//! certificate serving until it expires, and says so in /readyz.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::collateral::CollateralProvider;
use super::gpus::{GpuAttester, measure_events};
use super::metrics::{Metrics, ReasonLabel};
use super::readiness::{Readiness, Stage};
use super::state::{AppState, Served, ServedGpus};
use crate::audit::{AuditEvent, AuditLog, QuotePurpose};
use sha2::{Digest as _, Sha256};
use tdx_core::encoding::hex;
use tdx_core::gpu::nonce_for_certificate;
use tdx_core::ratls::{self, Validity};
use tdx_core::verify::time::{format_unix, now_unix};
use tdx_core::verify::{Expectations, Verifier, policy::Policy};
use tdx_tee::TeeHandle;
use tdx_tee::rtmr3_log::Rtmr3Log;

/// How long a quote may take before it counts as a failed TEE (`tee.quote_timeout_secs`).
pub fn quote_timeout(config: &crate::config::Config) -> Duration {
    Duration::from_secs(config.tee.quote_timeout_secs)
}

/// The error for a quote that did not come back in time; names the setting so an operator
/// knows which knob this is.
pub fn quote_timeout_error(timeout: Duration) -> String {
    format!(
        "quote: no answer from the TEE within the quote timeout ({}s, tee.quote_timeout_secs)",
        timeout.as_secs()
    )
}

/// What issuing needs, without the state that exists only once something is served.
pub struct Issuer<'a> {
    pub tee: &'a TeeHandle,
    pub collateral: &'a CollateralProvider,
    pub verifier: &'a Verifier,
    pub policy: &'a Policy,
    pub audit: &'a AuditLog,
    pub metrics: &'a Metrics,
    pub lifetime_secs: u64,
    pub sans: &'a [String],
    /// The RTMR3 event log; the certificate carries it so clients can appraise the events.
    pub rtmr3_log: &'a tokio::sync::Mutex<Rtmr3Log>,
    /// A quote slower than this fails the issue (the previous certificate keeps serving).
    pub quote_timeout: Duration,
    /// The GPUs to attest with the certificate, when `[gpu]` requires any.
    pub gpus: Option<&'a GpuAttester>,
}

impl Issuer<'_> {
    /// A new key, a quote binding it, collateral, the certificate, and the agent's appraisal
    /// of its own evidence. Refuses (never serves) evidence its own policy rejects.
    pub async fn issue(&self, reason: &str) -> Result<Served, String> {
        let key = ratls::generate_key().map_err(|e| format!("key generation: {e}"))?;
        // The GPUs' reports are made over a nonce only this key's certificate can claim.
        let gpu_round = match self.gpus {
            Some(g) => {
                let spki: [u8; 32] = Sha256::digest(ratls::spki_der(&key)).into();
                let round = g
                    .attest(nonce_for_certificate(&spki), now_unix(), self.metrics)
                    .await;
                self.metrics
                    .record_gpus(round.gpus.iter().map(|g| (g.index, g.ok)));
                Some(round)
            }
            None => None,
        };
        // Held until the quote is made: no extend can slip between the log we certify and
        // the RTMR3 the quote shows. RTMR3 is read from the quote itself below.
        let mut log_guard = self.rtmr3_log.lock().await;
        if let Some(round) = &gpu_round {
            measure_events(&round.events, &mut log_guard, self.tee, self.audit).await?;
        }
        let event_log = log_guard.jsonl();
        let gpu_digest = gpu_round
            .as_ref()
            .filter(|r| !r.evidence.is_empty())
            .map(|r| r.evidence.digest());
        let (claims, report_data) =
            ratls::claims_with_gpu_evidence(&key, event_log.as_bytes(), gpu_digest);

        let started = Instant::now();
        let quote =
            match tokio::time::timeout(self.quote_timeout, self.tee.quote(report_data)).await {
                Ok(Ok(q)) => q,
                Ok(Err(e)) => {
                    self.metrics.count_quote("certificate", false, 0.0);
                    return Err(format!("quote: {e}"));
                }
                Err(_) => {
                    self.metrics.count_quote("certificate", false, 0.0);
                    return Err(quote_timeout_error(self.quote_timeout));
                }
            };
        drop(log_guard);
        self.metrics
            .count_quote("certificate", true, started.elapsed().as_secs_f64());
        // Logged before anything is served: no evidence leaves the agent unlogged.
        self.audit
            .append(AuditEvent::quote_issued(
                QuotePurpose::Certificate,
                &report_data,
                None,
            ))
            .await
            .map_err(|e| format!("{e}; refusing to serve unlogged evidence"))?;

        let now = now_unix();
        let (collateral, provenance) = self.collateral.for_quote(&quote, now).await?;
        let prepared = collateral
            .clone()
            .prepare()
            .map_err(|e| format!("collateral: {e}"))?;
        let next_update = prepared.window().next_update();
        let lifetime = i64::try_from(self.lifetime_secs).unwrap_or(86_400);
        let cert = ratls::build_certificate(
            &key,
            &claims,
            &quote,
            Some(&collateral),
            Validity::starting_at(now - 60, lifetime),
            self.sans,
        )
        .map_err(|e| format!("certificate: {e}"))?;

        let mut self_check = self.verifier.appraise(
            &quote,
            &prepared,
            now,
            self.policy,
            &Expectations {
                report_data: Some(report_data),
            },
        );
        tdx_core::verify::events::appraise_events(
            &mut self_check,
            Some(&event_log),
            &self.policy.rtmr3_events,
        );
        self.metrics.count(
            &self.metrics.verifications,
            if self_check.accepted() {
                "accepted"
            } else {
                "rejected"
            },
        );
        if !self_check.accepted() {
            let _ = self
                .audit
                .append(AuditEvent::verification_result(
                    "self",
                    "rejected",
                    self_check.failures().next().map(|c| c.name.as_str()),
                ))
                .await;
            return Err(format!(
                "self-check: our own evidence fails our policy: {}",
                self_check.summary()
            ));
        }
        let not_after = time::OffsetDateTime::from_unix_timestamp(cert.not_after)
            .map_err(|e| format!("certificate notAfter: {e}"))?;
        self.audit
            .append(AuditEvent::certificate_rotated(
                reason,
                &cert.spki_sha256,
                not_after,
            ))
            .await
            .map_err(|e| format!("{e}; refusing to serve unlogged evidence"))?;
        self.metrics
            .cert_rotations
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
        self.metrics.cert_not_after.set(cert.not_after);
        self.metrics.collateral_next_update.set(next_update);
        if let Some(s) = &self_check.tcb_status() {
            self.metrics.set_tcb_status(s);
        }
        tracing::info!(
            reason,
            spki_sha256 = %hex(&cert.spki_sha256),
            not_after = %format_unix(cert.not_after),
            collateral = %provenance,
            "RA-TLS certificate issued"
        );
        let rtmr3 = tdx_core::quote::parse_head_only(&quote)
            .map(|(_, b)| b.rtmr[3])
            .map_err(|e| format!("our own quote: {e}"))?;
        let gpu = match gpu_round {
            Some(round) => {
                if let Some(f) = &round.failure {
                    tracing::error!(failure = %f, "GPU attestation failed; not ready");
                }
                let collateral_json = serde_json::from_str(&round.collateral.to_bundle_json())
                    .map_err(|e| format!("GPU collateral bundle: {e}"))?;
                Some(ServedGpus {
                    evidence_json: round.evidence.to_json_value(),
                    collateral_json,
                    round,
                })
            }
            None => None,
        };
        Ok(Served {
            collateral_json: collateral.to_bundle_json(),
            cert,
            quote,
            collateral: prepared,
            rtmr3,
            event_log,
            self_check,
            issued_at: now,
            gpu,
        })
    }
}

/// Mark the stages that issuing settles.
pub fn mark_issued(readiness: &Readiness, served: &Served) {
    if let Some(g) = &served.gpu {
        readiness.set(
            Stage::GpuAttested,
            g.round.failure.is_none(),
            g.round.ready_detail(),
        );
    }
    readiness.set(
        Stage::CertificateIssued,
        true,
        format!("valid until {}", format_unix(served.cert.not_after)),
    );
    readiness.set(
        Stage::CollateralFresh,
        true,
        format!(
            "valid until {}",
            format_unix(served.collateral.window().next_update())
        ),
    );
}

/// Why the served certificate must be replaced now, if it must.
async fn reason_to_reissue(state: &AppState, served: &Served, now: i64) -> Option<&'static str> {
    let renew_at = served
        .cert
        .not_after
        .saturating_sub(i64::try_from(state.config.tls.renew_before_secs).unwrap_or(0));
    if now >= renew_at {
        return Some("expiry");
    }
    // Only where registers can be read without a quote: on kernels without the sysfs files
    // RTMR3 cannot be extended either, so it cannot change behind our back.
    if state.registers_readable_without_quote()
        && let Ok(m) = state.tee.measurements().await
        && m.rtmr[3] != served.rtmr3
    {
        return Some("rtmr3-changed");
    }
    match state.collateral.for_quote(&served.quote, now).await {
        Ok((c, _)) if &c != served.collateral.raw() => Some("collateral-refresh"),
        Ok(_) => None,
        Err(e) => {
            let next = served.collateral.window().next_update();
            if now >= next {
                state.readiness.set(
                    Stage::CollateralFresh,
                    false,
                    format!(
                        "collateral expired at {} and none could be fetched: {e}",
                        format_unix(next)
                    ),
                );
            } else {
                tracing::warn!(error = %e, "collateral refresh failed; serving the current collateral until it expires");
            }
            None
        }
    }
}

/// Whether the GPUs now differ from what the served certificate commits to (a GPU failed,
/// recovered, or changed its measured state), collected over the served key's nonce. Runs
/// at most every `gpu.recheck_secs`.
async fn gpus_changed(state: &AppState, served: &Served, now: i64) -> bool {
    let (Some(attester), Some(gpu)) = (&state.gpus, &served.gpu) else {
        return false;
    };
    let last = state
        .gpu_checked_at
        .load(std::sync::atomic::Ordering::Relaxed);
    let due = u64::try_from(now - last).unwrap_or(0) >= attester.recheck.as_secs();
    if !due {
        return false;
    }
    state
        .gpu_checked_at
        .store(now, std::sync::atomic::Ordering::Relaxed);
    let _one_at_a_time = state.issuing.lock().await;
    let round = attester
        .attest(
            nonce_for_certificate(&served.cert.spki_sha256),
            now,
            &state.metrics,
        )
        .await;
    state
        .metrics
        .record_gpus(round.gpus.iter().map(|g| (g.index, g.ok)));
    let changed = round.outcome() != gpu.round.outcome();
    if changed {
        tracing::warn!(now = %round.ready_detail(), "the GPUs changed; re-issuing the certificate");
    }
    changed
}

/// Keep the certificate fresh until `shutdown`.
pub async fn maintain(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let served = state.served();
        // Check often enough for short (test) lifetimes, rarely enough to cost nothing.
        let cert_life = served.cert.not_after - served.cert.not_before;
        let w = served.collateral.window();
        let collateral_life = w.next_update() - w.not_before();
        let tick = (cert_life.min(collateral_life) / 20).clamp(1, 30);
        let mut tick = Duration::from_secs(u64::try_from(tick).unwrap_or(30));
        if let Some(g) = &state.gpus {
            tick = tick.min(g.recheck);
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        let now = now_unix();
        let served = state.served();
        if now >= served.cert.not_after {
            state.readiness.set(
                Stage::CertificateIssued,
                false,
                format!(
                    "the certificate expired at {}",
                    format_unix(served.cert.not_after)
                ),
            );
        }
        let mut reason = reason_to_reissue(&state, &served, now).await;
        if reason.is_none() && gpus_changed(&state, &served, now).await {
            reason = Some("gpu-changed");
        }
        let Some(reason) = reason else {
            continue;
        };
        let _ = reissue(&state, reason).await;
    }
}

/// Issue a new certificate and serve it; on failure keep the old one and say so in /readyz.
pub async fn reissue(state: &AppState, reason: &str) -> Result<(), String> {
    let _one_at_a_time = state.issuing.lock().await;
    let served = state.served();
    let issuer = Issuer {
        tee: &state.tee,
        collateral: &state.collateral,
        verifier: &state.verifier,
        policy: &state.policy,
        audit: &state.audit,
        metrics: &state.metrics,
        lifetime_secs: state.config.tls.cert_lifetime_secs,
        sans: &state.config.tls.subject_alt_names,
        rtmr3_log: &state.rtmr3_log,
        quote_timeout: quote_timeout(&state.config),
        gpus: state.gpus.as_deref(),
    };
    match issuer.issue(reason).await {
        Ok(next) => {
            mark_issued(&state.readiness, &next);
            check_measured(state, &next).await;
            state.replace(next);
            Ok(())
        }
        Err(e) => {
            tracing::error!(reason, error = %e, "certificate re-issue failed");
            state.readiness.set(
                Stage::CertificateIssued,
                false,
                format!(
                    "re-issue ({reason}) failed: {e}; the previous certificate serves until {}",
                    format_unix(served.cert.not_after)
                ),
            );
            Err(e)
        }
    }
}

/// The Measured stage: RTMR3 in our newest quote must be what the event log replays to.
/// Anything else means RTMR3 moved behind the agent's back (or the log was edited).
pub async fn check_measured(state: &AppState, served: &Served) {
    let expected = state.rtmr3_log.lock().await.expected_rtmr3();
    match expected {
        Ok(e) if e == served.rtmr3 => {
            state.readiness.set(
                Stage::Measured,
                true,
                format!(
                    "RTMR3 matches the event log ({} events)",
                    state.rtmr3_log.lock().await.lines.len()
                ),
            );
        }
        Ok(e) => {
            let why = format!(
                "RTMR3 is {} but the event log {} replays to {}: RTMR3 changed without the agent, refusing to report ready",
                hex(&served.rtmr3),
                state.rtmr3_log_path.display(),
                hex(&e)
            );
            if state.readiness.is_ok(Stage::Measured) {
                let _ = state
                    .audit
                    .append(AuditEvent::notice("rtmr3_mismatch", &why))
                    .await;
            }
            tracing::error!("{why}");
            state.readiness.set(Stage::Measured, false, why);
        }
        Err(e) => state
            .readiness
            .set(Stage::Measured, false, format!("RTMR3 event log: {e}")),
    }
}
