//! What every connection serves: `/v1/` straight to the front door, everything else (evidence,
//! challenges, probes, metrics, gRPC) through the axum router.
//!
//! The model routes are the agent's hot path; routing them through axum cost a path match, a
//! percent-decoded capture and extractor plumbing on every request for a prefix test
//! (docs/benchmarks.md).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use tdx_net::head_timer::DoneAtHead;
use tower::ServiceExt as _;

use super::proxy::body::IdleBody;
use super::state::AppState;

/// The path prefix of the model routes.
pub const MODEL_PREFIX: &str = "/v1/";

#[derive(Clone)]
pub struct Service {
    state: Arc<AppState>,
    router: axum::Router,
    /// How long a request body on the router's routes may move no byte. The connection's
    /// header timer stops while a request is in flight (a model may think for minutes), so
    /// without this a challenge whose body never comes would hold its connection forever;
    /// the model routes have the front door's own idle timeout.
    body_idle: Duration,
}

impl Service {
    pub fn new(state: Arc<AppState>, router: axum::Router) -> Self {
        let body_idle = Duration::from_secs(state.config.limits.header_read_timeout_secs);
        Service {
            state,
            router,
            body_idle,
        }
    }

    pub fn metrics(&self) -> &super::metrics::Metrics {
        &self.state.metrics
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: hyper::Request<Incoming>) -> Answer {
        self.state.metrics.requests.count_request();
        if req.uri().path().starts_with(MODEL_PREFIX) {
            let state = Arc::clone(&self.state);
            Box::pin(async move { Ok(super::proxy::handler(&state, req).await) })
        } else {
            // Over HTTP/1.1 the answer's bytes going out are what keeps the connection
            // (`head_timer`): its body may stay whole.
            let h2 = req.version() == hyper::Version::HTTP_2;
            // The router's bodies are small (64 KiB at most: a nonce, a gRPC request), so one
            // must also arrive whole within twice the header timeout: a trickle of a byte just
            // inside the idle timeout would otherwise hold the connection for days. (Twice, so
            // that a body that never comes is named by the idle limit it broke first.)
            let idle = self.body_idle;
            let total = idle.saturating_mul(2);
            let req = req.map(|b| Body::new(IdleBody::new(b, idle).within(total)));
            let answer = self.router.clone().oneshot(req);
            Box::pin(async move {
                let mut response = answer.await?;
                // Its answers are whole in memory, or streams that never end (gRPC health
                // `Watch`): neither may keep the connection as a request in flight once the
                // head is out, only while its body is being taken, for a bounded time
                // (`head_timer`).
                response.extensions_mut().insert(DoneAtHead);
                Ok(if h2 { in_pieces(response) } else { response })
            })
        }
    }
}

/// The most an answer of the router's hands hyper at once. What is left to go out when hyper
/// lets go of a body, one piece at most, has the header timeout and then the GOAWAY's grace
/// (20 s by default): 4 KiB needs only about 2 kbit/s for that, and a few hundred KB of
/// evidence is still only some tens of frames.
const PIECE: usize = 4 * 1024;

/// `response` with its body in frames of at most [`PIECE`] bytes. hyper asks an HTTP/2 body
/// for its next frame once the client's window has room beyond what the stream has buffered,
/// hands the whole frame to that buffer, and lets go of the body with its last frame, which
/// ends the answer's draining (`head_timer`): the evidence document in one frame (several
/// hundred KB with eight GPUs) would stop draining before its first byte is taken, and a
/// client still taking it slowly would be cut by the GOAWAY mid-body. In pieces, hyper holds
/// the body until one piece at most is left to go out, which the GOAWAY's grace lets out. A
/// small answer is left as it is.
fn in_pieces(response: Response) -> Response {
    if response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= PIECE as u64)
    {
        return response;
    }
    response.map(|inner| {
        Body::new(Pieces {
            inner,
            rest: Bytes::new(),
        })
    })
}

/// See [`in_pieces`].
struct Pieces {
    inner: Body,
    /// What is left of the inner body's last data frame.
    rest: Bytes,
}

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                other => return Poll::Ready(other),
            }
        }
        let piece = this.rest.split_to(this.rest.len().min(PIECE));
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint.set_lower(inner.lower().saturating_add(rest));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_large_answer_goes_out_in_pieces_whole_and_in_order() {
        let document: Vec<u8> = (0..5 * PIECE + 7).map(|i| (i % 251) as u8).collect();
        let response = in_pieces(Response::new(Body::from(document.clone())));
        let mut body = response.into_body();
        assert_eq!(body.size_hint().exact(), Some(document.len() as u64));
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.expect("a frame").into_data().expect("data");
            assert!(!data.is_empty() && data.len() <= PIECE, "{}", data.len());
            got.extend_from_slice(&data);
            frames += 1;
            assert_eq!(
                body.size_hint().exact(),
                Some((document.len() - got.len()) as u64)
            );
        }
        assert_eq!(frames, 6);
        assert_eq!(got, document);
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn trailers_follow_the_pieces_and_a_small_answer_is_left_whole() {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
        let stream = http_body_util::Full::new(Bytes::from(vec![1u8; PIECE + 1]))
            .with_trailers(std::future::ready(Some(Ok(trailers.clone()))));
        let response = in_pieces(Response::new(Body::new(stream)));
        let collected = response.into_body().collect().await.expect("body");
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes().len(), PIECE + 1);

        let small = in_pieces(Response::new(Body::from(vec![2u8; PIECE])));
        let mut body = small.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data").len(), PIECE);
    }
}
