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
    let mut stream = tokio::net::UnixStream::connect(&a.socket)
        .await
        .map_err(|e| Failure::Error(format!("admin socket {}: {e}", a.socket.display())))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(Failure::error)?;
    let mut response = String::new();
    (&mut stream)
        .take(1 << 20)
        .read_to_string(&mut response)
        .await
        .map_err(Failure::error)?;
    let v: serde_json::Value = serde_json::from_str(response.trim())
        .map_err(|e| Failure::Error(format!("admin socket answered {response:?}: {e}")))?;
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
