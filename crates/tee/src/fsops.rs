//! The file-operation seam under configfs-tsm, so tests can script each kernel behaviour.
//!
//! configfs-tsm is driven entirely by mkdir, rmdir and whole-file reads and writes; keeping
//! those four calls behind [`TsmFs`] lets the protocol in `configfs.rs` be exercised against
//! a fake that returns every errno the kernel documents, without a TDX guest.

use std::io::{Read, Write};
use std::path::Path;

/// The file operations the configfs-tsm protocol needs. Errors keep their raw OS error so the
/// caller can map each errno to what the kernel meant by it.
pub trait TsmFs: Send + Sync {
    /// Create one directory (the parent must exist).
    fn mkdir(&self, path: &Path) -> std::io::Result<()>;

    /// Remove one empty directory. configfs entries are removed with rmdir even though they
    /// hold attribute files.
    fn rmdir(&self, path: &Path) -> std::io::Result<()>;

    /// Open an existing file for writing, write all of `data`, and close it.
    fn write_file(&self, path: &Path, data: &[u8]) -> std::io::Result<()>;

    /// Read a whole file, but never more than `limit + 1` bytes: the caller refuses a file
    /// longer than `limit`, and one byte over is how it tells.
    fn read_file(&self, path: &Path, limit: usize) -> std::io::Result<Vec<u8>>;
}

/// Read `path` to EOF or to `limit + 1` bytes, whichever comes first: a kernel file that
/// answers more than it ever should (a broken driver, or something else mounted in its place)
/// costs a bounded read, and the caller sees that it was too long.
///
/// Not read_to_end: it retries EINTR, and an interrupted quote request is not worth retrying
/// (the host still holds the quote buffer, so the retry only sees EBUSY and the real cause is
/// lost). EINTR goes to the caller, which maps it.
pub fn read_limited(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let stop = limit.saturating_add(1);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while buf.len() < stop {
        let want = chunk.len().min(stop - buf.len());
        match file.read(&mut chunk[..want])? {
            0 => break,
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(buf)
}

/// The real filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl TsmFs for RealFs {
    fn mkdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir(path)
    }

    fn rmdir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        // No create/truncate: configfs attributes already exist, and creating a regular file
        // where an attribute should be would hide a missing-provider error.
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(data)?;
        // configfs binary attributes commit on close() and any error there is lost; the
        // caller detects a failed commit through `generation` and the outblob read instead.
        drop(file);
        Ok(())
    }

    fn read_file(&self, path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
        // Attribute files report a size of 4096 or 0, so read to EOF rather than trusting it.
        read_limited(path, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_fs_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("entry");
        RealFs.mkdir(&dir).unwrap();
        let file = dir.join("inblob");
        std::fs::write(&file, b"").unwrap();
        RealFs.write_file(&file, &[7u8; 64]).unwrap();
        assert_eq!(RealFs.read_file(&file, 64).unwrap(), vec![7u8; 64]);
        std::fs::remove_file(&file).unwrap();
        RealFs.rmdir(&dir).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn real_fs_reads_at_most_one_byte_over_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("outblob");
        std::fs::write(&file, vec![1u8; 100_000]).unwrap();
        assert_eq!(RealFs.read_file(&file, 10).unwrap().len(), 11);
        assert_eq!(RealFs.read_file(&file, 100_000).unwrap().len(), 100_000);
    }

    #[test]
    fn real_fs_write_does_not_create() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("missing");
        let err = RealFs.write_file(&file, b"x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(!file.exists());
    }

    #[test]
    fn real_fs_mkdir_without_parent_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let err = RealFs.mkdir(&tmp.path().join("a/b")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
