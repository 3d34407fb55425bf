//! The body wrapper both directions of the front door use: it cuts a body that moves no byte
//! for the idle timeout (never one that keeps moving, however long, unless it is given an
//! overall bound with [`IdleBody::within`]), and holds the request's concurrency permit until
//! the last byte is through.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}: the body was cut")]
pub struct IdleTimeoutError(pub Duration);

/// The body was not through within the overall time [`IdleBody::within`] gave it.
#[derive(Debug, thiserror::Error)]
#[error("the body was not received whole within {0:?}: it was cut")]
pub struct BodyDeadlineError(pub Duration);

/// `inner` with an idle timeout. The clock only runs while we wait on `inner`: a slow reader
/// on the other side (backpressure) does not count against the sender.
pub struct IdleBody<B, H = ()> {
    inner: B,
    idle: Duration,
    /// Armed when a wait on `inner` begins, and only created then: a small body that is
    /// already there never waits, and a timer per body and direction was a measurable part
    /// of the front door's CPU per request (docs/benchmarks.md).
    deadline: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    /// The overall bound from [`IdleBody::within`]: when it is and how long it was.
    by: Option<(Instant, Duration)>,
    _hold: H,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleBody {
            inner,
            idle,
            deadline: None,
            waiting: false,
            by: None,
            _hold: (),
        }
    }

    /// Also cut the body when it is not through within `total` from now, however steadily
    /// it moves. Like the idle clock, it only cuts while we wait on `inner`: a body whose
    /// frames are there when asked for is never cut by it, so a slow reader on the other
    /// side is not counted as the sender's delay. It shares the idle timer (one per wait).
    pub fn within(mut self, total: Duration) -> Self {
        self.by = Some((Instant::now() + total, total));
        self
    }

    /// Keep `guard` alive until this body is dropped (finished or abandoned).
    pub fn holding<H>(self, guard: H) -> IdleBody<B, H> {
        IdleBody {
            inner: self.inner,
            idle: self.idle,
            deadline: self.deadline,
            waiting: self.waiting,
            by: self.by,
            _hold: guard,
        }
    }
}

impl<B, H: Unpin> Body for IdleBody<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = match (this.waiting, &mut this.deadline) {
                    (true, Some(d)) => d,
                    (_, slot) => {
                        // A wait begins now; it ends at the idle limit or the overall
                        // one, whichever comes first.
                        let idle_at = Instant::now() + this.idle;
                        let at = this.by.map_or(idle_at, |(by, _)| by.min(idle_at));
                        match slot {
                            Some(d) => d.as_mut().reset(at),
                            None => *slot = Some(Box::pin(tokio::time::sleep_until(at))),
                        }
                        this.waiting = true;
                        slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
                    }
                };
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(match this.by {
                        Some((by, total)) if Instant::now() >= by => {
                            BodyDeadlineError(total).into()
                        }
                        _ => IdleTimeoutError(this.idle).into(),
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Box any body into axum's body type.
pub fn boxed<B>(b: B) -> axum::body::Body
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    axum::body::Body::new(b.map_err(Into::<BoxError>::into))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A body fed by a channel: the test decides when each chunk arrives.
    struct Chan(mpsc::Receiver<Bytes>);

    impl Body for Chan {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_moving_stream_is_never_cut_and_a_silent_one_is() {
        let (tx, rx) = mpsc::channel(1);
        let mut body = IdleBody::new(Chan(rx), Duration::from_secs(10));
        let sender = tokio::spawn(async move {
            // 30 chunks 5 s apart: 150 s in all, far beyond the 10 s idle timeout.
            for i in 0..30u8 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                tx.send(Bytes::from(vec![i])).await.unwrap();
            }
            // Then silence while the sender stays open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        for i in 0..30u8 {
            let f = body.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), Bytes::from(vec![i]));
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<IdleTimeoutError>(), "{err}");
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_does_not_count_against_the_sender() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = IdleBody::new(Chan(rx), Duration::from_secs(10));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.is_some());
        // The reader stalls for a minute; the sender had its next chunk ready all along.
        tx.send(Bytes::from_static(b"b")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"b"));
        drop(tx);
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_overall_bound_cuts_a_moving_body_but_never_one_that_is_ready() {
        let (tx, rx) = mpsc::channel(8);
        let mut body =
            IdleBody::new(Chan(rx), Duration::from_secs(10)).within(Duration::from_secs(60));
        let sender = tokio::spawn(async move {
            // A chunk every 5 s, well inside the idle limit, for ever.
            for i in 0u8.. {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if tx.send(Bytes::from(vec![i])).await.is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let err = loop {
            match body.frame().await.unwrap() {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(err.is::<BodyDeadlineError>(), "{err}");
        assert!(
            start.elapsed() >= Duration::from_secs(60),
            "cut before the bound"
        );
        sender.abort();

        // Past the bound, a frame that is already there still goes through: only waiting on
        // the sender counts.
        let (tx, rx) = mpsc::channel(4);
        let mut body =
            IdleBody::new(Chan(rx), Duration::from_secs(10)).within(Duration::from_secs(1));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(body.frame().await.unwrap().is_ok());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyDeadlineError>(), "{err}");
    }

    #[tokio::test]
    async fn the_guard_lives_as_long_as_the_body() {
        let (_tx, rx) = mpsc::channel::<Bytes>(1);
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let permit = sem.clone().try_acquire_owned().unwrap();
        let body = IdleBody::new(Chan(rx), Duration::from_secs(1)).holding(permit);
        assert_eq!(sem.available_permits(), 0);
        drop(body);
        assert_eq!(sem.available_permits(), 1);
    }
}
