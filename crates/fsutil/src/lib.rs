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
/// refused before they are opened, a file that grows past `max` while read is refused too,
/// and one swapped for a FIFO or device between that check and the open is refused on the
/// opened handle (the open does not wait for a FIFO's writer).
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    read_regular_with(path, max, || {})
}

/// [`read_regular`] with `before_open` run between the check by path and the open: the seam
/// that lets a test swap the file in that window.
fn read_regular_with(
    path: &Path,
    max: u64,
    before_open: impl FnOnce(),
) -> std::io::Result<Vec<u8>> {
    // Checked by path first so that a device is never opened at all (opening some has side
    // effects); the opened handle is checked again below, as the path may change meanwhile.
    check_regular(&std::fs::metadata(path)?, max)?;
    before_open();
    let file = open_nonblocking(path)?;
    check_regular(&file.metadata()?, max)?;
    let mut data = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(data)
}

fn check_regular(meta: &std::fs::Metadata, max: u64) -> std::io::Result<()> {
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(too_large(max));
    }
    Ok(())
}

fn too_large(max: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("larger than {max} bytes"),
    )
}

/// Open for reading with O_NONBLOCK, so that a FIFO put in place of the file makes `open`
/// return at once (to fail the regular-file check on the handle) instead of waiting for a
/// writer forever. It changes nothing for regular files. The value is spelled out rather than
/// pulling in libc for one constant; it is 0o4000 on every architecture listed.
pub fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64"
        )
    ))]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        const O_NONBLOCK: i32 = 0o4000;
        o.custom_flags(O_NONBLOCK);
    }
    o.open(path)
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

    /// Make a FIFO at `path` with mkfifo(1).
    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(made.success());
    }

    #[test]
    fn a_fifo_swapped_in_after_the_check_is_refused_without_blocking() {
        use std::os::unix::fs::OpenOptionsExt as _;
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, b"x = 1\n").unwrap();
        let returned = AtomicBool::new(false);
        let hung = AtomicBool::new(false);
        let result = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let r = read_regular_with(&path, 1 << 20, || {
                    std::fs::remove_file(&path).unwrap();
                    mkfifo(&path);
                });
                returned.store(true, Ordering::SeqCst);
                r
            });
            // Unblocks a reader stuck in open (a writer opening the FIFO releases it), so that
            // a regression fails this test instead of hanging it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !returned.load(Ordering::SeqCst) {
                if std::time::Instant::now() > deadline {
                    hung.store(true, Ordering::SeqCst);
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(0o4000)
                        .open(&path);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            reader.join().unwrap()
        });
        assert!(!hung.load(Ordering::SeqCst), "the open blocked on the FIFO");
        let e = result.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    }

    #[test]
    fn a_file_swapped_for_a_larger_one_after_the_check_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, b"x = 1\n").unwrap();
        let e = read_regular_with(&path, 8, || {
            std::fs::write(dir.path().join("big"), [b'#'; 64]).unwrap();
            std::fs::rename(dir.path().join("big"), &path).unwrap();
        })
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }
}
