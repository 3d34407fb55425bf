//! Batching of concurrent challenges: quotes are slow and serialised, so every nonce that
//! arrives while one is being made rides on the next one as a Merkle leaf.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
// Tokio's clock rather than std's: the same monotonic clock in production, and the one a
// paused test runtime controls, so the gathering tests run in exact virtual time.
use tokio::time::Instant;

use tdx_core::challenge::ChallengeError;
use tdx_core::challenge::merkle::{self, Hash, Proof};

/// A boxed, sendable future (the crate does not depend on `futures`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the quoter hands back for one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedQuote {
    pub quote: Vec<u8>,
    /// Must start with the root it was asked for; the batcher refuses to hand out anything
    /// else.
    pub report_data: [u8; 64],
    pub audit_head: Hash,
    /// The GPU evidence collected for the batch, when the agent attests GPUs; REPORTDATA then
    /// starts with `gpu_bound_root(root, digest)` instead of the root.
    pub gpus: Option<BatchGpus>,
}

/// One report per GPU over the batch's GPU nonce, shared by every answer of the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchGpus {
    pub digest: [u8; 32],
    /// The evidence document (docs/formats.md §13).
    pub evidence_json: Arc<serde_json::Value>,
}

/// Makes the quote for a batch: builds REPORTDATA = root || audit chain head, gets the quote
/// and records it in the audit log. The batcher knows nothing of the log.
pub trait ChallengeQuoter: Send + Sync {
    fn quote_for_root(&self, root: Hash) -> BoxFuture<'static, Result<IssuedQuote, QuoteFailure>>;
}

/// Why a batch's quote failed. Its callers, who need not have authenticated, are told which
/// part failed ([`QuoteFailure::public`]); the detail (configfs paths, audit file names, a
/// panic's text) is the agent's business and goes to its log ([`std::fmt::Display`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuoteFailure {
    /// The TEE refused or failed to quote.
    Tee(String),
    /// The quote was made but the audit log could not record it, so it is withheld.
    Audit(String),
    /// No quote within the quote timeout.
    Timeout(Duration),
    /// The agent's own fault: the quoter panicked, or quoted something else than the batch.
    Internal(String),
}

impl QuoteFailure {
    /// What a client is told.
    pub fn public(&self) -> String {
        match self {
            QuoteFailure::Tee(_) => "the TD could not produce a quote; see the agent's log".into(),
            QuoteFailure::Audit(_) => "the audit log could not record the quote, and evidence is never issued unlogged; see the agent's log".into(),
            QuoteFailure::Timeout(t) => format!(
                "the TD did not produce a quote within the quote timeout ({}s); see the agent's log",
                t.as_secs_f64()
            ),
            QuoteFailure::Internal(_) => {
                "the agent failed while making the quote; see the agent's log".into()
            }
        }
    }
}

impl std::fmt::Display for QuoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuoteFailure::Tee(d) | QuoteFailure::Audit(d) | QuoteFailure::Internal(d) => {
                f.write_str(d)
            }
            QuoteFailure::Timeout(t) => {
                write!(f, "quote took longer than the quote timeout ({t:?})")
            }
        }
    }
}

/// One caller's answer: the shared quote plus its own inclusion proof.
#[derive(Clone, Debug)]
pub struct ChallengeResponse {
    /// Shared by the whole batch, so thousands of callers do not each copy a quote.
    pub quote: Arc<[u8]>,
    pub report_data: [u8; 64],
    pub audit_head: Hash,
    pub proof: Proof,
    pub leaf_hash: Hash,
    pub root: Hash,
    /// The batch's GPU evidence, when the agent attests GPUs.
    pub gpu_evidence: Option<Arc<serde_json::Value>>,
}

/// Told about every finished batch, outside any lock (e.g. to feed a histogram).
pub type BatchObserver = Arc<dyn Fn(&BatchReport) + Send + Sync>;

/// One finished batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchReport {
    /// Leaves in the tree (callers still waiting when the batch was formed).
    pub leaves: usize,
    /// Whether the quote was issued.
    pub ok: bool,
    /// How long the quoter took.
    pub elapsed: Duration,
}

/// Limits and hooks of a [`Batcher`].
#[derive(Clone)]
pub struct BatcherConfig {
    /// Most leaves in one tree; the rest wait for the next quote. At least 1.
    pub max_leaves: usize,
    /// Most callers queued for a future quote; beyond it callers get
    /// [`ChallengeError::Overloaded`] so memory stays bounded.
    pub max_waiting: usize,
    /// A quote that takes longer fails its batch, so a wedged TEE cannot hang every caller.
    pub quote_timeout: Duration,
    /// When a challenge arrives at an idle batcher, wait this long before the first quote so
    /// a burst shares it instead of its first caller taking a quote alone. Small against a
    /// quote's ~1 s; zero turns it off. While challenges keep arriving the wait goes on, up to
    /// four times this long in all, so a burst that takes longer than this to arrive still
    /// shares one quote.
    pub gather: Duration,
    pub observer: Option<BatchObserver>,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_leaves: 4096,
            max_waiting: 100_000,
            quote_timeout: Duration::from_secs(30),
            gather: Duration::ZERO,
            observer: None,
        }
    }
}

impl std::fmt::Debug for BatcherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatcherConfig")
            .field("max_leaves", &self.max_leaves)
            .field("max_waiting", &self.max_waiting)
            .field("quote_timeout", &self.quote_timeout)
            .field("gather", &self.gather)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Counters since the batcher was built, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub quotes_ok: u64,
    pub quotes_failed: u64,
    /// Callers that got a quote and proof.
    pub answered: u64,
    /// Callers that got a quote error.
    pub failed: u64,
    /// Callers that went away before their answer.
    pub gone: u64,
    /// Callers turned away with [`ChallengeError::Overloaded`].
    pub overloaded: u64,
    pub largest_batch: u64,
    /// Callers queued for a future quote right now.
    pub waiting: usize,
}

#[derive(Default)]
struct Counters {
    quotes_ok: AtomicU64,
    quotes_failed: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    gone: AtomicU64,
    overloaded: AtomicU64,
    largest_batch: AtomicU64,
}

type Reply = oneshot::Sender<Result<ChallengeResponse, ChallengeError>>;

struct Waiter {
    leaf: Hash,
    reply: Reply,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiter>,
    /// A driver task exists; it alone takes batches, so quotes never overlap.
    running: bool,
}

struct Shared {
    quoter: Arc<dyn ChallengeQuoter>,
    config: BatcherConfig,
    state: Mutex<State>,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, and the state stays consistent even if
        // something did, so poisoning carries no information.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Batches concurrent challenges onto as few quotes as possible. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
    /// Where batches are driven: the runtime the batcher was made on (the agent's main one),
    /// not the connection thread of whichever challenge happens to start a batch, whose
    /// connections would wait behind the batch's work.
    runtime: Option<tokio::runtime::Handle>,
}

impl Batcher {
    pub fn new(quoter: Arc<dyn ChallengeQuoter>, mut config: BatcherConfig) -> Self {
        config.max_leaves = config.max_leaves.max(1);
        Self {
            shared: Arc::new(Shared {
                quoter,
                config,
                state: Mutex::new(State::default()),
                counters: Counters::default(),
            }),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// A quote whose REPORTDATA[0..32] is the root of a tree holding this caller's leaf.
    ///
    /// Must run inside a Tokio runtime: the batch is driven by a spawned task, so a caller
    /// that gives up never stalls the others.
    pub async fn challenge(
        &self,
        nonce: &[u8],
        spki_sha256: Hash,
    ) -> Result<ChallengeResponse, ChallengeError> {
        let leaf = merkle::leaf_hash(nonce, &spki_sha256)?;
        let (reply, answer) = oneshot::channel();
        let start_driver = {
            let mut st = self.shared.lock();
            if st.queue.len() >= self.shared.config.max_waiting {
                // Callers that gave up still hold slots until a batch is formed; reclaim them
                // before turning anyone away.
                let before = st.queue.len();
                st.queue.retain(|w| !w.reply.is_closed());
                let gone = (before - st.queue.len()) as u64;
                self.shared.counters.gone.fetch_add(gone, Ordering::Relaxed);
                if st.queue.len() >= self.shared.config.max_waiting {
                    self.shared
                        .counters
                        .overloaded
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(ChallengeError::Overloaded);
                }
            }
            st.queue.push_back(Waiter { leaf, reply });
            !std::mem::replace(&mut st.running, true)
        };
        if start_driver {
            let driver = drive(Arc::clone(&self.shared));
            match &self.runtime {
                Some(rt) => rt.spawn(driver),
                None => tokio::spawn(driver),
            };
        }
        answer.await.map_err(|_| ChallengeError::Abandoned)?
    }

    pub fn stats(&self) -> BatchStats {
        let c = &self.shared.counters;
        BatchStats {
            quotes_ok: c.quotes_ok.load(Ordering::Relaxed),
            quotes_failed: c.quotes_failed.load(Ordering::Relaxed),
            answered: c.answered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            gone: c.gone.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
            waiting: self.shared.lock().queue.len(),
        }
    }

    pub fn config(&self) -> &BatcherConfig {
        &self.shared.config
    }
}

/// Clears `running` if the driver dies without doing so (a panic, or the runtime shutting
/// down), and fails everyone queued: otherwise they would wait forever for a driver that is
/// gone, and the next caller could never start one.
struct DriverGuard {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if self.armed {
            let abandoned = {
                let mut st = self.shared.lock();
                st.running = false;
                std::mem::take(&mut st.queue)
            };
            // Dropping the senders answers each waiter with `Abandoned`.
            drop(abandoned);
        }
    }
}

async fn drive(shared: Arc<Shared>) {
    let mut guard = DriverGuard {
        shared: Arc::clone(&shared),
        armed: true,
    };
    // Started from idle: let the rest of a burst join the first tree.
    gather_until_quiet(&shared).await;
    loop {
        let batch = {
            let mut st = shared.lock();
            let mut batch = Vec::new();
            while batch.len() < shared.config.max_leaves {
                let Some(w) = st.queue.pop_front() else { break };
                if w.reply.is_closed() {
                    shared.counters.gone.fetch_add(1, Ordering::Relaxed);
                } else {
                    batch.push(w);
                }
            }
            if batch.is_empty() {
                // Decided under the lock, so a caller arriving now either sees `running` false
                // and starts a new driver, or was already queued and is in this batch.
                st.running = false;
                guard.armed = false;
                return;
            }
            batch
        };
        run_batch(&shared, batch).await;
    }
}

/// The gathering wait of a driver started from idle: `gather`; then, if more challenges came
/// in meanwhile (a burst), on for as long as they keep coming (at least one every `gather /
/// 2`), up to `GATHER_MAX_FACTOR * gather` in all or until a full tree is waiting. A lone
/// challenge waits `gather` only. A burst that takes longer than `gather` to come in over the
/// network (2,000 challengers on ten HTTP/2 connections need about 100 ms on a two-core
/// machine, with pauses of over 10 ms while the client's connections take turns) still goes
/// into one quote instead of leaving its tail a whole quote (~1 s) behind.
async fn gather_until_quiet(shared: &Shared) {
    let gather = shared.config.gather;
    if gather.is_zero() {
        return;
    }
    let started = Instant::now();
    let quiet = (gather / 2).max(Duration::from_millis(1));
    let limit = gather.saturating_mul(GATHER_MAX_FACTOR);
    tokio::time::sleep(gather).await;
    let mut seen = shared.lock().queue.len();
    if seen <= 1 {
        return;
    }
    loop {
        let elapsed = started.elapsed();
        if elapsed >= limit || seen >= shared.config.max_leaves {
            return;
        }
        tokio::time::sleep(quiet.min(limit - elapsed)).await;
        let now = shared.lock().queue.len();
        if now <= seen {
            return;
        }
        seen = now;
    }
}

/// The longest gathering wait, in multiples of `gather` (documented with `challenge.gather_ms`).
const GATHER_MAX_FACTOR: u32 = 4;

async fn run_batch(shared: &Shared, batch: Vec<Waiter>) {
    let leaves: Vec<Hash> = batch.iter().map(|w| w.leaf).collect();
    let (root, proofs) = merkle::all_proofs(&leaves);
    let started = Instant::now();
    let outcome = quote(shared, root).await;
    let elapsed = started.elapsed();
    let c = &shared.counters;
    c.largest_batch
        .fetch_max(batch.len() as u64, Ordering::Relaxed);
    let ok = outcome.is_ok();
    match outcome {
        Ok(issued) => {
            c.quotes_ok.fetch_add(1, Ordering::Relaxed);
            let quote: Arc<[u8]> = issued.quote.into();
            for (w, proof) in batch.into_iter().zip(proofs) {
                let answer = ChallengeResponse {
                    quote: Arc::clone(&quote),
                    report_data: issued.report_data,
                    audit_head: issued.audit_head,
                    proof,
                    leaf_hash: w.leaf,
                    root,
                    gpu_evidence: issued.gpus.as_ref().map(|g| Arc::clone(&g.evidence_json)),
                };
                if w.reply.send(Ok(answer)).is_ok() {
                    c.answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.gone.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(failure) => {
            c.quotes_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(leaves = leaves.len(), error = %failure, "challenge quote failed");
            let msg = failure.public();
            for w in batch {
                if w.reply
                    .send(Err(ChallengeError::Quote(msg.clone())))
                    .is_ok()
                {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.gone.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    if let Some(observe) = &shared.config.observer {
        observe(&BatchReport {
            leaves: leaves.len(),
            ok,
            elapsed,
        });
    }
}

/// Runs the quoter in its own task so a panic in it fails one batch rather than the driver,
/// and bounds how long a batch can wait.
async fn quote(shared: &Shared, root: Hash) -> Result<IssuedQuote, QuoteFailure> {
    let mut task = tokio::spawn(shared.quoter.quote_for_root(root));
    let issued = match tokio::time::timeout(shared.config.quote_timeout, &mut task).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => {
            return Err(QuoteFailure::Internal(format!(
                "quoter task failed: {join}"
            )));
        }
        Err(_) => {
            task.abort();
            return Err(QuoteFailure::Timeout(shared.config.quote_timeout));
        }
    };
    // Handing out a quote that does not commit to this tree would make every proof in the
    // batch fail on the client with a confusing error; say what went wrong here instead.
    let committed = match &issued.gpus {
        Some(g) => tdx_core::challenge::gpu_bound_root(&root, &g.digest),
        None => root,
    };
    if issued.report_data[..32] != committed {
        return Err(QuoteFailure::Internal(
            "quoter returned REPORTDATA that does not start with the batch root".into(),
        ));
    }
    Ok(issued)
}
