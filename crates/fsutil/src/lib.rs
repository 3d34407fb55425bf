//! File writes that never leave a half-written file behind, and reads of configuration files
//! that cannot hang or exhaust memory.
#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Write `data` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then fsync the directory so the rename survives a crash.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |f| f.write_all(data))
}

/// [`write_atomic`] with the content streamed by `fill` (for what is too large to hold in
/// memory): when `fill` fails nothing is renamed into place and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let (tmp, file) = create_temporary(dir, &name)?;
    let result = (|| {
        let mut f = std::io::BufWriter::new(file);
        fill(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Tells apart the temporaries of writers in one process (the pid tells processes apart).
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// A new, empty temporary beside `name` in `dir`, its name never shared with another writer:
/// two writers of one path (the collateral cache) on one temporary would rename each other's
/// half-written bytes into place. `create_new` also refuses to follow a symlink planted
/// under the name; a name left behind by a crashed writer is skipped.
fn create_temporary(dir: &Path, name: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    let pid = std::process::id();
    for _ in 0..64 {
        let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{pid}-{n}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{}: 64 temporary names for {name} were all taken; remove the stale .{name}.tmp-* files",
            dir.display()
        ),
    ))
}

/// Read `path` (symlinks followed) if it is a regular file of at most `max` bytes. A FIFO
/// would block the read forever and a device such as `/dev/zero` would never end: both are
/// refused before they are opened, and a file that grows past `max` while read is refused too.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        )
    };
    if meta.len() > max {
        return Err(too_large());
    }
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(too_large());
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_write_that_fails_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, b"old\n").unwrap();
        let e = write_atomic_with(&path, |f| {
            f.write_all(b"half of it")?;
            Err(std::io::Error::other("the source broke"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("the source broke"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a temporary was left"
        );
        write_atomic_with(&path, |f| f.write_all(b"new\n")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
    }

    #[test]
    fn writers_of_one_path_in_one_process_never_mix_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.json");
        // Large enough that a write shared with another writer's temporary is torn, not
        // merely reordered.
        let contents: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'a' + i; 256 * 1024]).collect();
        std::thread::scope(|s| {
            for c in &contents {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..25 {
                        write_atomic(path, c).unwrap();
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..200 {
                    if let Ok(now) = std::fs::read(&path) {
                        assert!(
                            contents.contains(&now),
                            "{} bytes that no writer wrote whole",
                            now.len()
                        );
                    }
                }
            });
        });
        let last = std::fs::read(&path).unwrap();
        assert!(contents.contains(&last));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a temporary was left"
        );
    }

    #[test]
    fn a_symlink_where_a_temporary_would_go_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        // The name temporaries used to have, and the next ones this process could take.
        let pid = std::process::id();
        let next = TEMPORARIES.load(Ordering::Relaxed);
        let names = std::iter::once(format!(".out.tmp-{pid}"))
            .chain((next..next + 8).map(|n| format!(".out.tmp-{pid}-{n}")));
        for name in names {
            std::os::unix::fs::symlink(&target, dir.path().join(name)).unwrap();
        }
        let path = dir.path().join("out");
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn reads_only_regular_files_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, b"x = 1\n").unwrap();
        assert_eq!(read_regular(&ok, 6).unwrap(), b"x = 1\n");
        let e = read_regular(&ok, 5).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        // A symlink to a regular file is followed (ConfigMap volumes are made of them).
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert_eq!(read_regular(&link, 64).unwrap(), b"x = 1\n");
        // A FIFO would block, /dev/zero would never end, a directory is no file: refused
        // before any read (the test would hang on the FIFO otherwise).
        let fifo = dir.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for p in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            let e = read_regular(p, 1 << 20).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::InvalidInput,
                "{}: {e}",
                p.display()
            );
        }
    }
}
