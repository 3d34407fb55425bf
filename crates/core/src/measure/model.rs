//! The model manifest (docs/design.md §7): what `sha256sum` prints for every regular file under the
//! model directory, and the SHA-256 of that text, the digest RTMR3 records for the model.
//!
//! Anyone reproduces it with coreutils (docs/formats.md §10):
//! `(cd DIR && find -L . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0r sha256sum --)`.
//! Where that pipeline would silently skip something (symlink loops, dangling links, fifos,
//! sockets, devices, unreadable entries) or where its output depends on the coreutils version
//! (names sha256sum escapes), this module refuses instead: a measurement that quietly left a
//! file out would attest to less than the operator thinks.
//!
//! Hashing runs on a small pool of std threads (the async runtime never blocks on it), largest
//! files first, so that one big shard does not start last and leave the other cores idle.

use std::fs::{File, Metadata};
use std::io::{self, Read as _};
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest as _, Sha256};

use crate::encoding::hex;

/// Bigger reads stop paying off once a read costs far less than hashing what it returned.
const READ_BUF: usize = 1 << 20;
/// Beyond this, hashing is bound by memory bandwidth and disk, not by cores.
const MAX_THREADS: usize = 8;
/// Symlinked directories can fan a small tree out exponentially without forming a loop; stop
/// long before that exhausts memory. Real model directories hold hundreds of entries.
pub const MAX_ENTRIES: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: symbolic link loop (a directory that contains itself, or a link that resolves to itself)", path.display())]
    Loop { path: PathBuf },
    #[error("{}: dangling symbolic link", path.display())]
    Dangling { path: PathBuf },
    #[error("{}: is a {kind}; only regular files and directories can be measured", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: changed while being hashed ({detail})", path.display())]
    Changed { path: PathBuf, detail: String },
    #[error("{}: no regular files, nothing to measure", path.display())]
    Empty { path: PathBuf },
    #[error("{}: file name is not UTF-8", path.display())]
    NonUtf8 { path: PathBuf },
    #[error("{}: unsupported file name: {reason}; rename it", path.display())]
    UnsupportedName { path: PathBuf, reason: &'static str },
    #[error("{}: more than {limit} entries (files and directories, links followed)", path.display())]
    TooManyEntries { path: PathBuf, limit: usize },
}

/// The measured directory: its files in manifest order and their digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Path relative to the directory (no `./`, `/`-separated) and SHA-256 of the contents,
    /// sorted by path bytes.
    pub files: Vec<(String, [u8; 32])>,
    /// The sum of the files' sizes (each file counted once per path it appears under).
    pub total_bytes: u64,
}

impl Manifest {
    /// The manifest text, byte for byte what the coreutils pipeline prints.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.files.iter().map(|(p, _)| p.len() + 67).sum());
        for (path, digest) in &self.files {
            out.push_str(&hex(digest));
            out.push_str("  ");
            out.push_str(path);
            out.push('\n');
        }
        out
    }

    /// SHA-256 of [`Manifest::text`]: the model's measurement.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.text().as_bytes()).into()
    }
}

/// Measure every regular file under `dir`. Blocking and I/O-heavy: from async code, call it
/// inside `spawn_blocking`.
pub fn manifest(dir: &Path) -> Result<Manifest, ModelError> {
    manifest_with(dir, &|_| {})
}

/// Called with each file's path after its contents were read and before its metadata is
/// checked again: the seam that lets tests change a file mid-hash.
pub(super) type AfterRead<'a> = &'a (dyn Fn(&Path) + Sync);

pub(super) fn manifest_with(dir: &Path, after_read: AfterRead<'_>) -> Result<Manifest, ModelError> {
    manifest_limited(dir, after_read, MAX_ENTRIES)
}

/// [`manifest_with`] with the entry limit as a parameter, so tests need not make a million
/// files to reach it.
pub(super) fn manifest_limited(
    dir: &Path,
    after_read: AfterRead<'_>,
    max_entries: usize,
) -> Result<Manifest, ModelError> {
    let mut items = walk(dir, max_entries)?;
    if items.is_empty() {
        return Err(ModelError::Empty {
            path: dir.to_path_buf(),
        });
    }
    // `sort -z` under LC_ALL=C compares whole relative paths as bytes, so `a-b` sorts before
    // `a/x` ('-' < '/'): not the order of a depth-first walk.
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    let digests = hash_all(dir, &items, after_read)?;
    let total_bytes = items.iter().map(|i| i.stamp.len).sum();
    let files = items.into_iter().map(|i| i.rel).zip(digests).collect();
    Ok(Manifest { files, total_bytes })
}

/// What must not change between listing a file and finishing its hash. ctime is in the set
/// because mtime can be set back by anyone who can write the file, ctime cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn differences(&self, now: &Stamp) -> String {
        let mut what = Vec::new();
        if (self.dev, self.ino) != (now.dev, now.ino) {
            what.push("replaced by another file".to_string());
        }
        if self.len != now.len {
            what.push(format!("size {} became {}", self.len, now.len));
        }
        if self.mtime != now.mtime {
            what.push("modification time changed".into());
        }
        if self.ctime != now.ctime {
            what.push("status change time changed".into());
        }
        what.join(", ")
    }
}

struct Item {
    rel: String,
    path: PathBuf,
    stamp: Stamp,
}

struct Frame {
    id: (u64, u64),
    path: PathBuf,
    rel: String,
    names: std::vec::IntoIter<std::ffi::OsString>,
}

#[cfg(target_os = "linux")]
const ELOOP: i32 = 40;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `stat` (following links) with the failures that matter told apart.
fn stat(path: &Path) -> Result<Metadata, ModelError> {
    std::fs::metadata(path).map_err(|e| {
        #[cfg(target_os = "linux")]
        if e.raw_os_error() == Some(ELOOP) {
            return ModelError::Loop {
                path: path.to_path_buf(),
            };
        }
        if e.kind() == io::ErrorKind::NotFound
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        {
            return ModelError::Dangling {
                path: path.to_path_buf(),
            };
        }
        io_err(path)(e)
    })
}

/// The budget of entries one walk may list: counted as names are read, so a directory with
/// millions of entries is refused once the limit is passed, before all its names are held.
struct Entries<'a> {
    root: &'a Path,
    seen: usize,
    limit: usize,
}

impl Entries<'_> {
    fn count_one(&mut self) -> Result<(), ModelError> {
        self.seen += 1;
        if self.seen > self.limit {
            return Err(ModelError::TooManyEntries {
                path: self.root.to_path_buf(),
                limit: self.limit,
            });
        }
        Ok(())
    }
}

fn open_dir(
    path: PathBuf,
    rel: String,
    id: (u64, u64),
    entries: &mut Entries<'_>,
) -> Result<Frame, ModelError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(io_err(&path))? {
        entries.count_one()?;
        names.push(entry.map_err(io_err(&path))?.file_name());
    }
    // Sorted only so that, of several problems, the same one is reported every run.
    names.sort();
    Ok(Frame {
        id,
        path,
        rel,
        names: names.into_iter(),
    })
}

fn check_name(name: &std::ffi::OsStr, path: &Path) -> Result<String, ModelError> {
    let name = name.to_str().ok_or_else(|| ModelError::NonUtf8 {
        path: path.to_path_buf(),
    })?;
    // coreutils 9 escapes `\`, LF and CR (8.x only `\` and LF) and marks the line with a
    // leading `\`; other control characters would reach a terminal raw.
    if name.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(ModelError::UnsupportedName {
            path: path.to_path_buf(),
            reason: "it holds a backslash or a control character, which sha256sum escapes \
                     (and coreutils versions escape differently)",
        });
    }
    Ok(name.to_string())
}

fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Every regular file under `root`, links followed. Iterative so that depth costs heap, not
/// stack; a loop is a directory that is its own ancestor (by device and inode), which catches
/// links and bind mounts alike while still allowing one directory reached by two paths.
fn walk(root: &Path, limit: usize) -> Result<Vec<Item>, ModelError> {
    let meta = stat(root)?;
    if !meta.is_dir() {
        return Err(ModelError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let mut entries = Entries {
        root,
        seen: 0,
        limit,
    };
    let mut stack = vec![open_dir(
        root.to_path_buf(),
        String::new(),
        (meta.dev(), meta.ino()),
        &mut entries,
    )?];
    let mut items = Vec::new();
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.next() else {
            stack.pop();
            continue;
        };
        let path = top.path.join(&name);
        let name = check_name(&name, &path)?;
        let rel = if top.rel.is_empty() {
            name
        } else {
            format!("{}/{name}", top.rel)
        };
        let meta = stat(&path)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let id = (meta.dev(), meta.ino());
            if stack.iter().any(|f| f.id == id) {
                return Err(ModelError::Loop { path });
            }
            stack.push(open_dir(path, rel, id, &mut entries)?);
        } else if ft.is_file() {
            if rel == "-" {
                return Err(ModelError::UnsupportedName {
                    path,
                    reason: "sha256sum reads `-` as standard input",
                });
            }
            items.push(Item {
                rel,
                path,
                stamp: Stamp::of(&meta),
            });
        } else {
            return Err(ModelError::NotRegular {
                path,
                kind: kind(ft),
            });
        }
    }
    Ok(items)
}

/// A file swapped for a fifo after the walk would block `open` forever; O_NONBLOCK makes that
/// open return at once (and then fail the regular-file check). It is a no-op on regular files.
fn open_read(path: &Path) -> io::Result<File> {
    tdx_fsutil::open_nonblocking(path)
}

fn hash_one(
    item: &Item,
    buf: &mut [u8],
    after_read: AfterRead<'_>,
) -> Result<[u8; 32], ModelError> {
    let path = &item.path;
    let changed = |detail: String| ModelError::Changed {
        path: path.clone(),
        detail,
    };
    let mut file = open_read(path).map_err(io_err(path))?;
    let opened = file.metadata().map_err(io_err(path))?;
    if !opened.is_file() {
        return Err(ModelError::NotRegular {
            path: path.clone(),
            kind: kind(opened.file_type()),
        });
    }
    let before = Stamp::of(&opened);
    if before != item.stamp {
        return Err(changed(format!(
            "since it was listed: {}",
            item.stamp.differences(&before)
        )));
    }
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                let Some(chunk) = buf.get(..n) else {
                    return Err(changed("a read returned more than asked for".into()));
                };
                hasher.update(chunk);
                read += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    after_read(path);
    // The open file shows in-place writes; the path shows a rename over it.
    let after = Stamp::of(&file.metadata().map_err(io_err(path))?);
    let now = Stamp::of(&std::fs::metadata(path).map_err(io_err(path))?);
    if after != before {
        return Err(changed(before.differences(&after)));
    }
    if now != before {
        return Err(changed(before.differences(&now)));
    }
    // Also catches files whose size says nothing about their contents (procfs, sysfs).
    if read != before.len {
        return Err(changed(format!(
            "read {read} bytes, its size said {}",
            before.len
        )));
    }
    Ok(hasher.finalize().into())
}

type Outcome = (usize, Result<[u8; 32], ModelError>);

/// Hash `items` on up to [`MAX_THREADS`] threads; digests come back in `items` order. Of the
/// failures found before the workers stop, the one earliest in manifest order is returned.
fn hash_all(
    dir: &Path,
    items: &[Item],
    after_read: AfterRead<'_>,
) -> Result<Vec<[u8; 32]>, ModelError> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].stamp.len));
    let threads = std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .clamp(1, MAX_THREADS)
        .min(items.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || {
        let mut buf = vec![0u8; READ_BUF];
        let mut out: Vec<Outcome> = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let r = hash_one(&items[i], &mut buf, after_read);
            if r.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            out.push((i, r));
        }
        out
    };
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        // A thread that cannot be spawned only costs parallelism: this thread works too.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("model-hash".into())
                    .spawn_scoped(s, work)
                    .ok()
            })
            .collect();
        let mut all = work();
        for h in helpers {
            match h.join() {
                Ok(v) => all.extend(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    let mut digests: Vec<Option<[u8; 32]>> = vec![None; items.len()];
    let mut first_err: Option<(usize, ModelError)> = None;
    for (i, r) in outcomes {
        match r {
            Ok(d) => digests[i] = Some(d),
            Err(e) => {
                if first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                    first_err = Some((i, e));
                }
            }
        }
    }
    if let Some((_, e)) = first_err {
        return Err(e);
    }
    digests
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ModelError::Io {
            path: dir.to_path_buf(),
            source: io::Error::other("a file was left unhashed"),
        })
}
