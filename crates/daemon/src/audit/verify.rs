//! Offline checking of an audit chain over one or more files, for `tdx-agent audit verify`
//! and for auditors holding a chain head from a later challenge quote.

use super::record::{LineFault, parse_line};
use super::{GENESIS, MAX_VERIFY_LINE_BYTES, line_hash};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;

/// Where a record is: file as given and 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRef {
    pub file: PathBuf,
    pub line: usize,
}

/// A chain that checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifySummary {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Hash of the last line: the head a challenge quote made now would commit to.
    pub head: [u8; 32],
    /// The first record is the start of a log (seq 1, zero prev), not a later file whose
    /// predecessors were deleted by retention.
    pub from_genesis: bool,
}

impl VerifySummary {
    pub fn head_hex(&self) -> String {
        hex::encode(self.head)
    }
}

/// A chain that checked out and contains a given head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadMatch {
    pub summary: VerifySummary,
    /// Seq of the record whose line hashes to the head (0 for the all-zero head of an empty log).
    pub seq: u64,
    /// That record's place; `None` for the all-zero head.
    pub at: Option<LineRef>,
}

/// Why a set of audit files does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditVerifyError {
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} line {line}: {fault}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        fault: LineFault,
    },
    #[error("no audit records in {files} file(s)")]
    NoRecords { files: usize },
    #[error(
        "no record hashes to the head {head}: the chain (seq {first_seq}..={last_seq}, head {actual}) was truncated, \
         or is not the log that head came from"
    )]
    HeadNotFound {
        head: String,
        first_seq: u64,
        last_seq: u64,
        actual: String,
    },
}

/// Check the chain across `paths`, given oldest first: every line parses, seq goes up by one,
/// `prev` is the hash of the line before (across file boundaries too), times are RFC 3339.
pub fn verify_files(paths: &[PathBuf]) -> Result<VerifySummary, AuditVerifyError> {
    walk(paths, |_, _, _| {})
}

/// [`verify_files`], and also require that some line hashes to `head` (a chain head taken
/// from a challenge quote's REPORTDATA). A log cut back to before that head fails here even
/// though what is left is a valid chain.
pub fn verify_against_head(
    paths: &[PathBuf],
    head: [u8; 32],
) -> Result<HeadMatch, AuditVerifyError> {
    let mut found: Option<(u64, LineRef)> = None;
    let summary = walk(paths, |hash, seq, at| {
        if found.is_none() && *hash == head {
            found = Some((seq, at.clone()));
        }
    })?;
    if let Some((seq, at)) = found {
        return Ok(HeadMatch {
            summary,
            seq,
            at: Some(at),
        });
    }
    if head == GENESIS && summary.from_genesis {
        return Ok(HeadMatch {
            summary,
            seq: 0,
            at: None,
        });
    }
    Err(AuditVerifyError::HeadNotFound {
        head: hex::encode(head),
        first_seq: summary.first_seq,
        last_seq: summary.last_seq,
        actual: summary.head_hex(),
    })
}

struct Last {
    seq: u64,
    hash: [u8; 32],
    at: LineRef,
}

fn walk(
    paths: &[PathBuf],
    mut on_record: impl FnMut(&[u8; 32], u64, &LineRef),
) -> Result<VerifySummary, AuditVerifyError> {
    let mut last: Option<Last> = None;
    let mut first: Option<(u64, bool)> = None;
    let mut records: u64 = 0;

    for path in paths {
        let file = File::open(path).map_err(|source| AuditVerifyError::Io {
            file: path.clone(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut line_no = 0usize;
        loop {
            buf.clear();
            let n = (&mut reader)
                .take(MAX_VERIFY_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(|source| AuditVerifyError::Io {
                    file: path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let fail = |fault| AuditVerifyError::Line {
                file: path.clone(),
                line: line_no,
                fault,
            };
            let Some(line) = buf.strip_suffix(b"\n") else {
                return Err(fail(if n > MAX_VERIFY_LINE_BYTES {
                    LineFault::TooLong {
                        max: MAX_VERIFY_LINE_BYTES,
                    }
                } else {
                    LineFault::Torn
                }));
            };
            let rec = parse_line(line).map_err(fail)?;
            match &last {
                Some(prev) => {
                    let expected = prev.seq.saturating_add(1);
                    if rec.seq != expected || prev.seq == u64::MAX {
                        return Err(fail(LineFault::Seq {
                            found: rec.seq,
                            expected,
                        }));
                    }
                    if rec.prev != prev.hash {
                        let previous = if prev.at.file == *path {
                            format!("line {}", prev.at.line)
                        } else {
                            format!("{} line {}", prev.at.file.display(), prev.at.line)
                        };
                        return Err(fail(LineFault::Prev { previous }));
                    }
                }
                None => {
                    // The first record seen anchors the chain. If it claims to be the start of
                    // a log, both of its fields must say so.
                    if rec.prev == GENESIS && rec.seq != 1 {
                        return Err(fail(LineFault::GenesisSeq { found: rec.seq }));
                    }
                    if rec.seq == 1 && rec.prev != GENESIS {
                        return Err(fail(LineFault::GenesisPrev));
                    }
                    first = Some((rec.seq, rec.seq == 1));
                }
            }
            let at = LineRef {
                file: path.clone(),
                line: line_no,
            };
            let hash = line_hash(line);
            on_record(&hash, rec.seq, &at);
            records += 1;
            last = Some(Last {
                seq: rec.seq,
                hash,
                at,
            });
        }
    }

    match (first, last) {
        (Some((first_seq, from_genesis)), Some(last)) => Ok(VerifySummary {
            records,
            first_seq,
            last_seq: last.seq,
            head: last.hash,
            from_genesis,
        }),
        _ => Err(AuditVerifyError::NoRecords { files: paths.len() }),
    }
}

impl std::fmt::Display for LineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)
    }
}
