//! `tdx-agent audit verify`: check the hash chain of audit log files offline.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use tdx_daemon::audit::AuditVerifyError;

use super::{CliResult, Failure};

/// A file that cannot be read is an I/O error (exit 2: fix the path and run it again), not a
/// log that failed verification (exit 1: never retried).
fn failure(e: AuditVerifyError) -> Failure {
    match e {
        AuditVerifyError::Io { .. } => Failure::error(e),
        _ => Failure::rejected(e),
    }
}

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
        .map_err(failure)?;
    if let Some(head) = head {
        let files = a.files.clone();
        tokio::task::spawn_blocking(move || tdx_daemon::audit::verify_against_head(&files, head))
            .await
            .map_err(Failure::error)?
            .map_err(failure)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(files: Vec<PathBuf>) -> VerifyArgs {
        VerifyArgs { files, head: None }
    }

    #[tokio::test]
    async fn a_missing_file_is_an_io_error_and_a_bad_line_a_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.jsonl");
        let r = run(AuditCommand::Verify(verify(vec![missing]))).await;
        assert!(
            matches!(&r, Err(Failure::Error(m)) if m.contains("nope.jsonl") && m.contains("cannot read")),
            "{r:?}"
        );
        let bad = dir.path().join("audit.jsonl");
        std::fs::write(&bad, "not a record\n").unwrap();
        let r = run(AuditCommand::Verify(verify(vec![bad]))).await;
        assert!(
            matches!(&r, Err(Failure::Rejected(m)) if m.contains("line 1")),
            "{r:?}"
        );
    }
}
