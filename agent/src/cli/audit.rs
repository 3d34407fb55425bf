//! `tdx-agent audit verify`: check the hash chain of audit log files offline.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliResult, Failure};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain of one or more audit log files, oldest first.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The files, in chronological order (a rotated set included).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// A chain head (hex) committed in a later challenge quote (REPORTDATA[32..64]): the log
    /// must contain it, which detects a deleted tail.
    #[arg(long, value_name = "HEX")]
    pub head: Option<String>,
}

pub async fn run(c: AuditCommand) -> CliResult {
    let AuditCommand::Verify(a) = c;
    let head = a
        .head
        .as_deref()
        .map(tdx_core::encoding::hex_array::<32>)
        .transpose()
        .map_err(|e| Failure::Error(format!("--head: {e}")))?;
    let files = a.files.clone();
    let summary = tokio::task::spawn_blocking(move || tdx_daemon::audit::verify_files(&files))
        .await
        .map_err(Failure::error)?
        .map_err(Failure::rejected)?;
    if let Some(head) = head {
        let files = a.files.clone();
        tokio::task::spawn_blocking(move || tdx_daemon::audit::verify_against_head(&files, head))
            .await
            .map_err(Failure::error)?
            .map_err(Failure::rejected)?;
    }
    println!(
        "{} records, seq {}..={}, chain head {}{}",
        summary.records,
        summary.first_seq,
        summary.last_seq,
        summary.head_hex(),
        if summary.from_genesis {
            ""
        } else {
            " (starts after the first record: older files were rotated away)"
        }
    );
    Ok(())
}
