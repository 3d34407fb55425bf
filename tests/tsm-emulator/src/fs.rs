//! The FUSE side: inodes, open files and the mapping of each file operation onto the emulated
//! kernel in `tsm.rs`.
//!
//! ```text
//! MOUNTDIR/report/NAME/{inblob,outblob,generation,provider}    configfs-tsm
//! MOUNTDIR/measurements/{mrtd:sha384,rtmr0:sha384..,mr*}       TDX measurement registers
//! MOUNTDIR/.control/{provider,fail_next,...,stats}             the emulator's switches
//! ```
//!
//! Every file is opened with FOPEN_DIRECT_IO, so each read() and write() reaches us as it was
//! made (no page cache, no size-based clipping). Operations on report entries that take the
//! kernel's tsm lock run on one FIFO worker thread, so waiters queue in arrival order and the
//! FUSE loop itself never blocks (lookups, control files and registers stay responsive while
//! a quote is being made).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::tsm::{Control, Entry, INBLOB_MAX, Kernel, Register};

/// Nothing is cached by the kernel: entries come and go, and registers change.
const TTL: Duration = Duration::ZERO;
/// configfs and sysfs report PAGE_SIZE for text attributes; readers must not trust it.
const ATTR_SIZE: u64 = 4096;
/// sysfs reports a binary attribute's declared size: 48 for a SHA-384 register.
const REGISTER_SIZE: u64 = 48;

const INO_ROOT: u64 = 1;
const INO_REPORT: u64 = 2;
const INO_MEASUREMENTS: u64 = 3;
const INO_CONTROL: u64 = 4;
const INO_REGISTER_BASE: u64 = 100;
const INO_CONTROL_BASE: u64 = 200;
/// Entry `id` is directory `ENTRY_BASE + id * 8`, its attributes the next four inodes.
const ENTRY_BASE: u64 = 1 << 32;

/// A report entry's attribute files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    Inblob,
    Outblob,
    Generation,
    Provider,
}

impl Attr {
    const ALL: [Attr; 4] = [
        Attr::Inblob,
        Attr::Outblob,
        Attr::Generation,
        Attr::Provider,
    ];

    fn name(self) -> &'static str {
        match self {
            Attr::Inblob => "inblob",
            Attr::Outblob => "outblob",
            Attr::Generation => "generation",
            Attr::Provider => "provider",
        }
    }

    fn index(self) -> u64 {
        match self {
            Attr::Inblob => 1,
            Attr::Outblob => 2,
            Attr::Generation => 3,
            Attr::Provider => 4,
        }
    }

    /// configfs modes: inblob is write-only, the rest read-only.
    fn perm(self) -> u16 {
        match self {
            Attr::Inblob => 0o200,
            _ => 0o444,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Root,
    ReportDir,
    MeasurementsDir,
    ControlDir,
    Register(Register),
    Control(Control),
    Entry(u64),
    EntryAttr(u64, Attr),
}

impl Node {
    fn ino(self) -> u64 {
        match self {
            Node::Root => INO_ROOT,
            Node::ReportDir => INO_REPORT,
            Node::MeasurementsDir => INO_MEASUREMENTS,
            Node::ControlDir => INO_CONTROL,
            Node::Register(r) => INO_REGISTER_BASE + position(&Register::ALL, &r),
            Node::Control(c) => INO_CONTROL_BASE + position(&Control::ALL, &c),
            Node::Entry(id) => ENTRY_BASE + id * 8,
            Node::EntryAttr(id, a) => ENTRY_BASE + id * 8 + a.index(),
        }
    }

    fn from_ino(ino: u64) -> Option<Node> {
        Some(match ino {
            INO_ROOT => Node::Root,
            INO_REPORT => Node::ReportDir,
            INO_MEASUREMENTS => Node::MeasurementsDir,
            INO_CONTROL => Node::ControlDir,
            i if i >= ENTRY_BASE => {
                let rel = i - ENTRY_BASE;
                let (id, k) = (rel / 8, rel % 8);
                if k == 0 {
                    Node::Entry(id)
                } else {
                    Node::EntryAttr(id, *Attr::ALL.iter().find(|a| a.index() == k)?)
                }
            }
            i if i >= INO_CONTROL_BASE => {
                Node::Control(*Control::ALL.get(usize::try_from(i - INO_CONTROL_BASE).ok()?)?)
            }
            i if i >= INO_REGISTER_BASE => {
                Node::Register(*Register::ALL.get(usize::try_from(i - INO_REGISTER_BASE).ok()?)?)
            }
            _ => return None,
        })
    }

    fn kind(self) -> FileType {
        match self {
            Node::Root
            | Node::ReportDir
            | Node::MeasurementsDir
            | Node::ControlDir
            | Node::Entry(_) => FileType::Directory,
            _ => FileType::RegularFile,
        }
    }
}

fn position<T: PartialEq>(all: &[T], x: &T) -> u64 {
    all.iter().position(|y| y == x).unwrap_or(0) as u64
}

/// One open file.
struct Handle {
    node: Node,
    /// Held so an entry removed while open still answers (configfs keeps it alive too).
    entry: Option<Arc<Entry>>,
    /// inblob: the bytes written since open, committed at flush (configfs: at close).
    pending: Vec<u8>,
    dirty: bool,
    /// A text or binary configfs attribute is read once per open file and served from here.
    snapshot: Option<Arc<Vec<u8>>>,
}

type Job = Box<dyn FnOnce() + Send>;

struct Shared {
    kernel: Kernel,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn entry(&self, id: u64) -> Option<Arc<Entry>> {
        self.kernel.entry_by_id(id)
    }

    /// Whether `node` exists right now.
    fn exists(&self, node: Node) -> bool {
        match node {
            Node::Entry(id) | Node::EntryAttr(id, _) => self.entry(id).is_some(),
            _ => true,
        }
    }

    fn attr(&self, node: Node) -> FileAttr {
        let (perm, size, nlink) = match node {
            Node::Root => (0o755, 0, 5),
            Node::ReportDir => (0o755, 0, 2),
            Node::MeasurementsDir | Node::ControlDir => (0o755, 0, 2),
            Node::Entry(_) => (0o755, 0, 2),
            Node::Register(r) => (if r.writable() { 0o644 } else { 0o444 }, REGISTER_SIZE, 1),
            Node::Control(c) => (if c.writable() { 0o600 } else { 0o400 }, ATTR_SIZE, 1),
            Node::EntryAttr(_, a) => (a.perm(), ATTR_SIZE, 1),
        };
        FileAttr {
            ino: INodeNo(node.ino()),
            size,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind: node.kind(),
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The children of a directory, in readdir order.
    fn children(&self, dir: Node) -> Option<Vec<(String, Node)>> {
        Some(match dir {
            Node::Root => vec![
                ("report".into(), Node::ReportDir),
                ("measurements".into(), Node::MeasurementsDir),
                (".control".into(), Node::ControlDir),
            ],
            Node::ReportDir => self
                .kernel
                .entries()
                .into_iter()
                .map(|e| (e.name.clone(), Node::Entry(e.id)))
                .collect(),
            Node::MeasurementsDir => Register::ALL
                .iter()
                .map(|r| (r.file_name().to_owned(), Node::Register(*r)))
                .collect(),
            Node::ControlDir => Control::ALL
                .iter()
                .map(|c| (c.name().to_owned(), Node::Control(*c)))
                .collect(),
            Node::Entry(id) => Attr::ALL
                .iter()
                .map(|a| (a.name().to_owned(), Node::EntryAttr(id, *a)))
                .collect(),
            _ => return None,
        })
    }

    fn parent(&self, dir: Node) -> Node {
        match dir {
            Node::Entry(_) => Node::ReportDir,
            _ => Node::Root,
        }
    }
}

/// The mounted file system.
pub struct TsmFs {
    shared: Arc<Shared>,
    /// The one FIFO worker that takes the tsm lock.
    worker: mpsc::Sender<Job>,
}

impl TsmFs {
    pub fn new(kernel: Kernel, uid: u32, gid: u32) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tsm-lock".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        Ok(TsmFs {
            shared: Arc::new(Shared {
                kernel,
                handles: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                uid,
                gid,
                started: SystemTime::now(),
            }),
            worker: tx,
        })
    }

    /// Run `job` behind every earlier report operation.
    fn queue(&self, job: impl FnOnce(&Shared) + Send + 'static) {
        let shared = Arc::clone(&self.shared);
        // The worker lives as long as the sender; a send can only fail at shutdown, when
        // the dropped reply answers EIO by itself.
        let _ = self.worker.send(Box::new(move || job(&shared)));
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        let node = Node::from_ino(ino.0).ok_or(Errno::ENOENT)?;
        if self.shared.exists(node) {
            Ok(node)
        } else {
            Err(Errno::ENOENT)
        }
    }
}

/// `data[offset..offset + size]`, empty past the end.
fn window(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}

impl Filesystem for TsmFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.node(parent).ok().and_then(|dir| {
            let name = name.to_str()?;
            if dir == Node::ReportDir {
                // Straight from the namespace: no listing of every entry per lookup.
                return self.shared.kernel.entry(name).map(|e| Node::Entry(e.id));
            }
            self.shared
                .children(dir)?
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, node)| node)
        });
        match found {
            Some(node) => reply.entry(&TTL, &self.shared.attr(node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &self.shared.attr(node)),
            Err(e) => reply.error(e),
        }
    }

    /// Only so `open(O_TRUNC)` works (the kernel truncates through setattr first); attributes
    /// have no length to change, as in configfs.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &self.shared.attr(node)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        if self.node(parent) != Ok(Node::ReportDir) {
            return reply.error(Errno::EPERM);
        }
        let Some(name) = name.to_str() else {
            return reply.error(Errno::EINVAL);
        };
        match self.shared.kernel.mkdir(name) {
            Ok(e) => reply.entry(&TTL, &self.shared.attr(Node::Entry(e.id)), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.node(parent) != Ok(Node::ReportDir) {
            return reply.error(Errno::EPERM);
        }
        match name.to_str() {
            Some(name) => match self.shared.kernel.rmdir(name) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
            None => reply.error(Errno::ENOENT),
        }
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    /// configfs and sysfs have no `create`: a missing attribute stays missing.
    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EACCES);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EACCES);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let (read, write) = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => (true, false),
            OpenAccMode::O_WRONLY => (false, true),
            OpenAccMode::O_RDWR => (true, true),
        };
        // configfs and kernfs refuse an open for a direction the attribute lacks (EACCES).
        let (readable, writable) = match node {
            Node::EntryAttr(_, Attr::Inblob) => (false, true),
            Node::EntryAttr(..) => (true, false),
            Node::Register(r) => (true, r.writable()),
            Node::Control(c) => (true, c.writable()),
            _ => return reply.error(Errno::EISDIR),
        };
        if (read && !readable) || (write && !writable) {
            return reply.error(Errno::EACCES);
        }
        let entry = match node {
            Node::EntryAttr(id, _) => match self.shared.entry(id) {
                Some(e) => Some(e),
                None => return reply.error(Errno::ENOENT),
            },
            _ => None,
        };
        let fh = self.shared.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.handles).insert(
            fh,
            Handle {
                node,
                entry,
                pending: Vec::new(),
                dirty: false,
                snapshot: None,
            },
        );
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (node, entry, snapshot) = match lock(&self.shared.handles).get(&fh.0) {
            Some(h) => (h.node, h.entry.clone(), h.snapshot.clone()),
            None => return reply.error(Errno::EBADF),
        };
        match node {
            Node::Register(r) => match self.shared.kernel.register(r) {
                // sysfs binary attributes: every read asks the TDX module afresh.
                Ok(value) => reply.data(window(&value, offset, size)),
                Err(e) => reply.error(e),
            },
            Node::Control(c) => {
                let text = self.shared.kernel.control_text(c);
                reply.data(window(text.as_bytes(), offset, size));
            }
            Node::EntryAttr(_, attr) => {
                if let Some(snap) = snapshot {
                    return reply.data(window(&snap, offset, size));
                }
                let Some(entry) = entry else {
                    return reply.error(Errno::ENOENT);
                };
                self.queue(move |shared| {
                    let content = match attr {
                        Attr::Generation => {
                            Ok(Arc::new(shared.kernel.generation(&entry).into_bytes()))
                        }
                        Attr::Provider => {
                            shared.kernel.provider().map(|p| Arc::new(p.into_bytes()))
                        }
                        Attr::Outblob => shared.kernel.outblob(&entry),
                        Attr::Inblob => Err(Errno::EACCES),
                    };
                    match content {
                        Ok(data) => {
                            if let Some(h) = lock(&shared.handles).get_mut(&fh.0) {
                                h.snapshot = Some(Arc::clone(&data));
                            }
                            reply.data(window(&data, offset, size));
                        }
                        Err(e) => reply.error(e),
                    }
                });
            }
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut handles = lock(&self.shared.handles);
        let Some(h) = handles.get_mut(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let len = data.len() as u32;
        match h.node {
            Node::EntryAttr(_, Attr::Inblob) => {
                // configfs buffers binary attribute writes up to cb_max_size, EFBIG past it.
                let end = usize::try_from(offset)
                    .ok()
                    .and_then(|o| o.checked_add(data.len()));
                let Some(end) = end.filter(|&e| e <= INBLOB_MAX) else {
                    return reply.error(Errno::EFBIG);
                };
                let start = end - data.len();
                if h.pending.len() < end {
                    h.pending.resize(end, 0);
                }
                h.pending[start..end].copy_from_slice(data);
                h.dirty = true;
                reply.written(len);
            }
            Node::Register(Register::Rtmr(r)) => {
                drop(handles);
                match self.shared.kernel.extend(r, offset, data) {
                    Ok(()) => reply.written(len),
                    Err(e) => reply.error(e),
                }
            }
            Node::Control(c) => {
                drop(handles);
                match self.shared.kernel.set_control(c, data) {
                    Ok(()) => reply.written(len),
                    Err(e) => reply.error(e),
                }
            }
            _ => reply.error(Errno::EBADF),
        }
    }

    /// close(): configfs commits a binary attribute's buffered write here, and any error in
    /// the commit is lost (close() reports success).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let commit = match lock(&self.shared.handles).get_mut(&fh.0) {
            Some(h) if h.dirty => {
                h.dirty = false;
                h.entry.clone().map(|e| (e, std::mem::take(&mut h.pending)))
            }
            _ => None,
        };
        match commit {
            Some((entry, data)) => self.queue(move |shared| {
                shared.kernel.commit_inblob(&entry, data);
                reply.ok();
            }),
            None => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.shared.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.node(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let Some(children) = self.shared.children(dir) else {
            return reply.error(Errno::ENOTDIR);
        };
        let parent = self.shared.parent(dir);
        let all = [(".".to_owned(), dir), ("..".to_owned(), parent)]
            .into_iter()
            .chain(children);
        for (i, (name, node)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(node.ino()), (i + 1) as u64, node.kind(), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        let mut nodes = vec![
            Node::Root,
            Node::ReportDir,
            Node::MeasurementsDir,
            Node::ControlDir,
            Node::Entry(1),
            Node::Entry(77),
        ];
        nodes.extend(Register::ALL.map(Node::Register));
        nodes.extend(Control::ALL.map(Node::Control));
        nodes.extend(Attr::ALL.map(|a| Node::EntryAttr(5, a)));
        for n in nodes {
            assert_eq!(Node::from_ino(n.ino()), Some(n), "{n:?}");
        }
        assert_eq!(Node::from_ino(0), None);
        assert_eq!(Node::from_ino(99), None);
        assert_eq!(Node::from_ino(ENTRY_BASE + 8 + 5), None);
    }

    #[test]
    fn window_clips() {
        assert_eq!(window(b"abcdef", 0, 4), b"abcd");
        assert_eq!(window(b"abcdef", 4, 4), b"ef");
        assert_eq!(window(b"abcdef", 6, 4), b"");
        assert_eq!(window(b"abcdef", u64::MAX, 4), b"");
    }
}
