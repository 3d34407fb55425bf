//! The runtime measurements made before the agent may report ready (docs/design.md §7): its config
//! and policy, the model manifest and the vLLM command line, each logged (fsynced) and then
//! extended into RTMR3. A restart in the same boot replays the log instead of extending again,
//! and first repairs what a crash part-way through an extend left (docs/formats.md §11,
//! "Crash recovery").

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use tdx_core::encoding::hex;
use tdx_core::measure::rtmr3_log::Event;
use tdx_tee::rtmr3_log::{Recovery, Rtmr3Log};
use tdx_tee::{Rtmr, TeeHandle};

use super::measure::{MeasureError, log_then_extend};

pub const EVENT_AGENT_CONFIG: &str = "agent-config";
pub const EVENT_MODEL: &str = "model";
pub const EVENT_VLLM_CMDLINE: &str = "vllm-cmdline";

#[derive(Debug, thiserror::Error)]
pub enum StartupMeasureError {
    #[error("measuring the configuration: {0}")]
    Config(String),
    #[error("measuring the model directory {dir}: {detail}")]
    Model { dir: PathBuf, detail: String },
    #[error("reading RTMR3: {0}")]
    ReadRtmr(String),
    #[error(
        "RTMR3 is {live} but the event log {log} replays to {expected}: RTMR3 changed without the agent or the log was altered; refusing to serve (a reboot of the TD starts both afresh)"
    )]
    Mismatch {
        live: String,
        expected: String,
        log: PathBuf,
    },
    #[error(
        "this boot already measured another {kind:?} (event #{seq}: {logged}, now {planned}); RTMR3 cannot be rolled back, so the changed configuration or model needs a reboot of the TD"
    )]
    Changed {
        seq: u64,
        kind: String,
        logged: String,
        planned: String,
    },
    #[error("RTMR3 event log {log}: {detail}; nothing more was extended")]
    Log { log: PathBuf, detail: String },
    #[error(
        "extending RTMR3 with {kind:?} failed after it was logged: {detail}; refusing to serve"
    )]
    Extend { kind: String, detail: String },
    #[error("audit log: {0}")]
    Audit(String),
}

/// The events this configuration calls for, in order. Hashing the model is blocking work and
/// runs on the blocking pool; systemd is told we are still starting while it runs.
pub async fn plan(config: &Config, policy_bytes: &[u8]) -> Result<Vec<Event>, StartupMeasureError> {
    let config_json =
        serde_json::to_value(config).map_err(|e| StartupMeasureError::Config(e.to_string()))?;
    let canonical = tdx_core::measure::jcs::canonicalize(&config_json)
        .map_err(|e| StartupMeasureError::Config(e.to_string()))?;
    let mut events = vec![Event {
        kind: EVENT_AGENT_CONFIG.into(),
        data: json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config_sha256": hex(&Sha256::digest(canonical.as_bytes())),
            "policy_sha256": hex(&Sha256::digest(policy_bytes)),
            // What the configuration hash hides from a client that does not pin it: the
            // switches that weaken this agent's promises. Always present, so a policy can pin
            // `insecure = []`.
            "insecure": config
                .insecure_settings()
                .into_iter()
                .map(|(switch, _)| switch)
                .collect::<Vec<_>>(),
        }),
    }];
    if let Some(dir) = &config.model.dir {
        let manifest = hash_model(dir.clone()).await?;
        events.push(Event {
            kind: EVENT_MODEL.into(),
            data: json!({
                "manifest_sha256": hex(&manifest.digest()),
                "files": manifest.files.len(),
                "bytes": manifest.total_bytes,
            }),
        });
    }
    if !config.model.vllm_cmdline.is_empty() {
        events.push(Event {
            kind: EVENT_VLLM_CMDLINE.into(),
            data: json!({ "argv": config.model.vllm_cmdline }),
        });
    }
    Ok(events)
}

async fn hash_model(
    dir: PathBuf,
) -> Result<tdx_core::measure::model::Manifest, StartupMeasureError> {
    let started = std::time::Instant::now();
    let job = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || tdx_core::measure::model::manifest(&dir))
    };
    tokio::pin!(job);
    // A 140 GB model takes minutes: keep systemd's start timeout from running out meanwhile.
    let manifest = loop {
        super::systemd::notify(&format!(
            "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=measuring the model in {}",
            dir.display()
        ));
        tokio::select! {
            r = &mut job => break r,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    };
    let manifest = manifest
        .map_err(|e| StartupMeasureError::Model {
            dir: dir.clone(),
            detail: e.to_string(),
        })?
        .map_err(|e| StartupMeasureError::Model {
            dir: dir.clone(),
            detail: e.to_string(),
        })?;
    tracing::info!(
        dir = %dir.display(),
        files = manifest.files.len(),
        bytes = manifest.total_bytes,
        manifest_sha256 = %hex(&manifest.digest()),
        seconds = started.elapsed().as_secs_f64(),
        "model measured"
    );
    Ok(manifest)
}

/// Bring RTMR3 to the planned events: extend them on a fresh boot, or check that this boot
/// already did. Anything that does not add up is refused, audited and explained.
pub async fn apply(
    planned: Vec<Event>,
    tee: &TeeHandle,
    log: &tokio::sync::Mutex<Rtmr3Log>,
    log_path: &std::path::Path,
    audit: &AuditLog,
) -> Result<(), StartupMeasureError> {
    let result = apply_inner(planned, tee, log, log_path, audit).await;
    if let Err(e) = &result {
        let _ = audit
            .append(AuditEvent::notice(
                "startup_measurement_refused",
                &e.to_string(),
            ))
            .await;
    }
    result
}

async fn apply_inner(
    planned: Vec<Event>,
    tee: &TeeHandle,
    log: &tokio::sync::Mutex<Rtmr3Log>,
    log_path: &std::path::Path,
    audit: &AuditLog,
) -> Result<(), StartupMeasureError> {
    let mut log = log.lock().await;
    let log_err = |detail: String| StartupMeasureError::Log {
        log: log_path.to_path_buf(),
        detail,
    };
    if let Some(torn) = log.dropped_torn_line.take() {
        // A write cut short is never extended (the extend follows the fsync): nothing to undo.
        tracing::warn!(
            log = %log_path.display(),
            torn = %torn,
            "RTMR3 event log ended in a half-written line (the agent was stopped while writing it); cut it off"
        );
        audit
            .append(AuditEvent::notice(
                "rtmr3_log_torn_line_dropped",
                &format!("{}: {torn}", log_path.display()),
            ))
            .await
            .map_err(|e| StartupMeasureError::Audit(e.to_string()))?;
    }
    let live = tee
        .measurements()
        .await
        .map_err(|e| StartupMeasureError::ReadRtmr(e.to_string()))?
        .rtmr[3];
    match log.recovery(&live).map_err(|e| log_err(e.to_string()))? {
        Recovery::Replays => {}
        Recovery::ExtendLast { seq, kind, digest } => {
            // The agent stopped between logging this event and extending it. The log is the
            // record of intent and clients read it: extending now (once: afterwards the log
            // replays) makes RTMR3 match it again. Audited first, as every extend is
            // (server/measure.rs): the record may already be there if the agent stopped
            // after writing it, and a second one naming the same line is harmless, while an
            // extend without one could never be recorded later.
            audit
                .append(AuditEvent::rtmr3_extended(seq, &digest, &kind))
                .await
                .map_err(|e| {
                    StartupMeasureError::Audit(format!(
                        "{e}; event #{seq} of the RTMR3 event log stays logged and unextended until a start can record it"
                    ))
                })?;
            tee.extend_rtmr(Rtmr::R3, digest)
                .await
                .map_err(|e| StartupMeasureError::Extend {
                    kind: kind.clone(),
                    detail: e.to_string(),
                })?;
            tracing::warn!(
                seq,
                event = %kind,
                digest = %hex(&digest),
                "RTMR3 event log ended in an event that was logged but not extended (the agent stopped in between); extended it now"
            );
        }
        Recovery::Mismatch { expected } => {
            return Err(StartupMeasureError::Mismatch {
                live: hex(&live),
                expected: hex(&expected),
                log: log_path.to_path_buf(),
            });
        }
    }
    // The log now explains RTMR3; it must begin with what this configuration measures. A
    // log that stops short of the plan is a startup measurement cut off by a crash (the
    // agent-config event pins the configuration that planned the rest): go on from there.
    let mut done = 0;
    for (i, event) in planned.iter().enumerate() {
        let Some(line) = log.lines.get(i) else {
            break;
        };
        if &line.event != event {
            return Err(StartupMeasureError::Changed {
                seq: line.seq,
                kind: event.kind.clone(),
                logged: format!("{} {}", line.event.kind, line.event.data),
                planned: event.data.to_string(),
            });
        }
        done = i + 1;
    }
    if done > 0 {
        tracing::info!(
            events = log.lines.len(),
            "RTMR3 already holds this boot's measurements (event log replayed); not extending them again"
        );
    }
    for event in planned.into_iter().skip(done) {
        let kind = event.kind.clone();
        let measured = log_then_extend(&mut log, tee, audit, event)
            .await
            .map_err(|e| match e {
                MeasureError::Log(e) => log_err(e.to_string()),
                e @ MeasureError::Pending { .. } => log_err(e.to_string()),
                e @ MeasureError::Audit { .. } => StartupMeasureError::Audit(e.to_string()),
                MeasureError::Extend(e) => StartupMeasureError::Extend {
                    kind: kind.clone(),
                    detail: e.to_string(),
                },
            })?;
        tracing::info!(event = %kind, digest = %hex(&measured.digest), "RTMR3 extended");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tdx_tee::{Measurements, ReportData, Sha384, Tee, TeeError, TeeKind};

    /// RTMR3 as the TDX module keeps it: the extend fold, and a count of extends.
    struct Registers {
        rtmr3: Mutex<([u8; 48], u32)>,
    }

    impl Tee for Registers {
        fn kind(&self) -> TeeKind {
            TeeKind::Simulated
        }
        fn quote(&self, _: &ReportData) -> Result<Vec<u8>, TeeError> {
            // Startup measurement never quotes.
            Err(TeeError::QuoteFailed {
                path: PathBuf::from("no-quotes"),
            })
        }
        fn measurements(&self) -> Result<Measurements, TeeError> {
            let (r3, _) = *self.rtmr3.lock().unwrap();
            Ok(Measurements {
                mrtd: [0; 48],
                rtmr: [[0; 48], [0; 48], [0; 48], r3],
                mrconfigid: [0; 48],
                mrowner: [0; 48],
                mrownerconfig: [0; 48],
            })
        }
        fn extend_rtmr(&self, rtmr: Rtmr, digest: &Sha384) -> Result<(), TeeError> {
            assert_eq!(rtmr, Rtmr::R3);
            let mut g = self.rtmr3.lock().unwrap();
            g.0 = replay_from(g.0, digest);
            g.1 += 1;
            Ok(())
        }
        fn boot_event_log(&self) -> Result<Vec<u8>, TeeError> {
            Ok(Vec::new())
        }
    }

    fn replay_from(r: [u8; 48], d: &[u8; 48]) -> [u8; 48] {
        use sha2::Sha384;
        let mut h = Sha384::new();
        h.update(r);
        h.update(d);
        h.finalize().into()
    }

    fn ev(kind: &str, n: u64) -> Event {
        Event {
            kind: kind.into(),
            data: json!({ "n": n }),
        }
    }

    struct Rig {
        dir: tempfile::TempDir,
        regs: Arc<Registers>,
        tee: TeeHandle,
        audit: AuditLog,
    }

    impl Rig {
        /// This rig's audit log with its writer gone, as on a full disk: every append fails.
        async fn unwritable_audit(&self) -> AuditLog {
            let audit = AuditLog::open(&self.dir.path().join("audit"), Default::default())
                .await
                .unwrap();
            audit.close().await.unwrap();
            audit
        }

        async fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let regs = Arc::new(Registers {
                rtmr3: Mutex::new(([0; 48], 0)),
            });
            let tee = TeeHandle::new(regs.clone());
            let audit = AuditLog::open(&dir.path().join("audit"), Default::default())
                .await
                .unwrap();
            Rig {
                dir,
                regs,
                tee,
                audit,
            }
        }

        fn log_path(&self) -> PathBuf {
            self.dir.path().join("rtmr3.jsonl")
        }

        fn log(&self) -> Rtmr3Log {
            Rtmr3Log::open(&self.log_path(), "boot").unwrap()
        }

        /// Start once: open the log as a restart does and apply `planned`.
        async fn start(&self, planned: &[Event]) -> Result<(), StartupMeasureError> {
            let log = tokio::sync::Mutex::new(self.log());
            apply(
                planned.to_vec(),
                &self.tee,
                &log,
                &self.log_path(),
                &self.audit,
            )
            .await
        }

        /// (RTMR3, extends so far)
        fn rtmr3(&self) -> ([u8; 48], u32) {
            *self.regs.rtmr3.lock().unwrap()
        }

        fn replayed(&self) -> [u8; 48] {
            self.log().expected_rtmr3().unwrap()
        }
    }

    fn planned() -> Vec<Event> {
        vec![ev(EVENT_AGENT_CONFIG, 1), ev(EVENT_VLLM_CMDLINE, 2)]
    }

    #[tokio::test]
    async fn a_fresh_boot_extends_and_a_restart_extends_nothing() {
        let rig = Rig::new().await;
        rig.start(&planned()).await.unwrap();
        assert_eq!(rig.rtmr3(), (rig.replayed(), 2));
        rig.start(&planned()).await.unwrap();
        assert_eq!(rig.rtmr3(), (rig.replayed(), 2));
        assert_eq!(rig.log().lines.len(), 2);
    }

    #[tokio::test]
    async fn a_startup_cut_short_goes_on_where_it_stopped() {
        let rig = Rig::new().await;
        // Killed after the first event was extended, before the second was logged.
        rig.start(&planned()[..1]).await.unwrap();
        assert_eq!(rig.rtmr3().1, 1);
        rig.start(&planned()).await.unwrap();
        assert_eq!(rig.rtmr3(), (rig.replayed(), 2));
        let kinds: Vec<_> = rig.log().lines.into_iter().map(|l| l.event.kind).collect();
        assert_eq!(kinds, [EVENT_AGENT_CONFIG, EVENT_VLLM_CMDLINE]);
    }

    #[tokio::test]
    async fn the_event_logged_but_not_extended_is_extended_once() {
        let rig = Rig::new().await;
        rig.start(&planned()).await.unwrap();
        // Killed between an admin event's fsync and its extend.
        let digest = rig.log().append(ev("admin", 3)).unwrap();
        let before = rig.rtmr3();
        assert_ne!(before.0, rig.replayed());
        rig.start(&planned()).await.unwrap();
        assert_eq!(rig.rtmr3(), (replay_from(before.0, &digest), 3));
        assert_eq!(rig.rtmr3().0, rig.replayed());
        // Once: the next restart only replays.
        rig.start(&planned()).await.unwrap();
        assert_eq!(rig.rtmr3().1, 3);
    }

    fn audit_text(rig: &Rig) -> String {
        crate::audit::list_files(&rig.dir.path().join("audit"))
            .unwrap()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn the_pending_event_is_audited_before_it_is_extended() {
        let rig = Rig::new().await;
        rig.start(&planned()).await.unwrap();
        // Killed between an admin event's fsync and its extend; then the audit log cannot
        // be written at the restart (its writer gone, as on a full disk).
        let digest = rig.log().append(ev("admin", 3)).unwrap();
        let before = rig.rtmr3();
        let full = rig.unwritable_audit().await;
        let log = tokio::sync::Mutex::new(rig.log());
        let err = apply(planned(), &rig.tee, &log, &rig.log_path(), &full)
            .await
            .unwrap_err();
        assert!(matches!(err, StartupMeasureError::Audit(_)), "{err}");
        assert_eq!(rig.rtmr3(), before, "extended without its audit record");
        // Once the audit log is writable, the restart records the event, then extends it.
        rig.start(&planned()).await.unwrap();
        assert_eq!(rig.rtmr3(), (replay_from(before.0, &digest), 3));
        let text = audit_text(&rig);
        assert!(
            text.contains(&format!(
                r#""digest":"{}","event_type":"admin","log_seq":3"#,
                hex(&digest)
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_startup_event_the_audit_log_cannot_record_is_not_extended() {
        let rig = Rig::new().await;
        let full = rig.unwritable_audit().await;
        let log = tokio::sync::Mutex::new(rig.log());
        let err = apply(planned(), &rig.tee, &log, &rig.log_path(), &full)
            .await
            .unwrap_err();
        assert!(matches!(err, StartupMeasureError::Audit(_)), "{err}");
        assert_eq!(rig.rtmr3().1, 0, "extended without its audit record");
        assert_eq!(rig.log().lines.len(), 1, "logged, then stopped");
        // The next start records and extends that one, then goes on with the rest.
        rig.start(&planned()).await.unwrap();
        assert_eq!(rig.rtmr3(), (rig.replayed(), 2));
        let text = audit_text(&rig);
        for seq in [1, 2] {
            assert!(text.contains(&format!(r#""log_seq":{seq}}}"#)), "{text}");
        }
    }

    #[tokio::test]
    async fn what_no_crash_explains_is_refused_by_name() {
        let rig = Rig::new().await;
        rig.start(&planned()).await.unwrap();
        // Two events logged and not extended: not one crash of this agent.
        let mut log = rig.log();
        log.append(ev("admin", 3)).unwrap();
        log.append(ev("admin", 4)).unwrap();
        let err = rig.start(&planned()).await.unwrap_err();
        assert!(matches!(err, StartupMeasureError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("rtmr3.jsonl"), "{err}");
        assert_eq!(rig.rtmr3().1, 2);

        // RTMR3 extended by someone else.
        let rig = Rig::new().await;
        rig.start(&planned()).await.unwrap();
        rig.tee.extend_rtmr(Rtmr::R3, [9; 48]).await.unwrap();
        let err = rig.start(&planned()).await.unwrap_err();
        assert!(matches!(err, StartupMeasureError::Mismatch { .. }), "{err}");
        assert_eq!(rig.rtmr3().1, 3);

        // Another configuration in the same boot.
        let rig = Rig::new().await;
        rig.start(&planned()).await.unwrap();
        let other = vec![ev(EVENT_AGENT_CONFIG, 7)];
        let err = rig.start(&other).await.unwrap_err();
        assert!(matches!(err, StartupMeasureError::Changed { .. }), "{err}");
        assert_eq!(rig.rtmr3().1, 2);
    }
}
