//! `tdx-agent admin`: talk to a running agent's admin socket (extend RTMR3, rotate).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{CliResult, Failure};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin socket (state_dir/admin.sock; for `serve --tee sim --sim-dir DIR`, DIR/run/admin.sock).
    #[arg(long, default_value = "/run/tdx-agent/admin.sock")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub op: AdminOp,
}

#[derive(Debug, Subcommand)]
pub enum AdminOp {
    /// Record an event in the RTMR3 event log, extend RTMR3 with it, re-issue the certificate.
    ///
    /// Exit status: 0 extended (a `warning` on stderr if the re-issue failed: do not send it
    /// again); 2 not extended (nothing was sent, or the agent's error says why and whether it
    /// may be sent again); 3 sent but no answer came, so it is unknown whether RTMR3 was
    /// extended: check the RTMR3 event log before sending it again (docs/operations.md,
    /// "Runtime measurements and restarts").
    Extend {
        /// The event type, e.g. "model".
        #[arg(long = "type")]
        kind: String,
        /// The event data: a JSON object (strings, integers, booleans, arrays, objects).
        #[arg(long, default_value = "{}")]
        data: String,
    },
    /// Re-issue the RA-TLS certificate now.
    Rotate,
}

pub async fn run(a: AdminArgs) -> CliResult {
    let request = match &a.op {
        AdminOp::Extend { kind, data } => {
            let data: serde_json::Value = serde_json::from_str(data)
                .map_err(|e| Failure::Error(format!("--data: not JSON: {e}")))?;
            if !data.is_object() {
                return Err(Failure::Error(
                    "--data: must be a JSON object ({...}), as an RTMR3 event's data is (docs/formats.md §11); nothing sent".into(),
                ));
            }
            serde_json::json!({"op": "extend", "event": {"type": kind, "data": data}})
        }
        AdminOp::Rotate => serde_json::json!({"op": "rotate"}),
    };
    let socket = a.socket.display();
    let mut stream = tokio::net::UnixStream::connect(&a.socket)
        .await
        .map_err(|e| {
            Failure::Error(format!(
                "admin socket {socket}: {e}; nothing was sent (is the agent running, and is this its state_dir's admin.sock?)"
            ))
        })?;
    // A write to a connected Unix socket fails only once the agent has closed its end (it
    // stopped, or refused the peer) before reading the whole request, so it did nothing with
    // it: this is exit 2, a retry is safe.
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(|e| {
            Failure::Error(format!(
                "admin socket {socket}: sending the request failed: {e}; the agent closed the connection before it had the request, so it did nothing with it"
            ))
        })?;
    let v = match read_answer(&mut stream).await {
        Ok(v) => v,
        Err(why) => return Err(no_answer(&a, &why)),
    };
    println!("{v}");
    if v["ok"] == true {
        // Exit 0 even so: `ok` means RTMR3 was extended, and a script that took a failure
        // status for "not extended" and retried would extend a second time, which cannot be
        // undone before a reboot. What failed afterwards goes to stderr (and is in the JSON).
        if let Some(warning) = v["warning"].as_str() {
            eprintln!("warning: {warning}");
        }
        Ok(())
    } else {
        Err(Failure::Error(
            v["error"]
                .as_str()
                .unwrap_or("the agent refused")
                .to_string(),
        ))
    }
}

/// The agent's answer, or why there is none that says what it did: only an answer with a
/// boolean `ok` does.
async fn read_answer(stream: &mut tokio::net::UnixStream) -> Result<serde_json::Value, String> {
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("reading its answer failed: {e}"))?;
    let shown = || {
        let text = String::from_utf8_lossy(&response);
        let mut shown: String = text.chars().take(200).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        shown
    };
    if response.iter().all(u8::is_ascii_whitespace) {
        return Err("the connection closed without an answer".into());
    }
    let v: serde_json::Value = serde_json::from_slice(&response)
        .map_err(|e| format!("its answer {:?} is not JSON: {e}", shown()))?;
    if !v["ok"].is_boolean() {
        return Err(format!("its answer {:?} has no boolean \"ok\"", shown()));
    }
    Ok(v)
}

/// The request went out and nothing says what became of it. The agent is stopped between an
/// extend and its answer when it is restarted or killed during the certificate re-issue that
/// follows (a GPU round and a quote, up to minutes): an extend may then have been made, and
/// a retry would measure the event twice, which RTMR3 cannot take back before a reboot.
fn no_answer(a: &AdminArgs, why: &str) -> Failure {
    let socket = a.socket.display();
    match &a.op {
        AdminOp::Extend { .. } => {
            let state_dir = a
                .socket
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| ".".into(), |d| d.display().to_string());
            Failure::Unknown(format!(
                "admin socket {socket}: the extend request was sent, but {why}: it is UNKNOWN whether RTMR3 was extended with the event (the agent may have stopped or restarted after extending and before answering). Do not send it again before you know: once the agent is running again, look in its RTMR3 event log {state_dir}/rtmr3-events.jsonl for this event (type and data) after the lines that were there before; the audit log's `rtmr_extended` record with that line's `log_seq` says the same. If it is there it is measured (a restart extends a logged event once): do not send it again; if it is not, nothing was extended and it may be sent again (docs/operations.md, \"Runtime measurements and restarts\"). The agent also closes a connection from another user than its own unanswered: run this as the agent's user"
            ))
        }
        // Rotating only re-issues the certificate: sending it again is harmless, so a
        // missing answer is an ordinary error.
        AdminOp::Rotate => Failure::Error(format!(
            "admin socket {socket}: the rotate request was sent, but {why}: whether the certificate was re-issued is unknown; a rotate only re-issues the certificate, so it may be sent again (the agent may have stopped or restarted; the agent also closes a connection from another user than its own unanswered: run this as the agent's user)"
        )),
    }
}
