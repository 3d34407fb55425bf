//! Tests of challenge batching against fake quoters whose timing the tests control.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::batcher::{
    BatchReport, Batcher, BatcherConfig, BoxFuture, ChallengeQuoter, IssuedQuote, QuoteFailure,
};
use tdx_core::challenge::merkle::Hash;
use tdx_core::challenge::{ChallengeError, verify_challenge};

const HEAD: Hash = [0xab; 32];

/// What a failing TEE says: it names the files it used.
const TEE_SAID_NO: &str = "TEE said no: /sys/kernel/config/tsm/report/r0/outblob: EIO";

fn spki() -> Hash {
    Sha256::digest(b"spki").into()
}

fn issued(root: Hash) -> IssuedQuote {
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&root);
    report_data[32..].copy_from_slice(&HEAD);
    IssuedQuote {
        quote: [b"QUOTE".as_slice(), &root].concat(),
        report_data,
        audit_head: HEAD,
        gpus: None,
    }
}

/// Sleeps a fixed time per quote, like the real ~1 s one.
struct SlowQuoter {
    delay: Duration,
    calls: AtomicUsize,
}

impl ChallengeQuoter for SlowQuoter {
    fn quote_for_root(&self, root: Hash) -> BoxFuture<'static, Result<IssuedQuote, QuoteFailure>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(issued(root))
        })
    }
}

/// What a scripted quoter does on one call.
#[derive(Clone, Copy)]
enum Act {
    Ok,
    Fail,
    Panic,
    Hang,
    WrongRoot,
}

/// Each call waits for a permit from the test, then does the next scripted act (Ok after
/// the script runs out). Records every call's root.
struct GatedQuoter {
    gate: Arc<Semaphore>,
    script: Mutex<Vec<Act>>,
    roots: Mutex<Vec<Hash>>,
}

impl GatedQuoter {
    fn new(script: &[Act]) -> Arc<Self> {
        let mut script = script.to_vec();
        script.reverse();
        Arc::new(Self {
            gate: Arc::new(Semaphore::new(0)),
            script: Mutex::new(script),
            roots: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.roots.lock().unwrap().len()
    }

    fn release(&self) {
        self.add_permits(1);
    }

    fn add_permits(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

impl ChallengeQuoter for GatedQuoter {
    fn quote_for_root(&self, root: Hash) -> BoxFuture<'static, Result<IssuedQuote, QuoteFailure>> {
        self.roots.lock().unwrap().push(root);
        let act = self.script.lock().unwrap().pop().unwrap_or(Act::Ok);
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            if let Act::Hang = act {
                std::future::pending::<()>().await;
            }
            gate.acquire().await.unwrap().forget();
            match act {
                Act::Ok | Act::Hang => Ok(issued(root)),
                Act::Fail => Err(QuoteFailure::Tee(TEE_SAID_NO.into())),
                Act::Panic => panic!("quoter bug"),
                Act::WrongRoot => Ok(issued([0; 32])),
            }
        })
    }
}

fn nonce(i: usize) -> Vec<u8> {
    let mut n = (i as u64).to_be_bytes().to_vec();
    n.extend_from_slice(b"-nonce");
    n
}

type Answer = tokio::task::JoinHandle<Result<crate::batcher::ChallengeResponse, ChallengeError>>;

fn spawn_challenge(b: &Batcher, i: usize) -> Answer {
    let b = b.clone();
    tokio::spawn(async move { b.challenge(&nonce(i), spki()).await })
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

fn check(i: usize, answer: &crate::batcher::ChallengeResponse) {
    verify_challenge(&nonce(i), &spki(), &answer.report_data, &answer.proof)
        .unwrap_or_else(|e| panic!("caller {i}: {e}"));
    assert_eq!(answer.report_data[..32], answer.root);
    assert_eq!(answer.audit_head, HEAD);
    assert_eq!(&answer.quote[5..], &answer.root[..]);
}

fn recorder() -> (Arc<Mutex<Vec<BatchReport>>>, BatcherConfig) {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reports);
    let config = BatcherConfig {
        observer: Some(Arc::new(move |r: &BatchReport| {
            sink.lock().unwrap().push(r.clone())
        })),
        ..BatcherConfig::default()
    };
    (reports, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_concurrent_challengers_share_few_quotes() {
    let quoter = Arc::new(SlowQuoter {
        delay: Duration::from_millis(200),
        calls: AtomicUsize::new(0),
    });
    let (reports, config) = recorder();
    let b = Batcher::new(quoter.clone(), config);
    let started = std::time::Instant::now();
    let tasks: Vec<Answer> = (0..2000).map(|i| spawn_challenge(&b, i)).collect();
    let mut sizes = std::collections::BTreeMap::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let answer = t.await.unwrap().unwrap();
        check(i, &answer);
        *sizes.entry(answer.proof.tree_size).or_insert(0u64) += 1;
    }
    let quotes = quoter.calls.load(Ordering::SeqCst);
    println!(
        "{quotes} quotes for 2000 callers in {:?}, trees {sizes:?}",
        started.elapsed()
    );
    assert!(quotes <= 3, "{quotes} quotes");
    // Everyone in a tree of size s got an answer from that tree.
    for (size, count) in &sizes {
        assert_eq!(size, count);
    }
    let stats = b.stats();
    assert_eq!(stats.answered, 2000);
    assert_eq!(stats.quotes_ok, quotes as u64);
    assert_eq!(stats.waiting, 0);
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), quotes);
    assert_eq!(reports.iter().map(|r| r.leaves).sum::<usize>(), 2000);
    assert!(reports.iter().all(|r| r.ok));
}

#[tokio::test]
async fn a_single_caller_is_a_tree_of_one() {
    let quoter = GatedQuoter::new(&[]);
    quoter.release();
    let b = Batcher::new(quoter.clone(), BatcherConfig::default());
    let answer = b.challenge(&nonce(7), spki()).await.unwrap();
    check(7, &answer);
    assert_eq!(answer.proof.tree_size, 1);
    assert!(answer.proof.audit_path.is_empty());
    assert_eq!(answer.root, answer.leaf_hash);
    assert_eq!(quoter.roots.lock().unwrap().as_slice(), &[answer.root]);
    assert_eq!(
        b.challenge(&[], spki()).await.unwrap_err(),
        ChallengeError::NonceLength { len: 0 }
    );
    assert_eq!(quoter.calls(), 1, "a bad nonce never costs a quote");
}

#[tokio::test]
async fn quoter_error_fails_only_its_batch() {
    let quoter = GatedQuoter::new(&[Act::Fail, Act::Ok]);
    let (reports, config) = recorder();
    let b = Batcher::new(quoter.clone(), config);
    let first = spawn_challenge(&b, 0);
    until("first quote", || quoter.calls() == 1).await;
    let next: Vec<Answer> = (1..=3).map(|i| spawn_challenge(&b, i)).collect();
    until("three waiting", || b.stats().waiting == 3).await;
    quoter.release();
    // The caller learns what failed, not the TEE's words (they name its files).
    let err = first.await.unwrap().unwrap_err();
    assert_eq!(
        err,
        ChallengeError::Quote(QuoteFailure::Tee(TEE_SAID_NO.into()).public())
    );
    assert!(!err.to_string().contains("/sys/kernel"), "{err}");
    quoter.release();
    for (i, t) in next.into_iter().enumerate() {
        let answer = t.await.unwrap().unwrap();
        check(i + 1, &answer);
        assert_eq!(answer.proof.tree_size, 3);
    }
    let stats = b.stats();
    assert_eq!((stats.quotes_failed, stats.quotes_ok), (1, 1));
    assert_eq!((stats.failed, stats.answered), (1, 3));
    let sizes: Vec<(usize, bool)> = reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.leaves, r.ok))
        .collect();
    assert_eq!(sizes, [(1, false), (3, true)]);
}

#[tokio::test]
async fn a_panicking_quoter_fails_its_batch_and_the_next_one_works() {
    let quoter = GatedQuoter::new(&[Act::Panic]);
    let b = Batcher::new(quoter.clone(), BatcherConfig::default());
    quoter.release();
    let err = b.challenge(&nonce(0), spki()).await.unwrap_err();
    // A panic's text is the agent's business, not the caller's.
    assert!(
        matches!(err, ChallengeError::Quote(ref m) if m.contains("the agent failed") && !m.contains("quoter bug")),
        "{err}"
    );
    quoter.release();
    check(1, &b.challenge(&nonce(1), spki()).await.unwrap());
}

#[tokio::test]
async fn a_quote_that_does_not_commit_to_the_root_is_refused() {
    let quoter = GatedQuoter::new(&[Act::WrongRoot]);
    let b = Batcher::new(quoter.clone(), BatcherConfig::default());
    quoter.release();
    let err = b.challenge(&nonce(0), spki()).await.unwrap_err();
    assert!(
        matches!(err, ChallengeError::Quote(ref m) if m.contains("the agent failed")),
        "{err}"
    );
}

#[tokio::test]
async fn a_hung_quote_times_out() {
    let quoter = GatedQuoter::new(&[Act::Hang]);
    let b = Batcher::new(
        quoter.clone(),
        BatcherConfig {
            quote_timeout: Duration::from_millis(50),
            ..BatcherConfig::default()
        },
    );
    let err = b.challenge(&nonce(0), spki()).await.unwrap_err();
    assert!(
        matches!(err, ChallengeError::Quote(ref m) if m.contains("quote timeout (0.05s)")),
        "{err}"
    );
    quoter.release();
    check(1, &b.challenge(&nonce(1), spki()).await.unwrap());
}

#[tokio::test]
async fn dropped_callers_do_not_break_a_batch() {
    let quoter = GatedQuoter::new(&[]);
    let (reports, config) = recorder();
    let b = Batcher::new(quoter.clone(), config);

    // The very first caller leaves while its own quote is being made.
    let first = spawn_challenge(&b, 0);
    until("first quote", || quoter.calls() == 1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    let queued: Vec<Answer> = (1..=4).map(|i| spawn_challenge(&b, i)).collect();
    until("four waiting", || b.stats().waiting == 4).await;
    // Caller 2 leaves while queued: it must not take a leaf in the next tree.
    let mut queued = queued.into_iter();
    let (c1, c2, c3, c4) = (
        queued.next().unwrap(),
        queued.next().unwrap(),
        queued.next().unwrap(),
        queued.next().unwrap(),
    );
    c2.abort();
    assert!(c2.await.unwrap_err().is_cancelled());
    quoter.release();
    until("second quote", || quoter.calls() == 2).await;
    // Caller 3 leaves while its batch's quote is in flight.
    c3.abort();
    assert!(c3.await.unwrap_err().is_cancelled());
    quoter.release();
    for (i, t) in [(1, c1), (4, c4)] {
        let answer = t.await.unwrap().unwrap();
        check(i, &answer);
        assert_eq!(answer.proof.tree_size, 3, "callers 1, 3, 4");
    }
    // And the batcher still serves.
    quoter.release();
    check(5, &b.challenge(&nonce(5), spki()).await.unwrap());
    let stats = b.stats();
    assert_eq!(stats.gone, 3);
    assert_eq!(stats.answered, 3);
    let sizes: Vec<usize> = reports.lock().unwrap().iter().map(|r| r.leaves).collect();
    assert_eq!(sizes, [1, 3, 1]);
}

#[tokio::test]
async fn overload_is_refused_and_batches_are_bounded() {
    let quoter = GatedQuoter::new(&[]);
    let (reports, mut config) = recorder();
    config.max_waiting = 5;
    config.max_leaves = 2;
    let b = Batcher::new(quoter.clone(), config);
    let first = spawn_challenge(&b, 0);
    until("first quote", || quoter.calls() == 1).await;
    let queued: Vec<Answer> = (1..=5).map(|i| spawn_challenge(&b, i)).collect();
    until("five waiting", || b.stats().waiting == 5).await;
    assert_eq!(
        b.challenge(&nonce(6), spki()).await.unwrap_err(),
        ChallengeError::Overloaded
    );
    assert_eq!(b.stats().overloaded, 1);

    // A queued caller leaving frees its slot for a newcomer.
    let mut queued = queued;
    let gone = queued.pop().unwrap();
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    let late = spawn_challenge(&b, 7);
    until("slot reclaimed", || b.stats().gone == 1).await;
    assert_eq!(b.stats().waiting, 5);

    quoter.add_permits(10);
    check(0, &first.await.unwrap().unwrap());
    for (t, i) in queued.into_iter().zip(1..) {
        check(i, &t.await.unwrap().unwrap());
    }
    check(7, &late.await.unwrap().unwrap());
    let sizes: Vec<usize> = reports.lock().unwrap().iter().map(|r| r.leaves).collect();
    assert_eq!(sizes, [1, 2, 2, 1], "at most max_leaves per tree");
    assert_eq!(b.stats().largest_batch, 2);
}

/// With a gathering window, a burst that arrives over a few milliseconds shares the first
/// quote; without one, its first caller takes a quote alone. On the paused clock, so the
/// burst's spacing and the window are exact virtual times, not hopes about the scheduler.
#[tokio::test(start_paused = true)]
async fn gathering_window_lets_a_burst_share_the_first_quote() {
    for (gather, quotes) in [(Duration::from_millis(150), 1), (Duration::ZERO, 2)] {
        let quoter = Arc::new(SlowQuoter {
            delay: Duration::from_millis(200),
            calls: AtomicUsize::new(0),
        });
        let batcher = Batcher::new(
            quoter.clone(),
            BatcherConfig {
                gather,
                ..BatcherConfig::default()
            },
        );
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let b = batcher.clone();
            tasks.push(tokio::spawn(
                async move { b.challenge(&[i + 1], spki()).await },
            ));
            // The burst trickles in over 38 ms, well inside the 150 ms window.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let calls = quoter.calls.load(Ordering::SeqCst);
        assert_eq!(calls, quotes, "gather {gather:?}");
    }
}

/// A burst that keeps arriving for longer than the gathering window still shares the first
/// quote (the window extends while challenges come in, up to four times its length), a lone
/// challenge waits only the window, and a stream that never pauses is cut at the limit. On
/// the paused clock: every time below is exact virtual time.
#[tokio::test(start_paused = true)]
async fn gathering_extends_while_a_burst_keeps_arriving() {
    let gather = Duration::from_millis(50);
    let quote_delay = Duration::from_millis(100);
    let run = |arrivals: usize| async move {
        let quoter = Arc::new(SlowQuoter {
            delay: quote_delay,
            calls: AtomicUsize::new(0),
        });
        let batcher = Batcher::new(
            quoter.clone(),
            BatcherConfig {
                gather,
                ..BatcherConfig::default()
            },
        );
        let started = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..arrivals {
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move {
                b.challenge(&nonce(i), spki())
                    .await
                    .map(|_| started.elapsed())
            }));
            // Gaps well under the 25 ms quiet interval (gather / 2).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut answered = Vec::new();
        for t in tasks {
            answered.push(t.await.unwrap().unwrap());
        }
        (quoter.calls.load(Ordering::SeqCst), answered)
    };

    // One challenge: the window and the quote, no more.
    let (calls, answered) = run(1).await;
    assert_eq!(calls, 1);
    assert_eq!(answered, [gather + quote_delay], "a lone challenge");
    // 60 arrivals over 118 ms, more than twice the 50 ms window: one quote for all, made once
    // the burst has been quiet for a quiet interval (checks at 125 and 150 ms).
    let (calls, answered) = run(60).await;
    assert_eq!(calls, 1, "a burst longer than the window was split");
    assert!(
        answered
            .iter()
            .all(|&t| t == Duration::from_millis(150) + quote_delay),
        "{answered:?}"
    );
    // A stream of 400 ms: gathering stops at its 200 ms limit, so the first quote is not held
    // back; the rest of the stream rides on the quotes after it.
    let (calls, answered) = run(200).await;
    assert_eq!(calls, 3, "{calls} quotes");
    let first = answered.iter().min().unwrap();
    assert_eq!(
        *first,
        gather * 4 + quote_delay,
        "gathering did not stop at its limit"
    );
}
