//! The RTMR3 event log of this boot on disk: every runtime measurement is written here
//! (fsynced) before it is extended, so the log always explains RTMR3. It lives on tmpfs (/run)
//! and records the boot id: it vanishes at reboot exactly when the registers reset.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tdx_core::measure::rtmr3_log::{Event, LogLine, Rtmr3LogError, parse_lines, replay_lines};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    boot_id: String,
}

/// The log of this boot.
pub struct Rtmr3Log {
    path: PathBuf,
    pub lines: Vec<LogLine>,
}

impl Rtmr3Log {
    /// Open (or start) the log at `path` for the boot `boot_id`. A log from another boot is
    /// moved aside: its registers no longer exist.
    pub fn open(path: &Path, boot_id: &str) -> Result<Self, Rtmr3LogError> {
        let io = |source| Rtmr3LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
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
        })
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
        })
    }

    /// What RTMR3 must be if every logged event was extended.
    pub fn expected_rtmr3(&self) -> Result<[u8; 48], Rtmr3LogError> {
        replay_lines(&self.lines)
    }

    /// Record `event` durably (written and fsynced) and return its digest; the caller
    /// extends RTMR3 only after this returns.
    pub fn append(&mut self, event: Event) -> Result<[u8; 48], Rtmr3LogError> {
        let digest = event.digest()?;
        let line = LogLine {
            seq: self.lines.len() as u64 + 1,
            rtmr: 3,
            digest: hex::encode(digest),
            event,
        };
        let text = serde_json::to_string(&line).map_err(|e| Rtmr3LogError::Event(e.to_string()))?;
        let io = |source| Rtmr3LogError::Io {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(format!("{text}\n").as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)?;
        self.lines.push(line);
        Ok(digest)
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

/// This boot's id (Linux), or a fixed id where the kernel has none to give.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-boot".into())
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
}
