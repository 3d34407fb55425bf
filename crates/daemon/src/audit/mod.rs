//! The tamper-evident audit log: hash-chained JSON lines, fsynced per record, rotated by size.
//!
//! # Line format
//!
//! Every record is one line of UTF-8 JSON ending in `\n`, with the keys in exactly this order
//! and no whitespace, so the bytes are reproducible:
//!
//! ```text
//! {"seq":1,"time":"2025-06-01T12:00:00.000000Z","event":{"type":"policy_loaded","digest":"11…11"},"prev":"00…00"}
//! ```
//!
//! - `seq` counts records from 1 and increases by exactly 1 across the whole chain (all files);
//! - `time` is RFC 3339 UTC with six fractional digits;
//! - `event` is an object whose first key is `type` (see [`AuditEvent`]);
//! - `prev` is the lowercase hex SHA-256 of the previous line's bytes without its newline, or 64
//!   zeros on the first line of a log.
//!
//! The chain head is [`line_hash`] of the last line (32 zero bytes before the first record).
//! Challenge quotes put the head into REPORTDATA (docs/design.md §6), so anyone holding a later quote can
//! detect a truncated log with [`verify_against_head`].
//!
//! # Files and rotation
//!
//! A log is a directory of numbered files `audit-00000001.log`, `audit-00000002.log`, … The
//! highest number is the active file; older files are never renamed or rewritten, so a file
//! name an auditor wrote down stays valid, and a shell glob (`audit-*.log`) lists them in
//! chronological order (zero padding), which `audit.log.N` naming would not. Before a record
//! would push the active file past `max_bytes`, the writer starts the next number; the chain
//! simply continues (the new file's first `prev` is the hash of the old file's last line).
//! With `keep = Some(n)` the oldest files beyond `n` (the active file counts) are deleted after
//! a rotation; `None`, [`AuditOptions`]' default, keeps everything, because deleting audit
//! records is the operator's decision. `tdx-agent serve` always passes its `audit.keep`, which
//! defaults to 16 files and refuses 0 (docs/configuration.md).
//!
//! # What is never logged
//!
//! There is no way to log arbitrary payloads: events are built by typed constructors whose free
//! text is short, sanitised and capped, so prompt or completion content cannot end up here.

mod clock;
mod event;
mod log;
mod ratelimit;
mod record;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use clock::{Clock, ManualClock, SystemClock};
pub use event::{AuditEvent, QuotePurpose};
pub use log::AuditLog;
pub use ratelimit::RateLimit;
pub use record::LineFault;
pub use verify::{
    AuditVerifyError, HeadMatch, LineRef, VerifySummary, verify_against_head, verify_files,
};
pub use writer::{Appended, AuditError, AuditOptions, AuditWriter};

use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

/// Hash of one audit line, the value the next line's `prev` carries: SHA-256 of the line's
/// bytes without its trailing newline.
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// The chain head before any record exists.
pub const GENESIS: [u8; 32] = [0; 32];

/// Longest line the writer produces; events are short by construction, so this only guards
/// against a bug, not against input.
pub const MAX_LINE_BYTES: usize = 4096;

/// Longest line the verifier accepts, generous so that an older or newer writer's lines still
/// verify, and bounded so that a hostile file cannot make it buffer without limit.
pub const MAX_VERIFY_LINE_BYTES: usize = 64 * 1024;

const FILE_PREFIX: &str = "audit-";
const FILE_SUFFIX: &str = ".log";

/// File name of the `index`-th file of a log directory.
pub fn file_name(index: u64) -> String {
    format!("{FILE_PREFIX}{index:08}{FILE_SUFFIX}")
}

/// The number in an audit file name, if `name` is one.
fn file_index(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The audit files of a log directory in chronological order (the order [`verify_files`]
/// wants). Other files in the directory are ignored.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(list_indexed(dir)?.into_iter().map(|(_, p)| p).collect())
}

fn list_indexed(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(index) = name.to_str().and_then(file_index) {
            files.push((index, entry.path()));
        }
    }
    // Numeric, not lexicographic, so that a log outgrowing eight digits still sorts right.
    files.sort_by_key(|(i, _)| *i);
    Ok(files)
}
