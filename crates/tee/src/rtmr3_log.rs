//! The RTMR3 event log of this boot on disk: every runtime measurement is written here
//! (fsynced) before it is extended, so the log always explains RTMR3. It lives on tmpfs (/run)
//! and records the boot id: it vanishes at reboot exactly when the registers reset.
//!
//! A restart in the same boot sets the log beside the live RTMR3 ([`Rtmr3Log::recovery`]);
//! the rule for an agent stopped part-way through an extend is docs/formats.md §11, "Crash
//! recovery".

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use tdx_core::measure::rtmr3_log::{Event, LogLine, Rtmr3LogError, parse_lines, replay_lines};

use crate::TeeError;
use crate::crash_point::{self, CrashPoint};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    boot_id: String,
}

/// The log of this boot.
pub struct Rtmr3Log {
    path: PathBuf,
    pub lines: Vec<LogLine>,
    /// The unterminated last line [`Rtmr3Log::open`] cut off: a write the agent never finished,
    /// so never extended. Kept to be reported.
    pub dropped_torn_line: Option<String>,
    /// The event of this run whose extend failed after it was logged (set and cleared by
    /// whoever extends: this file only writes the log).
    pub unextended: Option<u64>,
    published: Published,
    /// Why appending is refused for good: an append failed and cutting the file back to its
    /// last whole line failed too, so the file may end in part (or all) of an event this run
    /// never extended. Appending after it would glue the next line onto that, and a restart
    /// could not parse the log; open() at the next start cuts an unterminated tail off, and
    /// recovery extends a whole one as it would after a crash between fsync and extend.
    poisoned: Option<String>,
    #[cfg(test)]
    faults: Faults,
}

/// Failures a test injects into the next append (disk full, a failing device).
#[cfg(test)]
#[derive(Default)]
struct Faults {
    /// The write stops with an error after this many bytes.
    write_fails_after: Option<usize>,
    sync_fails: bool,
    truncate_fails: bool,
}

/// The log's text ([`Rtmr3Log::jsonl`]) as of its last append, readable without the log's
/// lock: whoever extends holds that lock across the extend and the certificate's re-issue
/// (up to a quote's timeout), and a reader of the live log must not wait for that.
#[derive(Clone, Default)]
pub struct Published(Arc<RwLock<Arc<str>>>);

impl Published {
    pub fn jsonl(&self) -> Arc<str> {
        // A writer that panicked left the text whole (it only swaps an Arc): read it.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, text: String) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = text.into();
    }
}

/// What the log says about the live RTMR3 when a restart in the same boot opens it.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The log replays to RTMR3: every logged event was extended, once.
    Replays,
    /// All but the last event replay to RTMR3: the agent stopped after logging that event
    /// (the log is written before the extend) and before extending it. Extending it once
    /// completes the sequence the log promises.
    ExtendLast {
        seq: u64,
        kind: String,
        digest: [u8; 48],
    },
    /// Neither: RTMR3 moved without the log, or the log was altered. Nothing may be extended.
    Mismatch { expected: [u8; 48] },
}

impl Rtmr3Log {
    /// Open (or start) the log at `path` for the boot `boot_id`. A log from another boot is
    /// moved aside: its registers no longer exist.
    pub fn open(path: &Path, boot_id: &str) -> Result<Self, Rtmr3LogError> {
        let io = |source| Rtmr3LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        // Bytes first: a write cut short may end inside a multi-byte character.
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let (bytes, dropped_torn_line) = match bytes.iter().rposition(|&b| b == b'\n') {
            // Every append writes a whole line ending in '\n' and extends only after the fsync
            // that follows, so an unterminated tail is a write cut short (the agent was
            // killed in it) and was never extended: cut it off, or the next append would
            // continue it. No newline at all is a torn header, which write_atomic rules
            // out: that is refused below as malformed.
            Some(end) if end + 1 < bytes.len() => {
                let torn = String::from_utf8_lossy(&bytes[end + 1..]).into_owned();
                truncate_durably(path, (end + 1) as u64).map_err(io)?;
                (&bytes[..=end], Some(torn))
            }
            _ => (&bytes[..], None),
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let mut lines = text.lines();
        let Some(first) = lines.next() else {
            return Self::start(path, boot_id);
        };
        let header: Header = serde_json::from_str(first).map_err(|e| Rtmr3LogError::Malformed {
            path: path.to_path_buf(),
            line: 1,
            detail: e.to_string(),
        })?;
        if header.boot_id != boot_id {
            let aside = path.with_extension("previous-boot");
            std::fs::rename(path, &aside).map_err(io)?;
            return Self::start(path, boot_id);
        }
        let parsed = parse_lines(lines, 2).map_err(|(line, detail)| Rtmr3LogError::Malformed {
            path: path.to_path_buf(),
            line,
            detail,
        })?;
        Ok(Rtmr3Log {
            path: path.to_path_buf(),
            lines: parsed,
            dropped_torn_line,
            unextended: None,
            published: Published::default(),
            poisoned: None,
            #[cfg(test)]
            faults: Faults::default(),
        }
        .publish())
    }

    fn start(path: &Path, boot_id: &str) -> Result<Self, Rtmr3LogError> {
        let header = serde_json::to_string(&Header {
            boot_id: boot_id.to_string(),
        })
        .map_err(|e| Rtmr3LogError::Event(e.to_string()))?;
        tdx_fsutil::write_atomic(path, format!("{header}\n").as_bytes()).map_err(|source| {
            Rtmr3LogError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Rtmr3Log {
            path: path.to_path_buf(),
            lines: Vec::new(),
            dropped_torn_line: None,
            unextended: None,
            published: Published::default(),
            poisoned: None,
            #[cfg(test)]
            faults: Faults::default(),
        })
    }

    fn publish(self) -> Self {
        self.published.set(self.jsonl());
        self
    }

    /// A handle on the log's text that follows every append (see [`Published`]).
    pub fn published(&self) -> Published {
        self.published.clone()
    }

    /// What RTMR3 must be if every logged event was extended.
    pub fn expected_rtmr3(&self) -> Result<[u8; 48], Rtmr3LogError> {
        replay_lines(&self.lines)
    }

    /// Set the log beside `live`, the RTMR3 read now. Only the last event can be pending:
    /// each extend happens under the log's lock right after its append, so an agent stops
    /// with at most one event logged and not extended.
    pub fn recovery(&self, live: &[u8; 48]) -> Result<Recovery, Rtmr3LogError> {
        let expected = replay_lines(&self.lines)?;
        if &expected == live {
            return Ok(Recovery::Replays);
        }
        if let Some((last, before)) = self.lines.split_last()
            && &replay_lines(before)? == live
        {
            return Ok(Recovery::ExtendLast {
                seq: last.seq,
                kind: last.event.kind.clone(),
                digest: last.event.digest()?,
            });
        }
        Ok(Recovery::Mismatch { expected })
    }

    /// Record `event` durably (written and fsynced) and return its digest; the caller
    /// extends RTMR3 only after this returns. A failed append leaves the file as it was (cut
    /// back to its last whole line), so the next append and the next start find whole lines.
    pub fn append(&mut self, event: Event) -> Result<[u8; 48], Rtmr3LogError> {
        let io = |path: &Path, source| Rtmr3LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(why) = &self.poisoned {
            return Err(io(&self.path, std::io::Error::other(why.clone())));
        }
        let digest = event.digest()?;
        let line = LogLine {
            seq: self.lines.len() as u64 + 1,
            rtmr: 3,
            digest: hex::encode(digest),
            event,
        };
        let text = serde_json::to_string(&line).map_err(|e| Rtmr3LogError::Event(e.to_string()))?;
        let bytes = format!("{text}\n").into_bytes();
        let kind = line.event.kind.as_str();
        crash_point::reached(CrashPoint::BeforeLogWrite, kind);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| io(&self.path, e))?;
        let before = f.metadata().map_err(|e| io(&self.path, e))?.len();
        crash_point::reached_after(CrashPoint::TornLogWrite, kind, || {
            let _ = f.write_all(&bytes[..bytes.len() / 2]);
        });
        if let Err(e) = self.write_and_sync(&mut f, &bytes, kind) {
            // Whatever reached the file is cut off: left there, the next line would be glued
            // onto it, or (written whole but not synced) its seq would be used twice.
            if let Err(undo) = self.truncate(&f, before) {
                let why = format!(
                    "appending event #{seq} failed ({e}) and cutting the log back to {before} bytes failed too ({undo}); the log may end in part or all of that event, which was not extended, so nothing more is logged or extended until the agent restarts (the restart cuts an unfinished line off, or extends a whole one as after a crash)",
                    seq = line.seq
                );
                tracing::error!("RTMR3 event log {}: {why}", self.path.display());
                self.poisoned = Some(why.clone());
                return Err(io(&self.path, std::io::Error::other(why)));
            }
            return Err(io(&self.path, e));
        }
        self.lines.push(line);
        self.published.set(self.jsonl());
        Ok(digest)
    }

    fn write_and_sync(
        &mut self,
        f: &mut std::fs::File,
        bytes: &[u8],
        kind: &str,
    ) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.faults.write_fails_after.take() {
            f.write_all(&bytes[..n.min(bytes.len())])?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        f.write_all(bytes)?;
        crash_point::reached(CrashPoint::BetweenWriteAndFsync, kind);
        #[cfg(test)]
        if std::mem::take(&mut self.faults.sync_fails) {
            return Err(std::io::Error::other("injected: fsync failed"));
        }
        f.sync_data()
    }

    fn truncate(&mut self, f: &std::fs::File, len: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut self.faults.truncate_fails) {
            return Err(std::io::Error::other("injected: truncate failed"));
        }
        f.set_len(len)?;
        f.sync_data()
    }

    /// The log as served to clients: the event lines, without the header.
    pub fn jsonl(&self) -> String {
        self.lines
            .iter()
            .filter_map(|l| serde_json::to_string(l).ok())
            .map(|l| l + "\n")
            .collect()
    }
}

/// Cut `path` to `len` bytes and make that durable before anything is appended after it.
fn truncate_durably(path: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_data()
}

/// Where Linux names the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// This boot's id, as the kernel gives it in [`BOOT_ID_PATH`]. There is no fallback: the log
/// is filed under this id, and a made-up one would move this boot's log aside as another
/// boot's (after which a later start could move that one over `.previous-boot`, destroying
/// the only record that explains RTMR3).
pub fn boot_id() -> Result<String, TeeError> {
    read_boot_id(Path::new(BOOT_ID_PATH))
}

/// Longest boot id accepted; the kernel's is a 36-character UUID.
const BOOT_ID_MAX: usize = 64;

/// The boot id in `path`: one line of hex digits and dashes, as the kernel writes it.
pub fn read_boot_id(path: &Path) -> Result<String, TeeError> {
    let refuse = |detail: String| TeeError::BootId {
        path: path.to_path_buf(),
        detail,
    };
    let bytes = crate::fsops::read_limited(path, BOOT_ID_MAX).map_err(|e| refuse(e.to_string()))?;
    if bytes.len() > BOOT_ID_MAX {
        return Err(refuse(format!("more than {BOOT_ID_MAX} bytes")));
    }
    let text = String::from_utf8_lossy(&bytes);
    let id = text.strip_suffix('\n').unwrap_or(&text);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(refuse(format!("{id:?} is not a boot id")));
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sha2::{Digest as _, Sha384};
    use tdx_core::measure::rtmr3_log::replay;

    fn ev(n: u64) -> Event {
        Event {
            kind: "test".into(),
            data: json!({"n": n}),
        }
    }

    #[test]
    fn append_replay_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtmr3.jsonl");
        let mut log = Rtmr3Log::open(&path, "boot-a").unwrap();
        let d1 = log.append(ev(1)).unwrap();
        let d2 = log.append(ev(2)).unwrap();
        let expected = replay([&d1, &d2]);
        assert_eq!(log.expected_rtmr3().unwrap(), expected);
        let again = Rtmr3Log::open(&path, "boot-a").unwrap();
        assert_eq!(again.lines.len(), 2);
        assert_eq!(again.expected_rtmr3().unwrap(), expected);
        // The digest is SHA-384 of the JCS bytes of {"data":{"n":1},"type":"test"}.
        assert_eq!(
            d1,
            <[u8; 48]>::from(Sha384::digest(br#"{"data":{"n":1},"type":"test"}"#))
        );
        // Another boot starts afresh and keeps the old log aside.
        let fresh = Rtmr3Log::open(&path, "boot-b").unwrap();
        assert!(fresh.lines.is_empty());
        assert!(path.with_extension("previous-boot").exists());
    }

    #[test]
    fn the_published_text_follows_every_append_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtmr3.jsonl");
        let mut log = Rtmr3Log::open(&path, "boot-a").unwrap();
        let published = log.published();
        assert_eq!(&*published.jsonl(), "");
        log.append(ev(1)).unwrap();
        log.append(ev(2)).unwrap();
        assert_eq!(&*published.jsonl(), log.jsonl());
        assert_eq!(published.jsonl().lines().count(), 2);
        let again = Rtmr3Log::open(&path, "boot-a").unwrap();
        assert_eq!(&*again.published().jsonl(), log.jsonl());
    }

    #[test]
    fn an_edited_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtmr3.jsonl");
        let mut log = Rtmr3Log::open(&path, "b").unwrap();
        log.append(ev(1)).unwrap();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"n\":1", "\"n\":7");
        std::fs::write(&path, text).unwrap();
        let err = Rtmr3Log::open(&path, "b").err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn recovery_names_the_one_pending_event_or_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtmr3.jsonl");
        let mut log = Rtmr3Log::open(&path, "b").unwrap();
        assert_eq!(log.recovery(&[0; 48]).unwrap(), Recovery::Replays);
        assert!(matches!(
            log.recovery(&[1; 48]).unwrap(),
            Recovery::Mismatch { expected } if expected == [0; 48]
        ));
        let d1 = log.append(ev(1)).unwrap();
        // Logged, not extended: the register is still zero.
        assert_eq!(
            log.recovery(&[0; 48]).unwrap(),
            Recovery::ExtendLast {
                seq: 1,
                kind: "test".into(),
                digest: d1
            }
        );
        let after_one = replay([&d1]);
        assert_eq!(log.recovery(&after_one).unwrap(), Recovery::Replays);
        let d2 = log.append(ev(2)).unwrap();
        let after_two = replay([&d1, &d2]);
        assert_eq!(
            log.recovery(&after_one).unwrap(),
            Recovery::ExtendLast {
                seq: 2,
                kind: "test".into(),
                digest: d2
            }
        );
        assert_eq!(log.recovery(&after_two).unwrap(), Recovery::Replays);
        // Two events behind is not a crash of this agent (it extends each event before
        // logging the next): refused, never caught up.
        assert!(matches!(
            log.recovery(&[0; 48]).unwrap(),
            Recovery::Mismatch { expected } if expected == after_two
        ));
        // Extended twice, or by someone else: refused.
        let twice = replay([&d1, &d2, &d2]);
        assert!(matches!(
            log.recovery(&twice).unwrap(),
            Recovery::Mismatch { .. }
        ));
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtmr3.jsonl");
        let mut log = Rtmr3Log::open(&path, "b").unwrap();
        let d1 = log.append(ev(1)).unwrap();
        let whole = std::fs::read_to_string(&path).unwrap();
        // What a kill in the middle of the second append's write leaves.
        let line = serde_json::to_string(&LogLine {
            seq: 2,
            rtmr: 3,
            digest: hex::encode(ev(2).digest().unwrap()),
            event: ev(2),
        })
        .unwrap();
        let torn = &line[..line.len() / 2];
        std::fs::write(&path, format!("{whole}{torn}")).unwrap();
        let mut log = Rtmr3Log::open(&path, "b").unwrap();
        assert_eq!(log.dropped_torn_line.as_deref(), Some(torn));
        assert_eq!(log.lines.len(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
        assert_eq!(log.recovery(&replay([&d1])).unwrap(), Recovery::Replays);
        // The next append starts on a line of its own.
        let d2 = log.append(ev(2)).unwrap();
        let again = Rtmr3Log::open(&path, "b").unwrap();
        assert!(again.dropped_torn_line.is_none());
        assert_eq!(again.expected_rtmr3().unwrap(), replay([&d1, &d2]));

        // Cut inside a multi-byte character: still only the torn line goes.
        let wide = serde_json::to_string(&LogLine {
            seq: 2,
            rtmr: 3,
            digest: hex::encode(ev(2).digest().unwrap()),
            event: Event {
                kind: "test".into(),
                data: json!({"name": "模型"}),
            },
        })
        .unwrap();
        let cut = wide.find('模').unwrap() + 1;
        let mut torn_bytes = whole.clone().into_bytes();
        torn_bytes.extend_from_slice(&wide.as_bytes()[..cut]);
        std::fs::write(&path, torn_bytes).unwrap();
        let log = Rtmr3Log::open(&path, "b").unwrap();
        assert!(log.dropped_torn_line.is_some());
        assert_eq!(log.lines.len(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);

        // A whole line that only lacks its newline was not finished either: cut off too.
        std::fs::write(&path, format!("{whole}{line}")).unwrap();
        let log = Rtmr3Log::open(&path, "b").unwrap();
        assert_eq!(log.dropped_torn_line.as_deref(), Some(line.as_str()));
        assert_eq!(log.lines.len(), 1);
    }

    #[test]
    fn a_failed_append_leaves_whole_lines_and_the_next_one_follows_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtmr3.jsonl");
        let mut log = Rtmr3Log::open(&path, "b").unwrap();
        let d1 = log.append(ev(1)).unwrap();
        let whole = std::fs::read(&path).unwrap();

        // The disk fills part-way through the line.
        log.faults.write_fails_after = Some(20);
        let err = log.append(ev(2)).unwrap_err().to_string();
        assert!(err.contains("no space left"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the partial line stayed"
        );
        assert_eq!(log.lines.len(), 1);

        // The line is written whole but the fsync fails: it is not kept either, or the next
        // append would log a second event #2.
        log.faults.sync_fails = true;
        let err = log.append(ev(2)).unwrap_err().to_string();
        assert!(err.contains("fsync failed"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the unsynced line stayed"
        );

        let d2 = log.append(ev(3)).unwrap();
        assert_eq!(log.lines.last().unwrap().seq, 2);
        let again = Rtmr3Log::open(&path, "b").unwrap();
        assert!(again.dropped_torn_line.is_none());
        assert_eq!(again.lines.len(), 2);
        assert_eq!(again.expected_rtmr3().unwrap(), replay([&d1, &d2]));
    }

    #[test]
    fn a_failed_append_that_cannot_be_undone_stops_further_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtmr3.jsonl");
        let mut log = Rtmr3Log::open(&path, "b").unwrap();
        let d1 = log.append(ev(1)).unwrap();
        log.faults.write_fails_after = Some(20);
        log.faults.truncate_fails = true;
        let err = log.append(ev(2)).unwrap_err().to_string();
        assert!(
            err.contains("no space left") && err.contains("truncate failed"),
            "{err}"
        );
        // Nothing is glued onto the partial line: every later append is refused, saying why.
        let len = std::fs::metadata(&path).unwrap().len();
        for n in 3..5 {
            let err = log.append(ev(n)).unwrap_err().to_string();
            assert!(err.contains("until the agent restarts"), "{err}");
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_eq!(log.lines.len(), 1);
        // The restart cuts the partial line off and goes on.
        let mut log = Rtmr3Log::open(&path, "b").unwrap();
        assert!(log.dropped_torn_line.is_some());
        let d2 = log.append(ev(2)).unwrap();
        let again = Rtmr3Log::open(&path, "b").unwrap();
        assert_eq!(again.expected_rtmr3().unwrap(), replay([&d1, &d2]));
    }

    #[test]
    fn an_unreadable_or_odd_boot_id_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot_id");
        let err = read_boot_id(&path).unwrap_err();
        assert!(
            matches!(&err, TeeError::BootId { path: p, .. } if p == &path),
            "{err}"
        );
        assert!(
            err.to_string().contains(path.to_str().unwrap())
                && err.to_string().contains("refuses to start"),
            "{err}"
        );
        for bad in [&b""[..], b"\n", b"not a uuid\n", &[b'a'; 100]] {
            std::fs::write(&path, bad).unwrap();
            let err = read_boot_id(&path).unwrap_err();
            assert!(matches!(err, TeeError::BootId { .. }), "{bad:?}: {err}");
        }
        std::fs::write(&path, "0f5c2ad4-9a8e-4f0e-8b1e-3c2d1e0f9a8b\n").unwrap();
        assert_eq!(
            read_boot_id(&path).unwrap(),
            "0f5c2ad4-9a8e-4f0e-8b1e-3c2d1e0f9a8b"
        );
        // This machine's own, where it has one.
        if Path::new(BOOT_ID_PATH).exists() {
            assert_eq!(boot_id().unwrap().len(), 36);
        }
    }

    #[test]
    fn a_torn_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rtmr3.jsonl");
        std::fs::write(&path, r#"{"boot_id":"#).unwrap();
        let err = Rtmr3Log::open(&path, "b").err().unwrap().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
