//! Connection threads: each runs its own single-threaded tokio runtime and owns the
//! connections handed to it, from the TLS handshake to the last byte, as nginx's workers do.
//!
//! On the shared multi-thread runtime a proxied request crossed threads several times (the
//! client connection's task, the upstream connection's task, work stealing between them), and
//! each crossing costs atomics, wake-ups and often a futex; with everything a connection does
//! on one thread, and upstream connections pooled per thread (`proxy::pool`), a request stays
//! where it arrived. Measured: docs/benchmarks.md. The control plane (quotes, challenges'
//! batches, rotation, admin) stays on the main runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// Which connection thread this is; `None` on every other thread.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The connection thread the caller runs on, if any.
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// Why the connection threads could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    #[error("connection thread {index}: cannot build its runtime: {source}")]
    Runtime {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("connection thread {index}: cannot start it: {source}")]
    Thread {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

struct Shard {
    handle: Handle,
    /// Connections it holds now: new ones go to the least loaded thread.
    live: Arc<AtomicUsize>,
    /// Dropped (or sent) to stop the thread; it then drops the tasks it still has and exits
    /// on its own, so stopping never blocks the caller.
    _stop: oneshot::Sender<()>,
}

/// The running connection threads. Dropping this stops them: tasks still on them are dropped.
pub struct Shards {
    shards: Vec<Shard>,
}

impl Shards {
    /// Start `n` threads (at least one).
    pub fn start(n: usize) -> Result<Self, ShardsError> {
        let mut shards = Vec::with_capacity(n.max(1));
        for index in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("tdx-agent-conn-{index}-blocking"))
                .build()
                .map_err(|source| ShardsError::Runtime { index, source })?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("tdx-agent-conn-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(Some(index)));
                    // Tasks run only while this thread is inside block_on.
                    let _ = runtime.block_on(stopped);
                })
                .map_err(|source| ShardsError::Thread { index, source })?;
            shards.push(Shard {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Shards { shards })
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Run the future `make` builds on the least loaded connection thread. `make` runs there
    /// too, so it can take what must be created inside that thread's runtime (a socket
    /// registered with its reactor).
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(shard) = self
            .shards
            .iter()
            .min_by_key(|s| s.live.load(Ordering::Relaxed))
        else {
            return;
        };
        let live = Live::enter(&shard.live);
        shard.handle.spawn(async move {
            let _live = live;
            make().await;
        });
    }
}

/// Counts a connection on its thread until it ends.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Live(Arc::clone(count))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
