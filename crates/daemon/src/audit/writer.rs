//! The synchronous core of the audit log: one writer that appends, fsyncs, rotates and rate
//! limits. Blocking by design; [`super::AuditLog`] runs it on its own thread for async callers.

use super::clock::{Clock, SystemClock};
use super::event::AuditEvent;
use super::ratelimit::{Limiter, Pending, RateLimit};
use super::record::parse_line;
use super::{GENESIS, MAX_LINE_BYTES, MAX_VERIFY_LINE_BYTES, file_name, line_hash, list_indexed};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use time::{OffsetDateTime, UtcOffset};

/// How a log is written.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Start a new file before a record would make the active file larger than this.
    pub max_bytes: u64,
    /// Keep at most this many files, the active one included (the oldest are deleted after a
    /// rotation); `None` keeps all. `Some(0)` keeps 1: the file being written is never
    /// deleted (the serve configuration refuses `audit.keep = 0` before it gets here).
    pub keep: Option<usize>,
    /// Rate limit for every event type without an override; `None` = unlimited.
    pub default_rate: Option<RateLimit>,
    /// Per event type (`type` field) overrides; a `None` value makes that type unlimited.
    /// Security-relevant events ignore both settings: they are never limited.
    pub rate_limits: BTreeMap<String, Option<RateLimit>>,
    /// Source of timestamps and of the rate limiter's time.
    pub clock: Arc<dyn Clock>,
    /// How often [`super::AuditLog`]'s thread checks for suppression summaries that are due
    /// when no new events arrive.
    pub flush_interval: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            keep: None,
            // Legitimate non-security events (verification results, notices) come at human or
            // connection rates; 20/s with bursts of 100 never limits those but caps a loop.
            default_rate: Some(RateLimit::new(20.0, 100.0)),
            rate_limits: BTreeMap::new(),
            clock: Arc::new(SystemClock::new()),
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// A record that is on disk (written and fsynced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// Hash of the written line: the new chain head.
    pub line_hash: [u8; 32],
}

/// Why a record could not be written. Every variant except `RateLimited` means the record is
/// not in the log, and callers that must not act unlogged (issuing evidence) must stop.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: cannot {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "audit log {}: writing record seq {seq} failed, so it was not logged (the file was cut back to its previous {len} bytes): {source}",
        path.display()
    )]
    Write {
        path: PathBuf,
        seq: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {} is damaged: {detail}", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "audit log {} is unusable: {detail}; restart the agent, which checks the file when it opens it",
        path.display()
    )]
    Broken { path: PathBuf, detail: String },
    #[error("audit record of type {event_type} would be {len} bytes, over the {max}-byte limit")]
    TooLong {
        event_type: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "audit event of type {event_type} rate limited: counted, and reported in a summary record later"
    )]
    RateLimited { event_type: &'static str },
    #[error("audit log: the clock gave a time that cannot be written as RFC 3339: {0}")]
    Time(String),
    #[error("audit log: seq would overflow")]
    SeqExhausted,
    #[error("audit log: the writer thread has stopped; no further records can be written")]
    WriterGone,
}

impl AuditError {
    /// True when nothing is wrong with the log: the event was dropped by the rate limiter.
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Self::RateLimited { .. })
    }
}

/// RFC 3339 in UTC with exactly six fractional digits: fixed width so lines are reproducible
/// and sort as text.
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The exact bytes of one record, without the newline.
pub(crate) fn render_line(seq: u64, time: &str, event_json: &str, prev: &[u8; 32]) -> String {
    format!(
        "{{\"seq\":{seq},\"time\":\"{time}\",\"event\":{event_json},\"prev\":\"{}\"}}",
        hex::encode(prev)
    )
}

/// Test-only ways to make the next write fail, to check that a failure leaves no half line.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    /// Write this many bytes of the line, then fail.
    ShortWrite(usize),
    /// Write the line, then fail the fsync.
    Sync,
    /// Write this many bytes, fail, and fail the undo as well.
    ShortWriteNoUndo(usize),
    /// Set by `ShortWriteNoUndo`: the undo fails.
    Undo,
}

/// The synchronous writer. Not shareable: put it behind [`super::AuditLog`] (or a mutex).
#[derive(Debug)]
pub struct AuditWriter {
    dir: PathBuf,
    options: AuditOptions,
    file: File,
    path: PathBuf,
    index: u64,
    len: u64,
    last_seq: u64,
    head: [u8; 32],
    limiter: Limiter,
    /// Set when a failed write could not be undone; the file may end in a partial line, so
    /// nothing more may be appended to it.
    broken: Option<String>,
    #[cfg(test)]
    pub(crate) fault: Option<Fault>,
}

impl AuditWriter {
    /// Open the log in `dir` (created if missing), resuming the chain from the last line of
    /// the newest file. A damaged last line is an error; the writer never repairs by itself.
    pub fn open(dir: &Path, options: AuditOptions) -> Result<Self, AuditError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|source| io("create the directory", dir, source))?;
        let files = list_indexed(dir).map_err(|source| io("list the directory", dir, source))?;

        let mut last_seq = 0;
        let mut head = GENESIS;
        for (_, path) in files.iter().rev() {
            if let Some((seq, hash)) = read_last_record(path)? {
                last_seq = seq;
                head = hash;
                break;
            }
        }

        let (index, path, file, len) = match files.last() {
            Some((index, path)) => {
                let file = open_append(path, false)?;
                let len = file
                    .metadata()
                    .map_err(|source| io("stat", path, source))?
                    .len();
                (*index, path.clone(), file, len)
            }
            None => {
                let path = dir.join(file_name(1));
                let file = open_append(&path, true)?;
                sync_dir(dir)?;
                (1, path, file, 0)
            }
        };

        let limiter = Limiter::new(options.default_rate, options.rate_limits.clone());
        Ok(Self {
            dir: dir.to_path_buf(),
            options,
            file,
            path,
            index,
            len,
            last_seq,
            head,
            limiter,
            broken: None,
            #[cfg(test)]
            fault: None,
        })
    }

    /// Append one event (after any suppression summaries that have become due). Returns only
    /// once the record is fsynced.
    pub fn append(&mut self, event: AuditEvent) -> Result<Appended, AuditError> {
        self.usable()?;
        self.flush_suppressed()?;
        let event_type = event.type_name();
        if !event.is_security_relevant() {
            let now = self.options.clock.monotonic();
            let wall = self.options.clock.now();
            if !self.limiter.admit(event_type, now, wall) {
                return Err(AuditError::RateLimited { event_type });
            }
        }
        self.write_record(&event)
    }

    /// Write the summary records whose bucket has refilled; returns how many were written.
    /// [`super::AuditLog`] calls this periodically so a summary appears even when the flood
    /// stops and no further event of that type arrives.
    pub fn flush_suppressed(&mut self) -> Result<usize, AuditError> {
        self.flush(false)
    }

    /// Write every pending summary, due or not (for shutdown: no count is lost).
    pub fn finish(&mut self) -> Result<usize, AuditError> {
        self.flush(true)
    }

    fn flush(&mut self, all: bool) -> Result<usize, AuditError> {
        if !self.limiter.has_pending() {
            return Ok(0);
        }
        self.usable()?;
        let due: Vec<Pending> = self.limiter.due(self.options.clock.monotonic(), all);
        for pending in &due {
            let event = AuditEvent::suppressed(
                pending.event_type,
                pending.count,
                pending.first,
                pending.last,
            );
            self.write_record(&event)?;
            self.limiter.written(pending);
        }
        Ok(due.len())
    }

    /// The chain head: hash of the last line written, or 32 zero bytes for an empty log.
    pub fn head(&self) -> [u8; 32] {
        self.head
    }

    /// Seq of the last record (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file records are currently appended to.
    pub fn active_path(&self) -> &Path {
        &self.path
    }

    fn usable(&self) -> Result<(), AuditError> {
        match &self.broken {
            Some(detail) => Err(AuditError::Broken {
                path: self.path.clone(),
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    fn write_record(&mut self, event: &AuditEvent) -> Result<Appended, AuditError> {
        let seq = self
            .last_seq
            .checked_add(1)
            .ok_or(AuditError::SeqExhausted)?;
        let now = self.options.clock.now();
        // RFC 3339 has four-digit years only.
        if !(0..=9999).contains(&now.year()) {
            return Err(AuditError::Time(now.to_string()));
        }
        let time = format_time(now);
        let mut line = render_line(seq, &time, &event.to_json(), &self.head).into_bytes();
        if line.len() > MAX_LINE_BYTES {
            return Err(AuditError::TooLong {
                event_type: event.type_name(),
                len: line.len(),
                max: MAX_LINE_BYTES,
            });
        }
        let hash = line_hash(&line);
        line.push(b'\n');
        self.rotate_if_needed(line.len() as u64)?;

        let before = self.len;
        if let Err(source) = self.write_and_sync(&line) {
            // One write_all of the whole line, and on any failure cut back to the previous
            // length: the file then ends at a record boundary, exactly as before. fsync errors
            // are treated the same (after a failed fsync the kernel may have dropped the
            // dirty pages, so the line's durability is unknown; it must not count as logged).
            if let Err(undo_err) = self.cut_back(before) {
                let detail = format!(
                    "writing record seq {seq} failed ({source}) and cutting the file back to {before} bytes failed too \
                     ({undo_err}), so the file may end in a partial record"
                );
                self.broken = Some(detail.clone());
                return Err(AuditError::Broken {
                    path: self.path.clone(),
                    detail,
                });
            }
            return Err(AuditError::Write {
                path: self.path.clone(),
                seq,
                len: before,
                source,
            });
        }
        self.len = before + line.len() as u64;
        self.last_seq = seq;
        self.head = hash;
        Ok(Appended {
            seq,
            line_hash: hash,
        })
    }

    fn cut_back(&mut self, len: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(Fault::Undo) = self.fault.take() {
            return Err(std::io::Error::other("injected truncate failure"));
        }
        self.file.set_len(len)?;
        self.file.sync_data()
    }

    fn write_and_sync(&mut self, line: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        match self.fault.take() {
            Some(Fault::ShortWrite(n)) => {
                self.file.write_all(&line[..n.min(line.len())])?;
                return Err(std::io::Error::other("injected short write"));
            }
            Some(Fault::ShortWriteNoUndo(n)) => {
                self.file.write_all(&line[..n.min(line.len())])?;
                self.fault = Some(Fault::Undo);
                return Err(std::io::Error::other("injected short write"));
            }
            Some(Fault::Sync) => {
                self.file.write_all(line)?;
                return Err(std::io::Error::other("injected fsync failure"));
            }
            Some(Fault::Undo) | None => {}
        }
        self.file.write_all(line)?;
        self.file.sync_data()
    }

    fn rotate_if_needed(&mut self, adding: u64) -> Result<(), AuditError> {
        if self.len == 0 || self.len.saturating_add(adding) <= self.options.max_bytes {
            return Ok(());
        }
        let index = self.index.checked_add(1).ok_or(AuditError::SeqExhausted)?;
        let path = self.dir.join(file_name(index));
        // create_new: an existing file with the next number is not ours to append to.
        let file = open_append(&path, true)?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.path = path;
        self.index = index;
        self.len = 0;
        self.prune();
        Ok(())
    }

    /// Delete the oldest files beyond `keep`. Failure only costs disk space, so it is logged
    /// and not returned: the record that triggered the rotation is still to be written.
    fn prune(&self) {
        let Some(keep) = self.options.keep else {
            return;
        };
        let keep = keep.max(1);
        let files = match list_indexed(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "audit log: cannot list files to prune");
                return;
            }
        };
        let excess = files.len().saturating_sub(keep);
        for (index, path) in files.into_iter().take(excess) {
            if index >= self.index {
                break;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "audit log: cannot delete old file");
            }
        }
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> AuditError {
    AuditError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn open_append(path: &Path, create_new: bool) -> Result<File, AuditError> {
    let mut o = OpenOptions::new();
    o.append(true).mode(0o640);
    if create_new {
        o.create_new(true);
    }
    o.open(path)
        .map_err(|source| io(if create_new { "create" } else { "open" }, path, source))
}

/// Make a newly created file's directory entry durable, not only its contents.
fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io("fsync the directory", dir, source))
}

/// Seq and hash of the last record of `path`, `None` for an empty file. Reads only the tail,
/// so opening a large log is cheap.
fn read_last_record(path: &Path) -> Result<Option<(u64, [u8; 32])>, AuditError> {
    let mut file = File::open(path).map_err(|source| io("open", path, source))?;
    let len = file
        .metadata()
        .map_err(|source| io("stat", path, source))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    let window = len.min(MAX_VERIFY_LINE_BYTES as u64 + 1);
    let start = len - window;
    file.seek(SeekFrom::Start(start))
        .map_err(|source| io("read", path, source))?;
    let mut tail = Vec::with_capacity(window as usize);
    file.take(window)
        .read_to_end(&mut tail)
        .map_err(|source| io("read", path, source))?;

    let shown = path.display();
    let Some((&last, body)) = tail.split_last() else {
        return Ok(None);
    };
    if last != b'\n' {
        let cut = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => Some(start + i as u64 + 1),
            None if start == 0 => Some(0),
            None => None,
        };
        let detail = match cut {
            Some(cut) => format!(
                "its last {} bytes (from byte offset {cut}) are an incomplete record with no trailing newline, \
                 left by a crash or a failed write. Nothing was changed. To recover: keep a copy of the file for \
                 the auditors, cut the incomplete record off with `truncate -s {cut} {shown}`, check the rest with \
                 `tdx-agent audit verify`, and start the agent again",
                len - cut
            ),
            None => format!(
                "it does not end with a newline and its last line is longer than {MAX_VERIFY_LINE_BYTES} bytes. \
                 Nothing was changed. To recover: keep a copy of the file for the auditors, remove the incomplete \
                 last line, check the rest with `tdx-agent audit verify`, and start the agent again"
            ),
        };
        return Err(AuditError::Damaged {
            path: path.to_path_buf(),
            detail,
        });
    }
    let line = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None if start == 0 => body,
        None => {
            return Err(AuditError::Damaged {
                path: path.to_path_buf(),
                detail: format!(
                    "its last line is longer than {MAX_VERIFY_LINE_BYTES} bytes, not a record this agent wrote"
                ),
            });
        }
    };
    let parsed = parse_line(line).map_err(|fault| AuditError::Damaged {
        path: path.to_path_buf(),
        detail: format!(
            "its last line is not a valid record ({fault}). Nothing was changed. Check the file with \
             `tdx-agent audit verify`; keep a copy for the auditors and remove the bad line to continue the chain"
        ),
    })?;
    Ok(Some((parsed.seq, line_hash(line))))
}
