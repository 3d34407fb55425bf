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

    /// Read a whole file.
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>>;
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

    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        // Attribute files report a size of 4096 or 0, so read to EOF rather than trusting it.
        // Not read_to_end: it retries EINTR, and an interrupted quote request is not worth
        // retrying (the host still holds the quote buffer, so the retry only sees EBUSY and
        // the real cause is lost). EINTR goes to the caller, which maps it.
        let mut file = std::fs::File::open(path)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match file.read(&mut chunk)? {
                0 => return Ok(buf),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
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
        assert_eq!(RealFs.read_file(&file).unwrap(), vec![7u8; 64]);
        std::fs::remove_file(&file).unwrap();
        RealFs.rmdir(&dir).unwrap();
        assert!(!dir.exists());
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
