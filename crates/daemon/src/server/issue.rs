//! Issuing the RA-TLS certificate, and keeping it fresh: re-issued before it expires, when
//! the collateral refreshes, and when RTMR3 changes. A failed re-issue keeps the previous
//! certificate serving until it expires, and says so in /readyz.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::collateral::CollateralProvider;
use super::gpus::{GpuAttester, measure_events};
use super::metrics::{Metrics, ReasonLabel};
use super::readiness::{Public, Readiness, Stage};
use super::state::{AppState, Served, ServedGpus};
use crate::audit::{AuditEvent, AuditLog, QuotePurpose};
use sha2::{Digest as _, Sha256};
use tdx_core::encoding::hex;
use tdx_core::gpu::nonce_for_certificate;
use tdx_core::measure::rtmr3_log::{parse_lines, replay_lines};
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

/// Why a certificate could not be issued. [`IssueError::public`] says which part failed, in
/// words a caller of /readyz may read; the text (`Display`) is the whole error, with the
/// TEE's configfs path, the PCCS's address or an audit file's name, for the agent's log, its
/// start-up error and the admin socket.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("key generation: {0}")]
    Key(String),
    /// The GPUs' `gpu` events could not be logged or extended into RTMR3.
    #[error("{0}")]
    GpuEvents(String),
    #[error("quote: {0}")]
    Quote(String),
    #[error("{}", quote_timeout_error(*.0))]
    QuoteTimeout(Duration),
    /// The audit log could not record the quote or the certificate.
    #[error("{0}; refusing to serve unlogged evidence")]
    Audit(String),
    #[error("{0}")]
    Collateral(String),
    /// The agent's own evidence fails its own policy.
    #[error("self-check: our own evidence fails our policy: {0}")]
    SelfCheck(String),
    /// Building the certificate or reading back our own quote failed.
    #[error("{0}")]
    Certificate(String),
}

impl IssueError {
    /// Which part failed, and where to look.
    pub fn public(&self) -> Public {
        match self {
            IssueError::Key(_) => Public::fixed("a new key could not be generated"),
            IssueError::GpuEvents(_) => {
                Public::fixed("the GPUs' state could not be measured into RTMR3")
            }
            IssueError::Quote(_) => Public::fixed("the TEE did not produce a quote"),
            IssueError::QuoteTimeout(t) => Public::composed(format!(
                "the TEE did not produce a quote within the quote timeout ({}s, tee.quote_timeout_secs)",
                t.as_secs()
            )),
            IssueError::Audit(_) => Public::fixed(
                "the audit log could not record it, and evidence is never served unlogged",
            ),
            IssueError::Collateral(_) => Public::fixed(
                "no collateral could be had for the quote (check collateral.pccs_url and the PCCS)",
            ),
            IssueError::SelfCheck(_) => {
                Public::fixed("the agent's own evidence fails its own policy")
            }
            IssueError::Certificate(_) => {
                Public::fixed("the agent failed while building the certificate")
            }
        }
    }
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
    pub async fn issue(&self, reason: &str) -> Result<Served, IssueError> {
        let key = ratls::generate_key().map_err(|e| IssueError::Key(e.to_string()))?;
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
            measure_events(&round.events, &mut log_guard, self.tee, self.audit)
                .await
                .map_err(IssueError::GpuEvents)?;
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
                    return Err(IssueError::Quote(e.to_string()));
                }
                Err(_) => {
                    self.metrics.count_quote("certificate", false, 0.0);
                    return Err(IssueError::QuoteTimeout(self.quote_timeout));
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
            .map_err(|e| IssueError::Audit(e.to_string()))?;

        let now = now_unix();
        let (collateral, provenance) = self
            .collateral
            .for_quote(&quote, now)
            .await
            .map_err(IssueError::Collateral)?;
        let prepared = collateral
            .clone()
            .prepare()
            .map_err(|e| IssueError::Collateral(format!("collateral: {e}")))?;
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
        .map_err(|e| IssueError::Certificate(format!("certificate: {e}")))?;

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
            return Err(IssueError::SelfCheck(self_check.summary()));
        }
        let not_after = time::OffsetDateTime::from_unix_timestamp(cert.not_after)
            .map_err(|e| IssueError::Certificate(format!("certificate notAfter: {e}")))?;
        self.audit
            .append(AuditEvent::certificate_rotated(
                reason,
                &cert.spki_sha256,
                not_after,
            ))
            .await
            .map_err(|e| IssueError::Audit(e.to_string()))?;
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
            .map_err(|e| IssueError::Certificate(format!("our own quote: {e}")))?;
        let gpu = match gpu_round {
            Some(round) => {
                if let Some(f) = &round.failure {
                    tracing::error!(failure = %f, "GPU attestation failed; not ready");
                }
                let collateral_json = serde_json::from_str(&round.collateral.to_bundle_json())
                    .map_err(|e| IssueError::Certificate(format!("GPU collateral bundle: {e}")))?;
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

/// Failed reads of RTMR3 in a row before Measured is withdrawn: one is a blip, several mean
/// the agent can no longer tell whether RTMR3 moved behind its back.
pub const RTMR3_READ_FAILURES_NOT_MEASURED: u32 = 3;

/// The drift check's reads of RTMR3 between re-issues, and how many failed in a row.
#[derive(Default)]
pub struct Rtmr3Reads {
    failures: AtomicU32,
    /// The last failure's text: logged again only when it changes, not every tick.
    last_error: std::sync::Mutex<Option<String>>,
}

impl Rtmr3Reads {
    pub fn failed(&self, error: &str, readiness: &Readiness) {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(error) {
            tracing::warn!(
                error,
                consecutive = n,
                "cannot read RTMR3 to compare it with the served certificate"
            );
            *last = Some(error.to_string());
        }
        drop(last);
        if n >= RTMR3_READ_FAILURES_NOT_MEASURED {
            if n == RTMR3_READ_FAILURES_NOT_MEASURED {
                tracing::error!(
                    error,
                    "RTMR3 unreadable {n} times in a row; withdrawing measured"
                );
            }
            // Without the running count: the log detail is logged whenever it changes, and
            // the count changes on every tick.
            readiness.set_public(
                Stage::Measured,
                false,
                Public::composed(format!(
                    "RTMR3 could not be read {RTMR3_READ_FAILURES_NOT_MEASURED} times in a row, so the agent cannot tell whether it changed without the agent; check the TEE's measurement files (tee.measurements_dir); see the agent's log"
                )),
                format!(
                    "RTMR3 could not be read {RTMR3_READ_FAILURES_NOT_MEASURED} or more times in a row (last: {error}), so the agent cannot tell whether it changed without the agent; check the TEE's measurement files (tee.measurements_dir)"
                ),
            );
        }
    }

    /// Record a good read (`moved`: RTMR3 differs from the served certificate's); true when
    /// Measured had been withdrawn for want of reads and must be judged again now.
    pub fn succeeded(&self, moved: bool, readiness: &Readiness) -> bool {
        let n = self.failures.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(after = n, moved, "RTMR3 can be read again");
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        let withdrawn = n >= RTMR3_READ_FAILURES_NOT_MEASURED;
        if withdrawn && moved {
            // The served evidence cannot be judged against a register that has moved on, and
            // the unreadable detail is no longer true: say what holds until a certificate for
            // the new value is issued (that re-issue judges it; if it fails, this stays).
            const MOVED: &str = "RTMR3 can be read again but no longer matches the served certificate's; measured is judged again when a certificate is issued for the new value (see certificate_issued)";
            readiness.set_public(Stage::Measured, false, Public::fixed(MOVED), MOVED);
        }
        withdrawn && !moved
    }
}

/// Mark the stages that issuing settles.
pub fn mark_issued(readiness: &Readiness, served: &Served) {
    if let Some(g) = &served.gpu {
        readiness.set_public(
            Stage::GpuAttested,
            g.round.failure.is_none(),
            gpu_public(&g.round),
            g.round.ready_detail(),
        );
    }
    let cert = format!("valid until {}", format_unix(served.cert.not_after));
    readiness.set_public(
        Stage::CertificateIssued,
        true,
        Public::composed(cert.clone()),
        cert,
    );
    let collateral = format!(
        "valid until {}",
        format_unix(served.collateral.window().next_update())
    );
    readiness.set_public(
        Stage::CollateralFresh,
        true,
        Public::composed(collateral.clone()),
        collateral,
    );
}

/// The GPU stage's public detail: the failing GPU's index and the name of the check it failed
/// (the agent's own vocabulary; `gpu_ok{index}` in /metrics shows the index too), not the
/// failure's text, which carries NVML's, the RIM service's or the OCSP responder's words and
/// the GPU's UUID.
fn gpu_public(round: &super::gpus::GpuRound) -> Public {
    if round.failure.is_none() {
        return Public::composed(format!("{} GPUs attested", round.gpus.len()));
    }
    if let Some(g) = round.gpus.iter().find(|g| !g.ok) {
        return Public::composed(format!(
            "gpu[{}]: the {} check failed; see the agent's log",
            g.index, g.check
        ));
    }
    // Every GPU listed passed, yet the round failed: fewer passed than gpu.required.
    if !round.gpus.is_empty() {
        return Public::composed(format!(
            "a required GPU is missing: {} found, {} required (gpu.required); see the agent's log",
            round.gpus.len(),
            round.required
        ));
    }
    // None listed: none found, or the round stopped before any GPU was looked at (the count
    // failed, a hung call blocks it, or the evidence was refused).
    Public::fixed(
        "no GPU was attested: none was found, or they could not be collected (gpu.required); see the agent's log",
    )
}

/// Why the served certificate must be replaced now, if it must.
async fn reason_to_reissue(state: &AppState, served: &Served, now: i64) -> Option<&'static str> {
    // Read first, whatever else is due: a run of failed reads must count even while every
    // tick re-issues for another reason (and fails, say for the same broken TEE).
    let rtmr3_moved = rtmr3_moved(state, served).await;
    let renew_at = served
        .cert
        .not_after
        .saturating_sub(i64::try_from(state.config.tls.renew_before_secs).unwrap_or(0));
    if now >= renew_at {
        return Some("expiry");
    }
    if rtmr3_moved {
        return Some("rtmr3-changed");
    }
    match state.collateral.for_quote(&served.quote, now).await {
        Ok((c, _)) if &c != served.collateral.raw() => Some("collateral-refresh"),
        Ok(_) => None,
        Err(e) => {
            let next = served.collateral.window().next_update();
            if now >= next {
                state.readiness.set_public(
                    Stage::CollateralFresh,
                    false,
                    Public::composed(format!(
                        "collateral expired at {} and none could be fetched; check the PCCS (collateral.pccs_url); see the agent's log",
                        format_unix(next)
                    )),
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

/// Whether the live RTMR3 differs from the served quote's. Only where registers can be read
/// without a quote: on kernels without the sysfs files RTMR3 cannot be extended either, so it
/// cannot change behind our back.
async fn rtmr3_moved(state: &AppState, served: &Served) -> bool {
    if !state.registers_readable_without_quote() {
        return false;
    }
    match state.tee.measurements().await {
        Ok(m) => {
            let moved = m.rtmr[3] != served.rtmr3;
            if state.rtmr3_reads.succeeded(moved, &state.readiness) {
                // Measured was withdrawn for want of reads, not for what they showed.
                check_measured(state, served).await;
            }
            moved
        }
        Err(e) => {
            state.rtmr3_reads.failed(&e.to_string(), &state.readiness);
            false
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
            let expired = format!(
                "the certificate expired at {}",
                format_unix(served.cert.not_after)
            );
            state.readiness.set_public(
                Stage::CertificateIssued,
                false,
                Public::composed(expired.clone()),
                expired,
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
/// `reason` is one of the agent's own words (`expiry`, `admin-rotate`, ...): /readyz shows it.
/// The error is the whole text, for the admin socket.
pub async fn reissue(state: &AppState, reason: &'static str) -> Result<(), String> {
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
            let until = format_unix(served.cert.not_after);
            state.readiness.set_public(
                Stage::CertificateIssued,
                false,
                Public::composed(format!(
                    "re-issue ({reason}) failed: {}; see the agent's log; the previous certificate serves until {until}",
                    e.public()
                )),
                format!(
                    "re-issue ({reason}) failed: {e}; the previous certificate serves until {until}"
                ),
            );
            Err(e.to_string())
        }
    }
}

/// The Measured stage: RTMR3 in our newest quote must be what the event log it was issued
/// with replays to. Anything else means RTMR3 moved behind the agent's back (or the log was
/// edited).
pub async fn check_measured(state: &AppState, served: &Served) {
    MeasuredCheck {
        readiness: &state.readiness,
        audit: &state.audit,
        rtmr3_log: &state.rtmr3_log,
        rtmr3_log_path: &state.rtmr3_log_path,
    }
    .check(&served.event_log, &served.rtmr3)
    .await;
}

/// What [`check_measured`] reads and sets, apart from the served evidence.
pub struct MeasuredCheck<'a> {
    pub readiness: &'a Readiness,
    pub audit: &'a AuditLog,
    pub rtmr3_log: &'a tokio::sync::Mutex<Rtmr3Log>,
    pub rtmr3_log_path: &'a std::path::Path,
}

impl MeasuredCheck<'_> {
    /// Judge a quote's `rtmr3` against `event_log`, the log snapshot taken with that quote
    /// under the log's lock. Not the live log: an admin extend may land between the quote
    /// and this check (while a re-issue waits for collateral), and the live log, one event
    /// ahead of the quote, would then read as RTMR3 moved without the agent.
    pub async fn check(&self, event_log: &str, rtmr3: &[u8; 48]) {
        let expected = parse_lines(event_log.lines(), 1)
            .map_err(|(line, detail)| format!("line {line}: {detail}"))
            .and_then(|lines| {
                Ok((
                    replay_lines(&lines).map_err(|e| e.to_string())?,
                    lines.len(),
                ))
            });
        // An extend that failed after its event was logged leaves the live log ahead of
        // RTMR3 whatever the snapshot says; the admin socket already said so, and a re-issue
        // whose snapshot predates that event must not report measured over it.
        let pending = self.rtmr3_log.lock().await.unextended;
        match (expected, pending) {
            (Ok(_), Some(seq)) => self.readiness.set_public(
                Stage::Measured,
                false,
                Public::composed(format!(
                    "event #{seq} of the RTMR3 event log was logged but its extend failed; the log no longer explains RTMR3 until a restart of the agent extends it; see the agent's log"
                )),
                format!(
                    "event #{seq} of the RTMR3 event log {} was logged but its extend failed; the log no longer explains RTMR3 until a restart extends it",
                    self.rtmr3_log_path.display()
                ),
            ),
            (Ok((e, events)), None) if &e == rtmr3 => {
                let matches = format!("RTMR3 matches the event log ({events} events)");
                self.readiness.set_public(
                    Stage::Measured,
                    true,
                    Public::composed(matches.clone()),
                    matches,
                );
            }
            (Ok((e, _)), None) => {
                let why = format!(
                    "RTMR3 is {} but the event log {} replays to {}: RTMR3 changed without the agent, refusing to report ready",
                    hex(rtmr3),
                    self.rtmr3_log_path.display(),
                    hex(&e)
                );
                if self.readiness.is_ok(Stage::Measured) {
                    let _ = self
                        .audit
                        .append(AuditEvent::notice("rtmr3_mismatch", &why))
                        .await;
                }
                tracing::error!("{why}");
                self.readiness.set_public(
                    Stage::Measured,
                    false,
                    Public::fixed(
                        "RTMR3 changed without the agent: it is not what the event log replays to; see the agent's log",
                    ),
                    why,
                );
            }
            (Err(e), _) => self.readiness.set_public(
                Stage::Measured,
                false,
                Public::fixed(
                    "the RTMR3 event log the certificate was issued with does not replay; see the agent's log",
                ),
                format!(
                    "RTMR3 event log {} as certified: {e}",
                    self.rtmr3_log_path.display()
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditOptions;
    use tdx_core::measure::rtmr3_log::{Event, replay};

    fn ev(n: u64) -> Event {
        Event {
            kind: "admin".into(),
            data: serde_json::json!({ "n": n }),
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        readiness: Readiness,
        audit: AuditLog,
        log: tokio::sync::Mutex<Rtmr3Log>,
        path: std::path::PathBuf,
    }

    impl Rig {
        async fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rtmr3-events.jsonl");
            let log = Rtmr3Log::open(&path, "boot").unwrap();
            let audit = AuditLog::open(dir.path().join("audit"), AuditOptions::default())
                .await
                .unwrap();
            Rig {
                _dir: dir,
                readiness: Readiness::new(false, false),
                audit,
                log: tokio::sync::Mutex::new(log),
                path,
            }
        }

        /// Whether Measured holds, and its log detail. Its public detail never names the
        /// log's path, whatever the outcome.
        async fn check(&self, event_log: &str, rtmr3: &[u8; 48]) -> (bool, String) {
            MeasuredCheck {
                readiness: &self.readiness,
                audit: &self.audit,
                rtmr3_log: &self.log,
                rtmr3_log_path: &self.path,
            }
            .check(event_log, rtmr3)
            .await;
            let s = self
                .readiness
                .snapshot()
                .into_iter()
                .find(|s| s.stage == Stage::Measured)
                .unwrap();
            let dir = self._dir.path().to_str().unwrap();
            assert!(
                !s.detail.as_str().contains(dir) && !s.detail.as_str().contains("rtmr3-events"),
                "the public detail names the log: {}",
                s.detail
            );
            (s.ok, s.log_detail)
        }
    }

    /// A re-issue's quote and log snapshot are taken together; an admin extend may land
    /// before the re-issue is judged (it waits for collateral in between). The quote is
    /// judged by its own snapshot, not by the live log one event ahead of it.
    #[tokio::test]
    async fn a_quote_is_judged_by_the_log_it_was_made_with() {
        let rig = Rig::new().await;
        let d1 = rig.log.lock().await.append(ev(1)).unwrap();
        let snapshot = rig.log.lock().await.jsonl();
        let quoted = replay([&d1]);
        // The admin extend that lands meanwhile (logged and extended).
        rig.log.lock().await.append(ev(2)).unwrap();
        let (ok, detail) = rig.check(&snapshot, &quoted).await;
        assert!(ok, "{detail}");
        assert!(detail.contains("1 events"), "{detail}");
    }

    #[tokio::test]
    async fn a_quote_its_log_does_not_explain_is_not_measured() {
        let rig = Rig::new().await;
        let d1 = rig.log.lock().await.append(ev(1)).unwrap();
        let snapshot = rig.log.lock().await.jsonl();
        // RTMR3 extended once more by someone else.
        let (ok, detail) = rig.check(&snapshot, &replay([&d1, &d1])).await;
        assert!(!ok);
        assert!(detail.contains("changed without the agent"), "{detail}");
        // An altered snapshot is refused, not replayed.
        let edited = snapshot.replace("\"n\":1", "\"n\":7");
        let (ok, detail) = rig.check(&edited, &replay([&d1])).await;
        assert!(!ok);
        assert!(detail.contains("as certified"), "{detail}");
    }

    /// An extend that failed after its event was logged keeps Measured withdrawn, even for a
    /// re-issue whose snapshot predates that event.
    #[tokio::test]
    async fn a_pending_extend_keeps_measured_withdrawn() {
        let rig = Rig::new().await;
        let d1 = rig.log.lock().await.append(ev(1)).unwrap();
        let snapshot = rig.log.lock().await.jsonl();
        {
            let mut log = rig.log.lock().await;
            log.append(ev(2)).unwrap();
            log.unextended = Some(2);
        }
        let (ok, detail) = rig.check(&snapshot, &replay([&d1])).await;
        assert!(!ok);
        assert!(
            detail.contains("event #2") && detail.contains("restart"),
            "{detail}"
        );
    }

    /// What /readyz says of a failed issue names the part that failed, never the error's own
    /// words (the configfs path, the PCCS's address, an audit file's name).
    #[test]
    fn a_failed_issue_tells_callers_which_part_failed_and_the_log_the_rest() {
        let secret = "/sys/kernel/config/tsm/report/x/outblob at http://10.0.0.9:8081: EIO";
        for e in [
            IssueError::Key(secret.into()),
            IssueError::GpuEvents(secret.into()),
            IssueError::Quote(secret.into()),
            IssueError::QuoteTimeout(Duration::from_secs(30)),
            IssueError::Audit(secret.into()),
            IssueError::Collateral(secret.into()),
            IssueError::SelfCheck(secret.into()),
            IssueError::Certificate(secret.into()),
        ] {
            let public = e.public();
            for part in ["/sys/kernel", "10.0.0.9", "EIO"] {
                assert!(!public.as_str().contains(part), "{e:?}: {public}");
            }
            if !matches!(e, IssueError::QuoteTimeout(_)) {
                assert!(e.to_string().contains(secret), "{e}");
            }
        }
        let t = IssueError::QuoteTimeout(Duration::from_secs(30));
        assert!(
            t.public().as_str().contains("quote timeout (30s"),
            "{}",
            t.public()
        );
        assert_eq!(t.to_string(), quote_timeout_error(Duration::from_secs(30)));
    }

    /// The GPU stage's public detail names the failing GPU and its check, not the failure's
    /// text (NVML's or the OCSP responder's words, the GPU's UUID).
    #[test]
    fn the_gpu_stage_names_the_gpu_and_check_not_the_failure() {
        use super::super::gpus::{GpuRound, GpuStatus};
        let status = |index, ok, check: &str| GpuStatus {
            index,
            uuid: Some("GPU-1234".into()),
            ok,
            check: check.into(),
            detail: "OCSP http://ocsp.example:80: connection refused".into(),
        };
        let round = |gpus: Vec<GpuStatus>, failure: Option<&str>| GpuRound {
            evidence: tdx_core::gpu::GpuEvidenceSet::default(),
            collateral: tdx_core::gpu::GpuCollateral::default(),
            events: Vec::new(),
            gpus,
            failure: failure.map(str::to_string),
            required: 2,
        };
        let ok = round(
            vec![status(0, true, "attested"), status(1, true, "attested")],
            None,
        );
        assert_eq!(gpu_public(&ok).as_str(), "2 GPUs attested");
        let failed = round(
            vec![
                status(0, true, "attested"),
                status(1, false, "GPU collateral"),
            ],
            Some(
                "gpu[1] (GPU-1234): GPU collateral: OCSP http://ocsp.example:80: connection refused",
            ),
        );
        let public = gpu_public(&failed);
        assert!(
            public
                .as_str()
                .starts_with("gpu[1]: the GPU collateral check failed"),
            "{public}"
        );
        for part in ["GPU-1234", "ocsp.example", "refused"] {
            assert!(!public.as_str().contains(part), "{public}");
        }
        let missing = round(
            vec![status(0, true, "attested")],
            Some("a required GPU is missing: 1 found, 2 required (gpu.required)"),
        );
        assert!(
            gpu_public(&missing)
                .as_str()
                .starts_with("a required GPU is missing: 1 found, 2 required"),
            "{}",
            gpu_public(&missing)
        );
        let uncounted = round(
            Vec::new(),
            Some("nvml: nvmlDeviceGetCount did not return within 2 s"),
        );
        let public = gpu_public(&uncounted);
        assert!(
            public.as_str().contains("gpu.required") && !public.as_str().contains("nvml"),
            "{public}"
        );
    }

    #[test]
    fn measured_is_withdrawn_only_after_several_failed_reads_and_comes_back() {
        let readiness = Readiness::new(false, false);
        readiness.set(Stage::Measured, true, "ok");
        let reads = Rtmr3Reads::default();
        for _ in 1..RTMR3_READ_FAILURES_NOT_MEASURED {
            reads.failed("measurements: EIO", &readiness);
            assert!(
                readiness.is_ok(Stage::Measured),
                "one failed read is a blip"
            );
        }
        reads.failed("measurements: EIO", &readiness);
        assert!(!readiness.is_ok(Stage::Measured));
        let missing = readiness.first_missing().unwrap();
        let detail = missing.log_detail;
        assert!(
            detail.contains("could not be read 3 or more times") && detail.contains("EIO"),
            "{detail}"
        );
        // The TEE's words are for the log; callers are told what to check.
        let public = missing.detail.as_str();
        assert!(
            public.contains("could not be read 3 times") && !public.contains("EIO"),
            "{public}"
        );
        assert!(
            reads.succeeded(false, &readiness),
            "measured must be looked at again"
        );
        assert!(!reads.succeeded(false, &readiness), "once");
        // A failure after a success counts from one again.
        reads.failed("measurements: EIO", &readiness);
        assert!(!reads.succeeded(false, &readiness));
    }

    /// Reads that come back showing RTMR3 moved leave Measured withdrawn (the re-issue for
    /// the new value judges it), but not with the stale "could not be read" detail, which
    /// would stay if that re-issue failed.
    #[test]
    fn a_read_that_comes_back_moved_replaces_the_unreadable_detail() {
        let readiness = Readiness::new(false, false);
        readiness.set(Stage::Measured, true, "ok");
        let reads = Rtmr3Reads::default();
        for _ in 0..RTMR3_READ_FAILURES_NOT_MEASURED {
            reads.failed("measurements: EIO", &readiness);
        }
        assert!(
            !reads.succeeded(true, &readiness),
            "the served evidence is not judged against a moved register"
        );
        assert!(!readiness.is_ok(Stage::Measured));
        let missing = readiness.first_missing().unwrap();
        for detail in [missing.detail.as_str(), missing.log_detail.as_str()] {
            assert!(
                !detail.contains("could not be read") && detail.contains("no longer matches"),
                "{detail}"
            );
        }
    }
}
