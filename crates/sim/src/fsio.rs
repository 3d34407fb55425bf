//! File helpers for the simulation directory: reads that name the file, atomic replacements.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::SimError;

/// A name no other writer (thread or process) uses at the same time, for temp files and dirs.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut rnd = [0u8; 8];
    // A collision only costs a failed create_new below, so a weak fallback is acceptable.
    if getrandom_fill(&mut rnd).is_err() {
        rnd = n.to_le_bytes();
    }
    format!("{}-{}-{}", std::process::id(), n, hex::encode(rnd))
}

fn getrandom_fill(buf: &mut [u8]) -> Result<(), rand_core::Error> {
    use rand_core::RngCore;
    rand_core::OsRng.try_fill_bytes(buf)
}

/// Replace `path` with `bytes` so readers see the old or the new content, never a mix:
/// a temp file in the same directory, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
    let result = (|| {
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| SimError::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| SimError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| SimError::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| SimError::io("rename", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Make a rename durable; the directory entry is what changed.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SimError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SimError::io("fsync", dir, e))
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, SimError> {
    fs::read(path).map_err(|e| SimError::io("read", path, e))
}

pub(crate) fn read_string(path: &Path) -> Result<String, SimError> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|_| SimError::malformed(path, "not UTF-8 text"))
}

pub(crate) fn exists(path: &Path) -> Result<bool, SimError> {
    path.try_exists().map_err(|e| SimError::io("stat", path, e))
}

pub(crate) fn create_dir_all(path: &Path) -> Result<(), SimError> {
    fs::create_dir_all(path).map_err(|e| SimError::io("mkdir", path, e))
}
