//! The async face of the audit log: a dedicated thread owns the [`AuditWriter`], so fsyncs
//! never block the runtime and appends from many tasks are serialised in arrival order.

use super::AuditEvent;
use super::writer::{Appended, AuditError, AuditOptions, AuditWriter};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

enum Request {
    Append(AuditEvent, oneshot::Sender<Result<Appended, AuditError>>),
    Close(oneshot::Sender<Result<(), AuditError>>),
}

#[derive(Clone, Copy, Debug)]
struct Chain {
    head: [u8; 32],
    last_seq: u64,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Request>,
    chain: Arc<Mutex<Chain>>,
    dir: PathBuf,
}

/// Cheap to clone; all clones feed the same writer thread. The thread writes any pending
/// suppression summaries and exits when the last clone is dropped or [`AuditLog::close`] is
/// called.
#[derive(Clone, Debug)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Append(e, _) => write!(f, "Append({})", e.type_name()),
            Self::Close(_) => write!(f, "Close"),
        }
    }
}

impl AuditLog {
    /// Open (or resume) the log in `dir`; see [`AuditWriter::open`].
    pub async fn open(dir: impl Into<PathBuf>, options: AuditOptions) -> Result<Self, AuditError> {
        let dir = dir.into();
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let interval = options.flush_interval;
        let thread_dir = dir.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let writer = match AuditWriter::open(&thread_dir, options) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let chain = Arc::new(Mutex::new(Chain {
                    head: writer.head(),
                    last_seq: writer.last_seq(),
                }));
                if ready_tx.send(Ok(chain.clone())).is_err() {
                    return;
                }
                run(writer, rx, chain, interval);
            })
            .map_err(|source| AuditError::Io {
                op: "start the writer thread for",
                path: dir.clone(),
                source,
            })?;
        let chain = ready_rx.await.map_err(|_| AuditError::WriterGone)??;
        Ok(Self {
            inner: Arc::new(Inner { tx, chain, dir }),
        })
    }

    /// Append one event; resolves once it is fsynced (or with the reason it is not logged).
    pub async fn append(&self, event: AuditEvent) -> Result<Appended, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Request::Append(event, tx))
            .map_err(|_| AuditError::WriterGone)?;
        rx.await.map_err(|_| AuditError::WriterGone)?
    }

    /// The chain head: SHA-256 of the last line written (32 zero bytes for an empty log).
    /// This is what a challenge quote commits to in REPORTDATA[32..64].
    pub fn head(&self) -> [u8; 32] {
        self.chain().head
    }

    /// Seq of the last record written (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.chain().last_seq
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Write pending suppression summaries and stop the writer; later appends on any clone
    /// fail with [`AuditError::WriterGone`].
    pub async fn close(&self) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Request::Close(tx))
            .map_err(|_| AuditError::WriterGone)?;
        rx.await.map_err(|_| AuditError::WriterGone)?
    }

    fn chain(&self) -> Chain {
        *self
            .inner
            .chain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn run(
    mut writer: AuditWriter,
    rx: mpsc::Receiver<Request>,
    chain: Arc<Mutex<Chain>>,
    interval: std::time::Duration,
) {
    let publish = |w: &AuditWriter| {
        *chain.lock().unwrap_or_else(PoisonError::into_inner) = Chain {
            head: w.head(),
            last_seq: w.last_seq(),
        };
    };
    loop {
        match rx.recv_timeout(interval) {
            Ok(Request::Append(event, reply)) => {
                let result = writer.append(event);
                publish(&writer);
                let _ = reply.send(result);
            }
            Ok(Request::Close(reply)) => {
                let result = writer.finish().map(|_| ());
                publish(&writer);
                let _ = reply.send(result);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = writer.flush_suppressed() {
                    tracing::error!(error = %e, "audit log: cannot write a suppression summary");
                }
                publish(&writer);
            }
            Err(RecvTimeoutError::Disconnected) => {
                if let Err(e) = writer.finish() {
                    tracing::error!(error = %e, "audit log: cannot write suppression summaries at shutdown");
                }
                return;
            }
        }
    }
}
