//! `tdx-agent watch` (continuous attestation of a fleet) and `tdx-agent evidence` (the
//! archive's auditor commands), docs/watch.md.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliResult, Failure, read_file};
use tdx_watch::{ArchiveError, WatchConfig};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The watch configuration (TOML): the archive, the listener, the `[[target]]`s.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Check the hash chain of an archive or of its export: exit 0 intact, 1 naming the first
    /// record that is not.
    Verify {
        /// The archive (SQLite), or an export of it (JSON lines).
        db: PathBuf,
        /// A head (64 hex digits) pinned earlier: it must still be in the chain, so a deleted
        /// tail is found.
        #[arg(long, value_name = "HEX")]
        head: Option<String>,
    },
    /// Re-appraise the records offline, each at its own time with its stored evidence and
    /// policy: exit 0 when every verdict agrees, 1 naming each record that does not.
    Reverify {
        /// The archive (SQLite), or an export of it (JSON lines).
        db: PathBuf,
        /// Only this target's records.
        #[arg(long)]
        target: Option<String>,
        /// Only records at or after this instant (unix seconds or RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only records at or before this instant.
        #[arg(long)]
        to: Option<String>,
        /// The root the targets were appraised against, if not Intel's (simulated TDs).
        #[arg(long, value_name = "DER")]
        insecure_root: Option<PathBuf>,
        /// The GPU roots, if not NVIDIA's (simulated GPUs).
        #[arg(long, value_name = "PEM")]
        insecure_gpu_roots: Option<PathBuf>,
    },
    /// One self-contained HTML page: per target a timeline of verdicts, its measurement
    /// states, its TCB status over time and every failure with its failed check. The chain is
    /// checked as the page is made: exit 1, and no page, naming the first record not intact.
    Report {
        /// The archive (SQLite).
        db: PathBuf,
        /// Only records at or after this instant (unix seconds or RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only records at or before this instant.
        #[arg(long)]
        to: Option<String>,
        /// Where to write the page.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Every record as a JSON line (blobs inlined byte for byte, with its chain hashes), oldest
    /// first, checked as it is written; `evidence verify` checks the export alone.
    Export {
        /// The archive (SQLite).
        db: PathBuf,
        /// Write the export here instead of stdout, only if every record is intact (nothing
        /// is written otherwise, and an existing file is replaced whole or not at all).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

pub async fn watch(a: WatchArgs) -> CliResult {
    let text = String::from_utf8(read_file(&a.config, "watch config").await?)
        .map_err(|_| Failure::Error(format!("watch config {}: not UTF-8", a.config.display())))?;
    let config =
        WatchConfig::from_toml(&text, &a.config.display().to_string()).map_err(Failure::error)?;
    tdx_watch::run(config, super::shutdown_signal())
        .await
        .map_err(Failure::error)
}

pub async fn evidence(c: EvidenceCommand) -> CliResult {
    match c {
        EvidenceCommand::Verify { db, head } => {
            let head = head
                .as_deref()
                .map(tdx_core::encoding::hex_array::<32>)
                .transpose()
                .map_err(|e| Failure::Error(format!("--head: {e}")))?;
            let path = db.clone();
            let verified = tokio::task::spawn_blocking(move || {
                tdx_watch::verify_archive_or_export(&path, head)
            })
            .await
            .map_err(Failure::error)?;
            match verified {
                Ok(v) => {
                    println!(
                        "{}: {} records intact (after anchor #{}); head {}",
                        db.display(),
                        v.records,
                        v.anchor_seq,
                        hex::encode(v.head)
                    );
                    Ok(())
                }
                // A database that cannot be read is an I/O error; a broken chain a finding.
                Err(e @ ArchiveError::Db { .. }) => Err(Failure::error(e)),
                Err(e) => Err(Failure::rejected(e)),
            }
        }
        EvidenceCommand::Reverify {
            db,
            target,
            from,
            to,
            insecure_root,
            insecure_gpu_roots,
        } => {
            let instant = |t: Option<String>, flag: &str| {
                t.map(|t| {
                    tdx_core::verify::time::parse_instant(&t)
                        .map_err(|e| Failure::Error(format!("{flag}: {e}")))
                })
                .transpose()
            };
            let opts = tdx_watch::ReverifyOptions {
                verifier: match &insecure_root {
                    Some(p) => tdx_core::verify::Verifier::with_insecure_root(
                        read_file(p, "--insecure-root").await?,
                    ),
                    None => tdx_core::verify::Verifier::production(),
                },
                gpu_roots: super::load_gpu_roots(insecure_gpu_roots.as_ref()).await?,
                target,
                from: instant(from, "--from")?,
                to: instant(to, "--to")?,
            };
            let path = db.clone();
            let r = match tokio::task::spawn_blocking(move || tdx_watch::reverify(&path, &opts))
                .await
                .map_err(Failure::error)?
            {
                Ok(r) => r,
                // A file that cannot be read is an I/O error; one altered so that it is not an
                // archive any more (a view, a value of the wrong type) a finding, as for verify.
                Err(e @ (ArchiveError::Db { .. } | ArchiveError::Write(_))) => {
                    return Err(Failure::error(e));
                }
                Err(e) => return Err(Failure::rejected(e)),
            };
            // Every text here but the time and counts is the archive's: escaped, so an altered
            // record cannot write escape sequences to the auditor's terminal.
            let text = tdx_watch::printable;
            for d in &r.disagreements {
                println!(
                    "record #{} ({} at {}): recorded {}, now {}",
                    d.seq,
                    text(&d.target),
                    tdx_core::verify::time::format_unix(d.at),
                    text(&d.recorded),
                    text(&d.now)
                );
            }
            println!(
                "{}: {} records re-appraised, {} disagree; {} without evidence to re-appraise",
                db.display(),
                r.checked,
                r.disagreements.len(),
                r.without_evidence
            );
            if r.disagreements.is_empty() {
                Ok(())
            } else {
                Err(Failure::rejected(format!(
                    "{} records disagree with their recorded verdict (first: record #{})",
                    r.disagreements.len(),
                    r.disagreements.first().map_or(0, |d| d.seq)
                )))
            }
        }
        EvidenceCommand::Report { db, from, to, out } => {
            let parse = |t: Option<String>, flag: &str| {
                t.map(|t| {
                    tdx_core::verify::time::parse_instant(&t)
                        .map_err(|e| Failure::Error(format!("{flag}: {e}")))
                })
                .transpose()
            };
            let (from, to) = (parse(from, "--from")?, parse(to, "--to")?);
            let path = db.clone();
            let made = tokio::task::spawn_blocking(move || tdx_watch::html_report(&path, from, to))
                .await
                .map_err(Failure::error)?;
            let (page, v) = match made {
                Ok(made) => made,
                // A database that cannot be read is an I/O error; a broken chain a finding,
                // and no page is written for it (as `evidence export --out` writes none).
                Err(e @ ArchiveError::Db { .. }) => return Err(Failure::error(e)),
                Err(e) => return Err(Failure::rejected(format!("no report written: {e}"))),
            };
            super::write_file(&out, page.into_bytes()).await?;
            println!(
                "wrote {}: {} records intact (after anchor #{}); head {}",
                out.display(),
                v.records,
                v.anchor_seq,
                hex::encode(v.head)
            );
            Ok(())
        }
        EvidenceCommand::Export { db, out } => {
            let exported = tokio::task::spawn_blocking(move || match out {
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::new(stdout.lock());
                    let exported = tdx_watch::export(&db, &mut w);
                    // What was written before a record that is not intact is intact: flush it.
                    let flushed = std::io::Write::flush(&mut w);
                    exported.and_then(|v| {
                        flushed
                            .map(|()| v)
                            .map_err(|e| ArchiveError::Write(e.to_string()))
                    })
                }
                Some(path) => {
                    // A chain that breaks stops the fill, so the file is never renamed in.
                    let mut exported = None;
                    let written = tdx_fsutil::write_atomic_with(&path, |w| {
                        let r = exported.insert(tdx_watch::export(&db, w));
                        r.as_ref()
                            .map(|_| ())
                            .map_err(|_| std::io::Error::other("the export stopped"))
                    });
                    match (exported, written) {
                        (Some(Err(e)), _) => Err(e),
                        (Some(Ok(v)), Ok(())) => Ok(v),
                        (_, Err(e)) => Err(ArchiveError::Write(format!("{}: {e}", path.display()))),
                        (None, Ok(())) => Err(ArchiveError::Write(format!(
                            "{}: nothing written",
                            path.display()
                        ))),
                    }
                }
            })
            .await
            .map_err(Failure::error)?;
            match exported {
                Ok(v) => {
                    eprintln!(
                        "tdx-agent: {} records exported (after anchor #{}); head {}",
                        v.records,
                        v.anchor_seq,
                        hex::encode(v.head)
                    );
                    Ok(())
                }
                Err(e @ (ArchiveError::Db { .. } | ArchiveError::Write(_))) => {
                    Err(Failure::error(e))
                }
                Err(e) => Err(Failure::rejected(format!("export stopped: {e}"))),
            }
        }
    }
}
