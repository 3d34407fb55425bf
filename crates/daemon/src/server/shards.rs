//! Connection threads: each runs its own single-threaded tokio runtime and owns the
//! connections it serves, from the TLS handshake to the last byte, as nginx's workers do.
//!
//! On the shared multi-thread runtime a proxied request crossed threads several times (the
//! client connection's task, the upstream connection's task, work stealing between them), and
//! each crossing costs atomics, wake-ups and often a futex; with everything a connection does
//! on one thread, and upstream connections pooled per thread (`proxy::pool`), a request stays
//! where it arrived. Measured: docs/benchmarks.md. The control plane (quotes, challenges'
//! batches, rotation, admin) stays on the main runtime.

use std::cell::Cell;
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

/// The caller's entry in a table of `len` (at least one) with an entry per connection thread
/// and a last one shared by every other thread: the tables that keep what requests write per
/// thread (the upstream pool's idle stacks, the request metrics).
pub fn slot(len: usize) -> usize {
    let other = len.saturating_sub(1);
    current().map_or(other, |i| i.min(other))
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

struct Thread {
    handle: Handle,
    /// Connections it serves now.
    live: AtomicUsize,
}

/// The threads, shared with their accept loops.
pub struct Threads(Box<[Thread]>);

impl Threads {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn handle(&self, index: usize) -> Option<&Handle> {
        self.0.get(index).map(|t| &t.handle)
    }

    /// Where a connection accepted on thread `here` should run: here, unless another thread
    /// serves at least two fewer connections. Whichever thread wakes first wins an accept, so
    /// a burst of connections (a load balancer opening its pool) would otherwise pile onto
    /// one thread; a client that connects, talks and leaves stays where it landed, with no
    /// hand-over on its handshake's path.
    pub fn place(&self, here: usize) -> usize {
        let load = |i: usize| {
            self.0
                .get(i)
                .map_or(usize::MAX, |t| t.live.load(Ordering::Relaxed))
        };
        let (least, min) = (0..self.0.len())
            .map(|i| (i, load(i)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((here, 0));
        if load(here) >= min.saturating_add(2) {
            least
        } else {
            here
        }
    }

    /// Count a connection on thread `index` until the guard is dropped.
    pub fn hold(self: &Arc<Self>, index: usize) -> Live {
        if let Some(t) = self.0.get(index) {
            t.live.fetch_add(1, Ordering::Relaxed);
        }
        Live {
            threads: Arc::clone(self),
            index,
        }
    }
}

/// A connection counted on its thread.
pub struct Live {
    threads: Arc<Threads>,
    index: usize,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(t) = self.threads.0.get(self.index) {
            t.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The running connection threads. Dropping this stops them: the tasks still on them are
/// dropped and the threads exit on their own, so stopping never blocks the caller.
pub struct Shards {
    threads: Arc<Threads>,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Shards {
    /// Start `n` threads (at least one); `yield_before_sleep`: `[limits] yield_before_sleep`.
    pub fn start(n: usize, yield_before_sleep: bool) -> Result<Self, ShardsError> {
        let mut threads = Vec::with_capacity(n.max(1));
        let mut stops = Vec::with_capacity(n.max(1));
        for index in 0..n.max(1) {
            // Linux keeps 15 bytes of a thread's name: short enough to tell them apart in top.
            let mut runtime = tokio::runtime::Builder::new_current_thread();
            if yield_before_sleep {
                // About to sleep in epoll with nothing to do: first let whatever else is
                // runnable on this CPU go (the upstream or the client this thread has just
                // written to, often). Its answer then finds this thread still runnable on the
                // same CPU instead of asleep, to be woken on another, idle one: on a VM that
                // is a halted vCPU and an IPI per wake-up. Nothing runnable: the call returns
                // at once. The price: the kernel's EEVDF scheduler moves a yielding thread's
                // deadline a slice later, so when many threads compete for the CPUs it waits
                // longer for one. Measured both ways: docs/benchmarks.md.
                runtime.on_thread_park(std::thread::yield_now);
            }
            let runtime = runtime
                .enable_all()
                .thread_name(format!("conn-{index}-blocking"))
                .build()
                .map_err(|source| ShardsError::Runtime { index, source })?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("conn-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(Some(index)));
                    // Tasks run only while this thread is inside block_on; the sender's drop
                    // ends it.
                    let _ = runtime.block_on(stopped);
                })
                .map_err(|source| ShardsError::Thread { index, source })?;
            threads.push(Thread {
                handle,
                live: AtomicUsize::new(0),
            });
            stops.push(stop);
        }
        Ok(Shards {
            threads: Arc::new(Threads(threads.into_boxed_slice())),
            _stop: stops,
        })
    }

    pub fn threads(&self) -> &Arc<Threads> {
        &self.threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_stays_where_it_was_accepted_unless_another_thread_is_two_lighter() {
        let shards = Shards::start(3, true).unwrap();
        let t = shards.threads();
        assert_eq!(t.len(), 3);
        assert_eq!(t.place(1), 1, "all idle");
        let a = t.hold(1);
        assert_eq!(t.place(1), 1, "one more than the others: stays");
        let b = t.hold(1);
        assert_eq!(
            t.place(1),
            0,
            "two more than thread 0: moves to the least loaded"
        );
        let _c = t.hold(0);
        let _d = t.hold(2);
        assert_eq!(t.place(1), 1, "thread 1 has 2, the others 1");
        drop((a, b));
        assert_eq!(t.place(0), 0);
        assert_eq!(t.place(1), 1);
    }

    #[tokio::test]
    async fn each_thread_knows_its_index_and_others_have_none() {
        let shards = Shards::start(2, false).unwrap();
        assert_eq!(current(), None);
        for i in 0..2 {
            let seen = shards
                .threads()
                .handle(i)
                .unwrap()
                .spawn(async { current() })
                .await
                .unwrap();
            assert_eq!(seen, Some(i));
        }
        assert!(shards.threads().handle(2).is_none());
    }
}
