//! The one thread that calls the GPU source, one call at a time: calls made meanwhile (GPUs
//! collected side by side, a probe's beside a client's) wait their turn. A call past the
//! timeout counts as failed; it cannot be cancelled (NVML has no way to), so until it returns
//! no other call is started and every request fails at once saying which call hangs. A panic
//! in the source (nvml-wrapper slices NVML's buffers by the lengths NVML returns) is caught
//! on the thread and becomes a named failure.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{CollectedGpu, GpuSource, GpuSourceError};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Source(#[from] GpuSourceError),
    #[error(
        "{what} did not return within {timeout_secs} s (gpu.timeout_secs); a hung NVML call cannot be cancelled, so no other GPU call is made until it returns"
    )]
    TimedOut {
        index: Option<u32>,
        what: String,
        timeout_secs: u64,
    },
    #[error(
        "{what} has not returned for {secs} s; a hung NVML call cannot be cancelled, so no other GPU call is made until it returns"
    )]
    Hung {
        index: Option<u32>,
        what: String,
        secs: u64,
    },
    #[error("{what} panicked inside the GPU library: {detail}")]
    Panicked {
        index: Option<u32>,
        what: String,
        detail: String,
    },
    #[error("the GPU collection thread has stopped")]
    Gone,
    #[error(
        "the GPU library reports {count} GPUs, more than the {max} a TD's evidence can hold; the driver is broken or lying"
    )]
    TooMany { count: u32, max: usize },
}

impl CollectorError {
    /// The GPU the failure is about, where it is about one.
    pub fn index(&self) -> Option<u32> {
        match self {
            CollectorError::Source(e) => e.index,
            CollectorError::TimedOut { index, .. }
            | CollectorError::Hung { index, .. }
            | CollectorError::Panicked { index, .. } => *index,
            CollectorError::Gone | CollectorError::TooMany { .. } => None,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, CollectorError>>;

enum Job {
    Count(Reply<u32>),
    Collect {
        index: u32,
        nonce: [u8; 32],
        reply: Reply<CollectedGpu>,
    },
}

impl Job {
    fn abandoned(&self) -> bool {
        match self {
            Job::Count(reply) => reply.is_closed(),
            Job::Collect { reply, .. } => reply.is_closed(),
        }
    }

    /// The GPU the call is about, if one, and the call as errors name it.
    fn describe(&self) -> (Option<u32>, String) {
        match self {
            Job::Count(_) => (None, "counting the GPUs".to_string()),
            Job::Collect { index, .. } => {
                (Some(*index), format!("collecting GPU {index}'s evidence"))
            }
        }
    }

    fn in_flight(&self) -> InFlight {
        let (index, what) = self.describe();
        InFlight {
            index,
            what,
            since: Instant::now(),
        }
    }
}

/// The call on the thread now, and since when.
struct InFlight {
    index: Option<u32>,
    what: String,
    since: Instant,
}

pub struct Collector {
    jobs: Mutex<mpsc::Sender<Job>>,
    in_flight: Arc<Mutex<Option<InFlight>>>,
    timeout: Duration,
    describe: String,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("source", &self.describe)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn panic_detail(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `f` on the thread, turning a panic into [`CollectorError::Panicked`].
fn guarded<T>(
    index: Option<u32>,
    what: &str,
    f: impl FnOnce() -> Result<T, GpuSourceError>,
) -> Result<T, CollectorError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(CollectorError::Source),
        Err(p) => Err(CollectorError::Panicked {
            index,
            what: what.to_string(),
            detail: panic_detail(p.as_ref()),
        }),
    }
}

impl Collector {
    /// Start the thread and open the source on it (opening blocks too: NVML loads the
    /// driver's library and initialises every GPU).
    pub async fn open<F>(open: F, timeout: Duration) -> Result<Collector, CollectorError>
    where
        F: FnOnce() -> Result<Box<dyn GpuSource>, GpuSourceError> + Send + 'static,
    {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (opened_tx, opened_rx) = oneshot::channel::<Result<String, CollectorError>>();
        let in_flight = Arc::new(Mutex::new(Some(InFlight {
            index: None,
            what: "opening the GPU source".into(),
            since: Instant::now(),
        })));
        let thread_flight = Arc::clone(&in_flight);
        std::thread::Builder::new()
            .name("gpu-collector".into())
            .spawn(move || {
                let opened = guarded(None, "opening the GPU source", open);
                *lock(&thread_flight) = None;
                let mut source = match opened {
                    Ok(s) => {
                        let _ = opened_tx.send(Ok(s.describe()));
                        s
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                for job in rx {
                    // A caller that gave up (its timeout passed while an earlier call ran)
                    // wants no answer: no NVML call for it.
                    if job.abandoned() {
                        continue;
                    }
                    *lock(&thread_flight) = Some(job.in_flight());
                    match job {
                        Job::Count(reply) => {
                            let r = guarded(None, "counting the GPUs", || source.count());
                            *lock(&thread_flight) = None;
                            let _ = reply.send(r);
                        }
                        Job::Collect {
                            index,
                            nonce,
                            reply,
                        } => {
                            let r = guarded(Some(index), "collecting the GPU's evidence", || {
                                source.collect(index, &nonce)
                            });
                            *lock(&thread_flight) = None;
                            if reply.send(r).is_err() {
                                tracing::warn!(
                                    gpu = index,
                                    "a GPU call that had timed out returned; GPU calls resume"
                                );
                            }
                        }
                    }
                }
            })
            .map_err(|e| {
                CollectorError::Source(GpuSourceError::new(None, "starting the GPU thread", e))
            })?;
        let describe = match tokio::time::timeout(timeout, opened_rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(CollectorError::Gone),
            Err(_) => {
                return Err(CollectorError::TimedOut {
                    index: None,
                    what: "opening the GPU source".into(),
                    timeout_secs: timeout.as_secs(),
                });
            }
        };
        Ok(Collector {
            jobs: Mutex::new(jobs),
            in_flight,
            timeout,
            describe,
        })
    }

    /// What the source is (`NVML`, `simulated GPUs in DIR`).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Queue one call, unless the one on the thread has run past the timeout: it hangs, and
    /// nothing queued behind it would run.
    async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, CollectorError> {
        let (tx, rx) = oneshot::channel();
        let job = job(tx);
        let (index, what) = job.describe();
        if let Some(f) = lock(&self.in_flight).as_ref()
            && f.since.elapsed() >= self.timeout
        {
            return Err(CollectorError::Hung {
                index: f.index,
                what: f.what.clone(),
                secs: f.since.elapsed().as_secs(),
            });
        }
        if lock(&self.jobs).send(job).is_err() {
            return Err(CollectorError::Gone);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CollectorError::Gone),
            Err(_) => {
                tracing::error!(
                    gpu = ?index,
                    call = %what,
                    timeout_secs = self.timeout.as_secs(),
                    "GPU call timed out; it cannot be cancelled, and no other GPU call is made until it returns"
                );
                Err(CollectorError::TimedOut {
                    index,
                    what,
                    timeout_secs: self.timeout.as_secs(),
                })
            }
        }
    }

    /// How many GPUs the source sees; more than [`tdx_core::gpu::MAX_GPUS`] is refused here,
    /// before any caller loops over them.
    pub async fn count(&self) -> Result<u32, CollectorError> {
        let count = self.call(Job::Count).await?;
        if usize::try_from(count).map_or(true, |c| c > tdx_core::gpu::MAX_GPUS) {
            return Err(CollectorError::TooMany {
                count,
                max: tdx_core::gpu::MAX_GPUS,
            });
        }
        Ok(count)
    }

    /// GPU `index`'s state and evidence over `nonce`.
    pub async fn collect(
        &self,
        index: u32,
        nonce: [u8; 32],
    ) -> Result<CollectedGpu, CollectorError> {
        self.call(|reply| Job::Collect {
            index,
            nonce,
            reply,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tdx_core::gpu::CcMode;

    /// A source whose GPU 1 panics, whose GPU 2 blocks while `hang` is set and whose GPU 3
    /// takes 100 ms.
    struct Scripted {
        hang: Arc<AtomicBool>,
    }

    impl GpuSource for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }
        fn count(&mut self) -> Result<u32, GpuSourceError> {
            Ok(3)
        }
        fn collect(&mut self, index: u32, _: &[u8; 32]) -> Result<CollectedGpu, GpuSourceError> {
            match index {
                1 => panic!("index out of range for slice of length 8192"),
                2 => {
                    while self.hang.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                3 => std::thread::sleep(Duration::from_millis(100)),
                _ => {}
            }
            Ok(CollectedGpu {
                index,
                uuid: format!("GPU-{index}"),
                driver_version: "1".into(),
                vbios_version: "2".into(),
                cc_mode: CcMode::On,
                ready: true,
                protected_pcie: false,
                evidence: None,
            })
        }
    }

    async fn scripted(hang: &Arc<AtomicBool>, timeout: Duration) -> Collector {
        let hang = Arc::clone(hang);
        Collector::open(
            move || Ok(Box::new(Scripted { hang }) as Box<dyn GpuSource>),
            timeout,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn panics_are_named_and_a_hung_call_blocks_every_other_until_it_returns() {
        let hang = Arc::new(AtomicBool::new(true));
        // The panic gets a timeout it cannot reach: printing its backtrace (RUST_BACKTRACE in
        // CI) loads debug info and took over 300 ms on a busy machine, which read as a hang.
        let c = scripted(&hang, Duration::from_secs(30)).await;
        assert_eq!(c.describe(), "scripted");
        assert_eq!(c.count().await.unwrap(), 3);
        assert_eq!(c.collect(0, [0; 32]).await.unwrap().uuid, "GPU-0");

        let e = c.collect(1, [0; 32]).await.unwrap_err();
        assert!(
            matches!(e, CollectorError::Panicked { index: Some(1), .. }),
            "{e}"
        );
        assert!(e.to_string().contains("index out of range"), "{e}");
        // The thread survives the panic.
        assert_eq!(c.collect(0, [0; 32]).await.unwrap().index, 0);

        let c = scripted(&hang, Duration::from_millis(300)).await;
        let e = c.collect(2, [0; 32]).await.unwrap_err();
        assert!(
            matches!(e, CollectorError::TimedOut { index: Some(2), .. }),
            "{e}"
        );
        // GPU 0 would answer, but no second call starts while GPU 2's hangs.
        let e = c.collect(0, [0; 32]).await.unwrap_err();
        assert!(
            matches!(e, CollectorError::Hung { index: Some(2), .. }),
            "{e}"
        );
        assert!(e.to_string().contains("GPU 2"), "{e}");

        hang.store(false, Ordering::SeqCst);
        // Once the hung call returns, calls resume (polled, not slept for).
        let mut resumed = None;
        for _ in 0..500 {
            match c.collect(0, [0; 32]).await {
                Ok(g) => {
                    resumed = Some(g);
                    break;
                }
                Err(CollectorError::Hung { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(resumed.unwrap().index, 0);
    }

    /// A driver that reports more GPUs than a TD's evidence can hold.
    struct Broken;

    impl GpuSource for Broken {
        fn describe(&self) -> String {
            "broken".into()
        }
        fn count(&mut self) -> Result<u32, GpuSourceError> {
            Ok(u32::MAX)
        }
        fn collect(&mut self, _: u32, _: &[u8; 32]) -> Result<CollectedGpu, GpuSourceError> {
            panic!("no caller may loop over a count that was refused")
        }
    }

    #[tokio::test]
    async fn an_impossible_gpu_count_is_refused_by_name() {
        let c = Collector::open(
            || Ok(Box::new(Broken) as Box<dyn GpuSource>),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let e = c.count().await.unwrap_err();
        assert!(
            matches!(
                e,
                CollectorError::TooMany {
                    count: u32::MAX,
                    max: 64
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("4294967295 GPUs"), "{e}");
    }

    #[tokio::test]
    async fn calls_made_while_one_runs_wait_their_turn_instead_of_failing() {
        let c = scripted(&Arc::new(AtomicBool::new(false)), Duration::from_secs(30)).await;
        // GPU 3 is on the thread for 100 ms while the others are asked for.
        let (slow, a, b, n) = tokio::join!(
            c.collect(3, [0; 32]),
            c.collect(0, [0; 32]),
            c.collect(0, [1; 32]),
            c.count()
        );
        assert_eq!(slow.unwrap().index, 3);
        assert_eq!(a.unwrap().index, 0);
        assert_eq!(b.unwrap().index, 0);
        assert_eq!(n.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_source_that_cannot_open_says_why() {
        // The source's own failure comes back as itself: not re-worded, and not mistaken for
        // the thread having gone (it exits right after reporting the failure).
        let failure = GpuSourceError::new(None, "opening", "the device node is missing");
        let sent = failure.clone();
        let e = Collector::open(move || Err(sent), Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(e, CollectorError::Source(failure), "{e}");
        assert_eq!(e.index(), None);

        // A panic while opening is caught on the thread and named as the open that failed.
        let e = Collector::open(
            || panic!("NVML returned a buffer shorter than it said"),
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, CollectorError::Panicked { index: None, what, .. } if what == "opening the GPU source"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "opening the GPU source panicked inside the GPU library: NVML returned a buffer shorter than it said"
        );
    }

    #[tokio::test]
    async fn nvml_without_a_driver_is_a_named_failure() {
        // CI machines have no NVIDIA driver: loading fails and says what to install. Where
        // a driver exists this opens, and the count is whatever NVML sees.
        match Collector::open(
            || super::super::NvmlSource::open().map(|s| Box::new(s) as Box<dyn GpuSource>),
            Duration::from_secs(30),
        )
        .await
        {
            Err(e) => {
                assert!(
                    matches!(&e, CollectorError::Source(s) if s.call == "loading NVML"),
                    "{e:?}"
                );
                assert!(
                    e.to_string().contains(
                        "install the NVIDIA driver (it provides libnvidia-ml.so.1) in the TD"
                    ),
                    "{e}"
                );
            }
            Ok(c) => assert_eq!(c.describe(), "NVML"),
        }
    }
}
