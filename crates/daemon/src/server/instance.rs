//! One `serve` per state: a second agent given the same directories would append to the same
//! audit chain (two writers break it), rewrite the same RTMR3 event log and replace the live
//! admin socket, long before its listener found the port taken (or never, on port 0). An
//! exclusive lock on a file in each directory, taken before anything in them is touched and
//! held until the process exits, stops it at the door.

use std::fs::{File, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The lock file's name in the state and audit directories.
pub const LOCK_FILE: &str = "serve.lock";

#[derive(Debug, thiserror::Error)]
pub enum InstanceLockError {
    #[error(
        "another `tdx-agent serve`{holder} holds the lock {path}: it is already running with this directory (state_dir or audit.dir). Stop it first, or give this agent its own state_dir and audit.dir"
    )]
    Held { path: PathBuf, holder: String },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held locks; dropping this (the process exiting) releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _files: Vec<File>,
}

/// Lock `LOCK_FILE` in each of `dirs` (created if missing), or say who holds one. A lock file
/// reached twice (the same directory under two names) is locked once: a second lock of it
/// from this process would conflict with the first.
pub fn acquire(dirs: &[&Path]) -> Result<InstanceLock, InstanceLockError> {
    let mut files: Vec<File> = Vec::new();
    let mut held: Vec<(u64, u64)> = Vec::new();
    for dir in dirs {
        let path = dir.join(LOCK_FILE);
        let io = |source| InstanceLockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let id = (meta.dev(), meta.ino());
        if held.contains(&id) {
            continue;
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // The holder wrote its pid; best effort, for the message only.
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let holder = if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                    format!(" (pid {pid})")
                } else {
                    String::new()
                };
                return Err(InstanceLockError::Held { path, holder });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // For the message a second agent prints; the lock, not this text, is what excludes.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        held.push(id);
        files.push(file);
    }
    Ok(InstanceLock { _files: files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("run");
        let audit = tmp.path().join("audit");
        let first = acquire(&[&state, &audit]).unwrap();
        // Another agent sharing only the audit directory is refused too.
        let other = tmp.path().join("other");
        let err = acquire(&[&other, &audit]).unwrap_err().to_string();
        assert!(
            err.contains(&audit.join(LOCK_FILE).display().to_string())
                && err.contains("another `tdx-agent serve`")
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        let _again = acquire(&[&state, &audit]).unwrap();
    }

    #[test]
    fn one_directory_named_twice_is_locked_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let alias = tmp.path().join("alias");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&dir, &alias).unwrap();
        let _held = acquire(&[&dir, &alias]).unwrap();
        assert!(matches!(
            acquire(&[&dir]),
            Err(InstanceLockError::Held { .. })
        ));
    }
}
