//! The admin socket: a Unix socket (mode 0600, peer uid checked) for the operations that
//! change what the agent attests: extending RTMR3 with a runtime measurement, and rotating
//! the certificate. One JSON request line, one JSON response line.
//!
//! `{"op":"extend","event":{"type":"...","data":{...}}}` records the event in the RTMR3 event
//! log and the audit log (each fsynced) before extending, then re-issues the certificate so
//! new handshakes show it. Once RTMR3 is extended the answer is `ok`, whatever fails after:
//! an error would invite a retry, and a second extend cannot be undone before a reboot. A
//! failed re-issue is a `warning` beside `ok` (docs/operations.md, "Runtime measurements and
//! restarts").
//! `{"op":"rotate"}` re-issues the certificate.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::measure::{MeasureError, Measured, log_then_extend};
use super::readiness::{Readiness, Stage};
use super::state::AppState;
use crate::audit::AuditLog;
use tdx_core::measure::rtmr3_log::Event;
use tdx_tee::TeeHandle;
use tdx_tee::rtmr3_log::Rtmr3Log;

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Extend { event: Event },
    Rotate,
}

/// Bind the socket at `path` with mode 0600 (replacing a stale one).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Our own uid, without libc: the owner of /proc/self.
fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

pub async fn serve(
    listener: UnixListener,
    state: Arc<AppState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let uid = own_uid();
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let peer = stream.peer_cred().ok().map(|c| c.uid());
        if uid.is_none() || peer != uid {
            tracing::warn!(?peer, "admin socket: refused a peer with another uid");
            continue;
        }
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &state).await {
                tracing::warn!(error = %e, "admin socket connection failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, state: &AppState) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // One small request: bound it so a peer cannot make us buffer without limit.
    let mut reader = BufReader::new(read.take_limited());
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => json!({"ok": false, "error": format!("request: {e}")}),
        Ok(req) => match run(req, state).await {
            Ok(v) => v,
            Err(e) => json!({"ok": false, "error": e}),
        },
    };
    write.write_all(format!("{response}\n").as_bytes()).await?;
    write.shutdown().await
}

trait TakeLimited: Sized {
    fn take_limited(self) -> tokio::io::Take<Self>;
}

impl TakeLimited for tokio::net::unix::OwnedReadHalf {
    fn take_limited(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, 64 * 1024)
    }
}

async fn run(req: Request, state: &AppState) -> Result<serde_json::Value, String> {
    match req {
        Request::Rotate => {
            super::issue::reissue(state, "admin-rotate").await?;
            Ok(json!({"ok": true}))
        }
        Request::Extend { event } => {
            let measured = measure(
                &state.rtmr3_log,
                &state.rtmr3_log_path,
                &state.tee,
                &state.audit,
                &state.readiness,
                event,
            )
            .await?;
            let reissued = super::issue::reissue(state, "rtmr3-changed").await;
            Ok(extended(measured, reissued))
        }
    }
}

/// Log, audit and extend one admin event. An error means RTMR3 was not extended with it.
async fn measure(
    log: &tokio::sync::Mutex<Rtmr3Log>,
    log_path: &Path,
    tee: &TeeHandle,
    audit: &AuditLog,
    readiness: &Readiness,
    event: Event,
) -> Result<Measured, String> {
    let kind = event.kind.clone();
    // Only the agent records what it verified of a GPU; an admin-written `gpu` event
    // would vouch for a CC state nobody checked.
    if kind == tdx_core::gpu::GPU_EVENT {
        return Err(format!(
            "event type {kind:?} is the agent's own record of a verified GPU and cannot be extended by hand"
        ));
    }
    // Checked before the log is touched, so a bad request is not reported as a log failure.
    event
        .digest()
        .map_err(|e| format!("request: {e}; nothing logged or extended"))?;
    let mut log = log.lock().await;
    match log_then_extend(&mut log, tee, audit, event).await {
        Ok(measured) => Ok(measured),
        Err(MeasureError::Log(e)) => Err(format!(
            "RTMR3 event log {}: {e}; nothing extended",
            log_path.display()
        )),
        Err(e @ MeasureError::Pending { .. }) => Err(e.to_string()),
        Err(MeasureError::Audit { seq, source }) => {
            let why = format!(
                "the audit log could not record event #{seq}, so RTMR3 was NOT extended with it: {source}; the event stays in the RTMR3 event log {}, which no longer explains RTMR3, and a restart in this boot (with the audit log writable) records and extends it: do not send it again",
                log_path.display()
            );
            readiness.set(Stage::Measured, false, why.clone());
            Err(why)
        }
        Err(MeasureError::Extend(e)) => {
            let why = format!(
                "extending RTMR3 failed after the event was logged: {e}; the log no longer explains RTMR3 (a restart extends the logged event)"
            );
            readiness.set(Stage::Measured, false, why.clone());
            Err(why)
        }
    }
}

/// The answer to an extend that was made: `ok` whatever came after, since an error would
/// invite a retry and RTMR3 cannot take an extend back. What failed after it is a warning.
fn extended(measured: Measured, reissued: Result<(), String>) -> serde_json::Value {
    let mut answer = json!({
        "ok": true,
        "seq": measured.seq,
        "digest": hex::encode(measured.digest),
    });
    if let Err(e) = reissued {
        answer["warning"] = json!(format!(
            "event #{} IS measured: it is in the RTMR3 event log and the audit log, and RTMR3 was extended with it; do not send it again (a second extend cannot be undone before a reboot). Re-issuing the certificate failed afterwards ({e}), so new handshakes show the previous evidence until a re-issue succeeds: the agent retries when it next checks RTMR3, and `tdx-agent admin rotate` retries now",
            measured.seq
        ));
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::super::measure::fakes::Counting;
    use super::*;

    struct Rig {
        dir: tempfile::TempDir,
        log: tokio::sync::Mutex<Rtmr3Log>,
        platform: Arc<Counting>,
        tee: TeeHandle,
        audit: AuditLog,
        readiness: Readiness,
    }

    impl Rig {
        async fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let log = Rtmr3Log::open(&dir.path().join("rtmr3.jsonl"), "boot").unwrap();
            let platform = Arc::new(Counting::default());
            let audit = AuditLog::open(dir.path().join("audit"), Default::default())
                .await
                .unwrap();
            Rig {
                tee: TeeHandle::new(platform.clone()),
                log: tokio::sync::Mutex::new(log),
                platform,
                audit,
                readiness: Readiness::new(false, false),
                dir,
            }
        }

        async fn extend(&self, data: serde_json::Value) -> Result<Measured, String> {
            let event = Event {
                kind: "admin".into(),
                data,
            };
            let path = self.dir.path().join("rtmr3.jsonl");
            measure(
                &self.log,
                &path,
                &self.tee,
                &self.audit,
                &self.readiness,
                event,
            )
            .await
        }

        fn extends(&self) -> u32 {
            self.platform.extends()
        }
    }

    #[test]
    fn an_extend_whose_reissue_failed_is_ok_with_a_warning_not_an_error() {
        let m = Measured {
            seq: 4,
            digest: [0xab; 48],
        };
        let v = extended(m, Ok(()));
        assert_eq!(v["ok"], true);
        assert_eq!(v["seq"], 4);
        assert_eq!(v["digest"], hex::encode([0xab; 48]));
        assert!(v.get("warning").is_none(), "{v}");
        let v = extended(m, Err("quote: no answer within 2s".into()));
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["seq"], 4);
        let w = v["warning"].as_str().unwrap();
        assert!(
            w.contains("event #4 IS measured")
                && w.contains("do not send it again")
                && w.contains("no answer within 2s")
                && w.contains("admin rotate"),
            "{w}"
        );
    }

    #[tokio::test]
    async fn an_admin_event_the_audit_log_cannot_record_is_not_extended() {
        let rig = Rig::new().await;
        let m = rig.extend(json!({"n": 1})).await.unwrap();
        assert_eq!((m.seq, rig.extends()), (1, 1));
        rig.audit.close().await.unwrap();
        let err = rig.extend(json!({"n": 2})).await.unwrap_err();
        assert!(
            err.contains("NOT extended") && err.contains("do not send it again"),
            "{err}"
        );
        assert_eq!(rig.extends(), 1, "extended without its audit record");
        let measured = rig
            .readiness
            .snapshot()
            .into_iter()
            .find(|s| s.stage == Stage::Measured)
            .unwrap();
        assert!(!measured.ok);
        // A retry is refused before anything is logged: the event waits for the restart.
        let err = rig.extend(json!({"n": 2})).await.unwrap_err();
        assert!(err.contains("event #2"), "{err}");
        assert_eq!(rig.log.lock().await.lines.len(), 2);
        assert_eq!(rig.extends(), 1);
    }

    #[tokio::test]
    async fn a_malformed_event_is_refused_before_the_log_is_touched() {
        let rig = Rig::new().await;
        for data in [json!([1]), json!({"x": 1.5})] {
            let err = rig.extend(data).await.unwrap_err();
            assert!(
                err.starts_with("request: ") && err.contains("nothing logged"),
                "{err}"
            );
        }
        assert!(rig.log.lock().await.lines.is_empty());
        assert_eq!(rig.extends(), 0);
    }
}
