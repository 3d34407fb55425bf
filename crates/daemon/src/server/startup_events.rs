//! The runtime measurements made before the agent may report ready (docs/design.md §7): its config
//! and policy, the model manifest and the vLLM command line, each logged (fsynced) and then
//! extended into RTMR3. A restart in the same boot replays the log instead of extending again.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use tdx_core::encoding::hex;
use tdx_core::measure::rtmr3_log::Event;
use tdx_tee::rtmr3_log::Rtmr3Log;
use tdx_tee::{Rtmr, TeeHandle};

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
    let live = tee
        .measurements()
        .await
        .map_err(|e| StartupMeasureError::ReadRtmr(e.to_string()))?
        .rtmr[3];
    let expected = log.expected_rtmr3().map_err(|e| log_err(e.to_string()))?;
    if live != expected {
        return Err(StartupMeasureError::Mismatch {
            live: hex(&live),
            expected: hex(&expected),
            log: log_path.to_path_buf(),
        });
    }
    if !log.lines.is_empty() {
        // A restart in this boot: the log must begin with exactly what we would extend.
        for (i, event) in planned.iter().enumerate() {
            let Some(line) = log.lines.get(i) else {
                return Err(StartupMeasureError::Changed {
                    seq: i as u64 + 1,
                    kind: event.kind.clone(),
                    logged: "nothing".into(),
                    planned: event.data.to_string(),
                });
            };
            if &line.event != event {
                return Err(StartupMeasureError::Changed {
                    seq: line.seq,
                    kind: event.kind.clone(),
                    logged: format!("{} {}", line.event.kind, line.event.data),
                    planned: event.data.to_string(),
                });
            }
        }
        tracing::info!(
            events = log.lines.len(),
            "RTMR3 already holds this boot's measurements (event log replayed); not extending again"
        );
        return Ok(());
    }
    for event in planned {
        let kind = event.kind.clone();
        // Logged (and fsynced) before the extend, so the log always explains RTMR3.
        let digest = crate::blocking::blocking_in_place(|| log.append(event))
            .map_err(|e| log_err(e.to_string()))?;
        tee.extend_rtmr(Rtmr::R3, digest)
            .await
            .map_err(|e| StartupMeasureError::Extend {
                kind: kind.clone(),
                detail: e.to_string(),
            })?;
        audit
            .append(AuditEvent::rtmr_extended(3, &digest, &kind))
            .await
            .map_err(|e| StartupMeasureError::Audit(e.to_string()))?;
        tracing::info!(event = %kind, digest = %hex(&digest), "RTMR3 extended");
    }
    Ok(())
}
