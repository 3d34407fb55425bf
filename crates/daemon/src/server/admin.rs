//! The admin socket: a Unix socket (mode 0600, peer uid checked) for the operations that
//! change what the agent attests: extending RTMR3 with a runtime measurement, and rotating
//! the certificate. One JSON request line, one JSON response line.
//!
//! `{"op":"extend","event":{"type":"...","data":{...}}}` records the event in the RTMR3 event
//! log (fsynced) before extending, then re-issues the certificate so new handshakes show it.
//! `{"op":"rotate"}` re-issues the certificate.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::state::AppState;
use crate::audit::AuditEvent;
use tdx_core::measure::rtmr3_log::Event;

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
            let kind = event.kind.clone();
            // Only the agent records what it verified of a GPU; an admin-written `gpu` event
            // would vouch for a CC state nobody checked.
            if kind == tdx_core::gpu::GPU_EVENT {
                return Err(format!(
                    "event type {kind:?} is the agent's own record of a verified GPU and cannot be extended by hand"
                ));
            }
            let digest = {
                let mut log = state.rtmr3_log.lock().await;
                let path: PathBuf = state.rtmr3_log_path.clone();
                match super::measure::log_then_extend(&mut log, &state.tee, event).await {
                    Ok(digest) => digest,
                    Err(super::measure::MeasureError::Log(e)) => {
                        return Err(format!(
                            "RTMR3 event log {}: {e}; nothing extended",
                            path.display()
                        ));
                    }
                    Err(e @ super::measure::MeasureError::Pending { .. }) => {
                        return Err(e.to_string());
                    }
                    Err(super::measure::MeasureError::Extend(e)) => {
                        let why = format!(
                            "extending RTMR3 failed after the event was logged: {e}; the log no longer explains RTMR3 (a restart extends the logged event)"
                        );
                        state
                            .readiness
                            .set(super::readiness::Stage::Measured, false, why.clone());
                        return Err(why);
                    }
                }
            };
            state
                .audit
                .append(AuditEvent::rtmr_extended(3, &digest, &kind))
                .await
                .map_err(|e| format!("audit log: {e}"))?;
            super::issue::reissue(state, "rtmr3-changed").await?;
            Ok(json!({"ok": true, "digest": hex::encode(digest)}))
        }
    }
}
