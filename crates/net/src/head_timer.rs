//! The HTTP/1.1 header timeout, kept with one timer per connection instead of one per request;
//! also the idle timeout of HTTP/2 connections (the agent's, and `connect`'s local ones).
//!
//! hyper's own `header_read_timeout` arms a fresh boxed timer every time it starts reading a
//! request head. On a busy keep-alive connection that is a timer-wheel insert and removal per
//! request, and whenever the runtime had parked with no timer pending, the insert also writes
//! the runtime's eventfd to wake a thread that is already awake: a system call, and one more
//! pass through epoll, per request or so. Measured: docs/benchmarks.md (session 6).
//!
//! Here a connection instead keeps a little shared bookkeeping ([`Activity`]): how many
//! requests are in flight, when the last one ended, and when bytes last went out while none
//! was. One timer per connection ([`HeadTimer`]) wakes when the connection could first have
//! been idle for the whole timeout, reads that bookkeeping, and either ends the connection or
//! sleeps again until the new earliest moment. The rule is hyper's: the time runs from the
//! end of the handshake and again from the end of each answer (its last byte taken by the
//! kernel, so a slow reader still taking the end of an answer is not idle), and a request in
//! flight is never cut (a model may think for minutes before its first byte).
//!
//! The agent's own answers ([`DoneAtHead`]) stop being in flight at their head. Over HTTP/2,
//! where bytes going out say nothing (hyper pings on its own), such an answer's body is
//! instead *draining* while hyper still holds it: that keeps the connection, but only for
//! [`DRAIN_TIMEOUTS`] timeouts from its head, so a large evidence document taken slowly is not
//! cut mid-body while one never taken, or trickled a byte of window at a time, still ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one connection's requests and writes tell its timer. Only the connection's own task
/// touches it, so relaxed atomics are enough; they are atomics because hyper wants a `Send`
/// service.
#[derive(Debug)]
pub struct Activity {
    /// When the connection was set up; times below are nanoseconds after it.
    base: Instant,
    in_flight: AtomicU64,
    /// When the last request ended (or the handshake did).
    idle_since: AtomicU64,
    /// When bytes last went out with no request in flight: the end of an answer whose body
    /// hyper has finished with, still being flushed. Writes during a request are not timed,
    /// so the hot path reads no clock.
    idle_write: AtomicU64,
    /// When each draining answer (a [`DoneAtHead`] answer whose body hyper still holds) had
    /// its head ready. Only the agent's own answers touch it, never the model routes' hot path;
    /// there are at most as many as the connection's concurrent streams.
    draining: Mutex<Vec<u64>>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            base: Instant::now(),
            in_flight: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            idle_write: AtomicU64::new(0),
            draining: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A request head has arrived: until the returned guard is dropped (with the response's
    /// body, or with the request if it never got one), the connection is not idle.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// A [`DoneAtHead`] answer's head is ready: its body is draining until the returned guard
    /// is dropped (with the body).
    fn drain(self: &Arc<Self>) -> Draining {
        let since = self.now();
        self.draining_heads().push(since);
        Draining {
            activity: Arc::clone(self),
            since,
        }
    }

    /// When the latest draining answer had its head ready.
    fn latest_draining(&self) -> Option<u64> {
        self.draining_heads().iter().copied().max()
    }

    fn draining_heads(&self) -> MutexGuard<'_, Vec<u64>> {
        // The list stays whole whatever panicked while holding it: every change is one push
        // or one swap_remove.
        self.draining.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wrote(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            self.idle_write.store(self.now(), Ordering::Relaxed);
        }
    }
}

/// A request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A draining answer; see [`Activity::drain`].
#[derive(Debug)]
struct Draining {
    activity: Arc<Activity>,
    since: u64,
}

impl Drop for Draining {
    fn drop(&mut self) {
        let a = &self.activity;
        // Like the end of a request in flight: the idle time runs from here.
        a.idle_since.store(a.now(), Ordering::Relaxed);
        let mut heads = a.draining_heads();
        if let Some(i) = heads.iter().position(|&s| s == self.since) {
            heads.swap_remove(i);
        }
    }
}

/// How many header timeouts a draining answer may keep an HTTP/2 connection, from its head:
/// six, 60 s by default. The largest answer, the evidence document of eight GPUs (several
/// hundred KB, gRPC `GetEvidence` the same), takes that long only below about 50 kbit/s, and
/// a client that never takes a body, or trickles its window a byte at a time, then holds its
/// connection for about seven timeouts (the GOAWAY's grace follows) rather than for ever.
pub const DRAIN_TIMEOUTS: u32 = 6;

/// The one timer of a connection: [`HeadTimer::poll_expired`] is ready when the connection
/// has been idle, or stuck in a request head, for the whole timeout.
pub struct HeadTimer {
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Whether bytes going out with no request in flight keep the connection alive (see
    /// [`HeadTimer::ignoring_idle_writes`]); when they do not, draining answers do instead.
    idle_writes_count: bool,
    /// How long a draining answer keeps the connection from its head ([`DRAIN_TIMEOUTS`]).
    drain_limit: Duration,
}

impl HeadTimer {
    /// Start the time now (the handshake is done).
    pub fn new(activity: Arc<Activity>, timeout: Duration) -> Self {
        activity.idle_since.store(activity.now(), Ordering::Relaxed);
        HeadTimer {
            activity,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            idle_writes_count: true,
            drain_limit: timeout.saturating_mul(DRAIN_TIMEOUTS),
        }
    }

    /// For HTTP/2: the connection writes on its own while idle (keep-alive pings, settings),
    /// so only requests keep it alive, and draining answers for at most [`DRAIN_TIMEOUTS`]
    /// timeouts each; the end of an answer still being flushed once hyper has let go of its
    /// body is let out by the GOAWAY that follows the timeout, not by this timer. (Over
    /// HTTP/1.1 the bytes of a draining answer going out are what keeps the connection: a
    /// client that stops reading is let go after one timeout, not after the drain limit.)
    pub fn ignoring_idle_writes(mut self) -> Self {
        self.idle_writes_count = false;
        self
    }

    /// Start the time again from now (the grace a connection gets after its GOAWAY).
    pub fn restart(&mut self) {
        let a = &self.activity;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        self.sleep
            .as_mut()
            .reset((Instant::now() + self.timeout).into());
    }

    /// Ready once the connection should be closed; otherwise the task is woken when that
    /// could next be so.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            match self.verdict(Instant::now()) {
                None => return Poll::Ready(()),
                Some(next) => self.sleep.as_mut().reset(next.into()),
            }
        }
    }

    /// `None` when the time is up, or the next moment to look again.
    fn verdict(&self, now: Instant) -> Option<Instant> {
        let a = &self.activity;
        if a.in_flight.load(Ordering::Relaxed) > 0 {
            return Some(now + self.timeout);
        }
        if !self.idle_writes_count
            && let Some(since) = a.latest_draining()
        {
            let limit = a.base + Duration::from_nanos(since) + self.drain_limit;
            if limit > now {
                // Looked at again within the timeout: an answer that ends sooner lets the
                // idle time run from its end.
                return Some(limit.min(now + self.timeout));
            }
        }
        let mut last = a.idle_since.load(Ordering::Relaxed);
        if self.idle_writes_count {
            last = last.max(a.idle_write.load(Ordering::Relaxed));
        }
        let deadline = a.base + Duration::from_nanos(last) + self.timeout;
        (deadline > now).then_some(deadline)
    }
}

/// A response extension: the request stops counting as in flight once this response's head
/// is ready, rather than when hyper drops its body. For answers the service made whole in
/// memory (evidence, challenge answers, probes) and for streams of its own that never end
/// (gRPC health `Watch`): a client that opens many streams and never takes their bodies (an
/// HTTP/2 window of 0) would otherwise keep the connection, and each body, for ever. Without
/// a request in flight the connection's timer lets it go (HTTP/1.1: once no byte has gone out
/// for the timeout; HTTP/2: a GOAWAY once nothing has been in flight or draining for the
/// timeout, an answer draining for [`DRAIN_TIMEOUTS`] timeouts at most, then the close after
/// the grace). Model answers, which may think for minutes between bytes, do not carry it.
///
/// hyper holds a body only until its last frame is handed to the HTTP/2 stream's buffer, so
/// an answer should come in frames of a few KiB for its draining to last while it is taken.
#[derive(Clone, Copy, Debug, Default)]
pub struct DoneAtHead;

/// `S`, with each request in flight from its head until hyper drops its response's body (or
/// until the head, for a response marked [`DoneAtHead`], whose body is then draining).
#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Timed<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Timed { inner, activity }
    }
}

impl<S, R, B> hyper::service::Service<R> for Timed<S>
where
    S: hyper::service::Service<R, Response = hyper::Response<B>>,
    S::Future: Unpin,
{
    type Response = hyper::Response<Tracked<B>>;
    type Error = S::Error;
    type Future = Timing<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        Timing {
            in_flight: Some(self.activity.begin()),
            answer: self.inner.call(req),
        }
    }
}

/// The answer of [`Timed`]: the request stays in flight while it is awaited (a client that
/// leaves mid-way drops it) and then with the response's body.
pub struct Timing<F> {
    answer: F,
    in_flight: Option<InFlight>,
}

impl<F, B, E> Future for Timing<F>
where
    F: Future<Output = Result<hyper::Response<B>, E>> + Unpin,
{
    type Output = Result<hyper::Response<Tracked<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = ready!(Pin::new(&mut self.answer).poll(cx));
        let in_flight = self.in_flight.take();
        Poll::Ready(answer.map(|r| {
            let (in_flight, draining) = match in_flight {
                // Draining from before the request stops being in flight, so the timer never
                // sees neither.
                Some(f) if r.extensions().get::<DoneAtHead>().is_some() => {
                    (None, Some(f.0.drain()))
                }
                f => (f, None),
            };
            r.map(|body| Tracked {
                body,
                _in_flight: in_flight,
                _draining: draining,
            })
        }))
    }
}

/// A response body that keeps its request in flight, or its answer draining, until hyper is
/// done with it.
pub struct Tracked<B> {
    body: B,
    _in_flight: Option<InFlight>,
    _draining: Option<Draining>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's stream, telling [`Activity`] when bytes go out.
pub struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }

    fn note(&self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r
            && *n > 0
        {
            self.activity.wrote();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Let a connection told to close finish its requests; `None` if the header timeout ends it
/// first. hyper closes at once only a connection that has received nothing since its last
/// answer: one holding part of a request head keeps waiting for the rest, so the timer must
/// go on running.
pub fn finish<C: Future>(conn: Pin<&mut C>, head_timer: Option<HeadTimer>) -> Finish<'_, C> {
    Finish { conn, head_timer }
}

/// The future of [`finish`]: a named type, not an `async fn`, whose `Send` rustc can prove for
/// hyper-util's auto connection (an `async fn` here is a higher-ranked lifetime error there).
pub struct Finish<'a, C> {
    conn: Pin<&'a mut C>,
    head_timer: Option<HeadTimer>,
}

impl<C: Future> Future for Finish<'_, C> {
    type Output = Option<C::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(result) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        match this.head_timer.as_mut().map(|t| t.poll_expired(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);
    const EPS: Duration = Duration::from_millis(1);

    /// The moment `activity` last recorded in `field`.
    fn at(activity: &Activity, field: &AtomicU64) -> Instant {
        activity.base + Duration::from_nanos(field.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn an_idle_connection_has_one_timeout_from_when_it_was_last_busy() {
        let activity = Activity::new();
        let timer = HeadTimer::new(Arc::clone(&activity), T);
        let start = at(&activity, &activity.idle_since);
        assert_eq!(timer.verdict(start + T / 2), Some(start + T));
        assert_eq!(timer.verdict(start + T + EPS), None);

        // A request and its answer: the time runs again from the answer's end.
        let request = activity.begin();
        assert!(
            timer.verdict(start + 100 * T).is_some(),
            "a request in flight was cut"
        );
        let before = Instant::now();
        drop(request);
        let after = Instant::now();
        let deadline = timer
            .verdict(after + T / 2)
            .expect("cut right after an answer");
        assert!(
            deadline >= before + T && deadline <= after + T,
            "{deadline:?}"
        );
        assert_eq!(timer.verdict(deadline + EPS), None);
    }

    #[tokio::test]
    async fn an_answer_still_going_out_counts_as_busy_and_its_own_bytes_do_not() {
        let activity = Activity::new();
        let timer = HeadTimer::new(Arc::clone(&activity), T);
        // Bytes of an answer while its request is in flight are not timed...
        let request = activity.begin();
        activity.wrote();
        assert_eq!(activity.idle_write.load(Ordering::Relaxed), 0);
        drop(request);
        let ended = at(&activity, &activity.idle_since);
        // ...so the time runs from the answer's end, once.
        assert_eq!(timer.verdict(ended + T - EPS), Some(ended + T));
        assert_eq!(timer.verdict(ended + T + EPS), None);

        // The end of an answer still being taken by a slow reader after hyper finished with
        // its body: the time runs from the last byte.
        std::thread::sleep(Duration::from_millis(5));
        activity.wrote();
        let flushed = at(&activity, &activity.idle_write);
        assert!(flushed > ended);
        assert_eq!(timer.verdict(ended + T + EPS), Some(flushed + T));
        assert_eq!(timer.verdict(flushed + T + EPS), None);
    }

    #[tokio::test]
    async fn a_draining_answer_keeps_an_http2_connection_until_its_limit_and_not_after() {
        let activity = Activity::new();
        let h2 = HeadTimer::new(Arc::clone(&activity), T).ignoring_idle_writes();
        let h1 = HeadTimer::new(Arc::clone(&activity), T);
        let answer = activity.drain();
        let head = activity.base + Duration::from_nanos(answer.since);
        let limit = head + DRAIN_TIMEOUTS * T;
        // Looked at again a timeout later while it drains, at its limit last...
        assert_eq!(h2.verdict(head + T + EPS), Some(head + 2 * T + EPS));
        assert_eq!(h2.verdict(limit - EPS), Some(limit));
        // ...and past it the connection has been idle since the head: let go.
        assert_eq!(h2.verdict(limit + EPS), None);
        // Over HTTP/1.1 the answer's bytes going out are what counts, not its draining.
        assert_eq!(h1.verdict(head + T + EPS), None);

        // Of two, the later one's limit holds while it drains, the earlier one's once the
        // later one is done.
        std::thread::sleep(Duration::from_millis(5));
        let later = activity.drain();
        let later_limit = activity.base + Duration::from_nanos(later.since) + DRAIN_TIMEOUTS * T;
        assert!(later_limit > limit);
        assert_eq!(h2.verdict(limit + EPS), Some(later_limit));
        assert_eq!(h2.verdict(later_limit + EPS), None);
        drop(later);
        assert_eq!(h2.verdict(limit - EPS), Some(limit));
        assert_eq!(h2.verdict(limit + EPS), None);
    }

    #[tokio::test]
    async fn an_answer_done_draining_early_lets_the_idle_time_run_from_its_end() {
        let activity = Activity::new();
        let h2 = HeadTimer::new(Arc::clone(&activity), T).ignoring_idle_writes();
        let answer = activity.drain();
        let head = activity.base + Duration::from_nanos(answer.since);
        std::thread::sleep(Duration::from_millis(5));
        drop(answer);
        let ended = at(&activity, &activity.idle_since);
        assert!(ended > head);
        assert_eq!(h2.verdict(ended + T - EPS), Some(ended + T));
        assert_eq!(h2.verdict(ended + T + EPS), None);
        assert!(activity.draining_heads().is_empty());
    }

    #[test]
    fn requests_stay_in_flight_until_their_answers_body_is_dropped() {
        let activity = Activity::new();
        let inner = hyper::service::service_fn(
            |_req: hyper::Request<http_body_util::Empty<bytes::Bytes>>| {
                std::future::ready(Ok::<_, std::convert::Infallible>(hyper::Response::new(
                    http_body_util::Empty::<bytes::Bytes>::new(),
                )))
            },
        );
        let service = Timed::new(inner, Arc::clone(&activity));
        let answer = hyper::service::Service::call(
            &service,
            hyper::Request::new(http_body_util::Empty::new()),
        );
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 1);
        // A client that leaves before the answer drops it unanswered.
        drop(answer);
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);

        let answer = hyper::service::Service::call(
            &service,
            hyper::Request::new(http_body_util::Empty::new()),
        );
        let response = ready_now(answer).expect("infallible");
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 1);
        let idle_before = activity.idle_since.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
        drop(response);
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
        assert!(activity.idle_since.load(Ordering::Relaxed) > idle_before);
    }

    #[tokio::test]
    async fn an_answer_done_at_its_head_is_not_in_flight_while_its_body_waits() {
        let activity = Activity::new();
        let inner = hyper::service::service_fn(
            |_req: hyper::Request<http_body_util::Empty<bytes::Bytes>>| {
                let mut r = hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                r.extensions_mut().insert(DoneAtHead);
                std::future::ready(Ok::<_, std::convert::Infallible>(r))
            },
        );
        let service = Timed::new(inner, Arc::clone(&activity));
        let answer = hyper::service::Service::call(
            &service,
            hyper::Request::new(http_body_util::Empty::new()),
        );
        // While the service works on it, the request is in flight...
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 1);
        let response = ready_now(answer).expect("infallible");
        // ...and no longer once the head is ready, though hyper still holds the body.
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
        let timer = HeadTimer::new(Arc::clone(&activity), T);
        assert_eq!(timer.verdict(Instant::now() + 2 * T), None);
        // Over HTTP/2 its body keeps the connection while it drains, until hyper drops it.
        let h2 = HeadTimer::new(Arc::clone(&activity), T).ignoring_idle_writes();
        assert!(h2.verdict(Instant::now() + 2 * T).is_some());
        drop(response);
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(h2.verdict(Instant::now() + 2 * T), None);
    }

    /// Poll a future that is ready at once.
    fn ready_now<F: Future + Unpin>(mut f: F) -> F::Output {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut f).poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the future was not ready"),
        }
    }

    #[tokio::test]
    async fn the_timer_wakes_its_task_when_the_time_is_up_and_not_before() {
        let t = Duration::from_millis(300);
        let activity = Activity::new();
        let mut timer = HeadTimer::new(Arc::clone(&activity), t);
        let start = Instant::now();
        // Busy for a while: the timer looks, sees a request, and sleeps again.
        let request = activity.begin();
        let early =
            tokio::time::timeout(3 * t, std::future::poll_fn(|cx| timer.poll_expired(cx))).await;
        assert!(early.is_err(), "expired while a request was in flight");
        let ended = Instant::now();
        drop(request);
        tokio::time::timeout(10 * t, std::future::poll_fn(|cx| timer.poll_expired(cx)))
            .await
            .expect("an idle connection's timer never fired");
        assert!(
            ended.elapsed() >= t,
            "expired {:?} after the answer",
            ended.elapsed()
        );
        assert!(start.elapsed() >= 4 * t);
    }
}
