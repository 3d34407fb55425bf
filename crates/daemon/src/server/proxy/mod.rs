//! The front door (docs/design.md §9): everything under `/v1/` is forwarded to the model server, only
//! while every readiness stage holds. Bodies stream both ways without buffering (SSE arrives
//! event by event), backpressure is kept because nothing is read ahead, and a client that goes
//! away drops the upstream request, which closes its connection and so cancels the generation.

pub mod admission;
pub mod auth;
pub mod body;
pub mod h1;
pub mod health;
pub mod path;
pub mod pool;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};

use super::error::ApiError;
use super::metrics::{Outcome, PerThread};
use super::readiness::Stage;
use super::state::AppState;
use crate::config::{UpstreamConfig, UpstreamUrl};
use admission::Admission;
use body::{BodyDeadlineError, IdleBody, IdleTimeoutError, boxed};
use bytes::Bytes;
use h1::RequestBody;
use pool::{Pool, PoolError};
use tdx_net::forward::headers::strip_hop_by_hop;

/// Request bodies up to this size (declared by Content-Length) are read whole before the
/// request goes upstream; larger ones, and those of unknown length, stream.
pub const BUFFERED_REQUEST_BODY: u64 = 64 * 1024;

/// The configured upstream and the one connection pool to it.
pub struct Proxy {
    pub upstream: UpstreamUrl,
    pub config: UpstreamConfig,
    pool: Arc<Pool>,
    admission: Arc<Admission>,
    /// The Host header every upstream request carries, parsed once.
    host: Option<HeaderValue>,
}

impl Proxy {
    /// `connection_threads`: how many the listener runs (`server::shards`); each gets its own
    /// idle connections. `metrics`: where responses count while they stream.
    pub fn new(
        upstream: UpstreamUrl,
        config: UpstreamConfig,
        connection_threads: usize,
        metrics: Arc<PerThread>,
    ) -> Self {
        let pool = Pool::new(
            upstream.authority.clone(),
            Duration::from_millis(config.connect_timeout_ms),
            Duration::from_millis(config.keepalive_idle_ms),
            config.max_concurrent_requests,
            connection_threads,
        );
        Proxy {
            host: HeaderValue::from_str(upstream.host_header()).ok(),
            upstream,
            admission: Admission::new(config.max_concurrent_requests, metrics),
            config,
            pool,
        }
    }

    /// Close the idle upstream connections kept past `keepalive_idle_ms`.
    pub fn close_expired_idle(&self) -> usize {
        self.pool.close_expired()
    }

    /// One health probe: (healthy, what was seen).
    pub async fn probe(&self) -> (bool, String) {
        let url = format!("{}{}", self.upstream.as_str(), self.config.health_path);
        let Ok(uri) = url.parse::<Uri>() else {
            return (false, format!("{url}: not a valid URL"));
        };
        // Origin-form target and a Host header: the pool speaks HTTP/1.1 as it is written.
        let target = uri
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        let mut req = hyper::Request::new(RequestBody::Full(Bytes::new()));
        *req.uri_mut() = target;
        if let Some(v) = &self.host {
            req.headers_mut().insert(header::HOST, v.clone());
        }
        let wait = Duration::from_millis(self.config.connect_timeout_ms) + Duration::from_secs(5);
        let exchange = async {
            let resp = self.pool.send(req).await?;
            let status = resp.status();
            // Read to the end (a few bytes) so that the connection is kept for the next probe;
            // a body too long for that only costs the connection.
            let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
            Ok::<_, PoolError>(status)
        };
        match tokio::time::timeout(wait, exchange).await {
            Err(_) => (false, format!("GET {url}: no answer within {wait:?}")),
            Ok(Err(e)) => (false, format!("GET {url}: {}", error_chain(&e))),
            Ok(Ok(status)) => (status.is_success(), format!("GET {url}: {status}")),
        }
    }

    async fn forward(
        &self,
        state: &AppState,
        req: hyper::Request<Incoming>,
    ) -> Result<Response, ApiError> {
        if let Some(missing) = state.readiness.first_missing() {
            return Err(ApiError::NotReady {
                stage: missing.stage.name(),
                detail: missing.detail,
            });
        }
        path::check(req.uri(), req.version()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        auth::check(req.headers(), &self.config.api_key_sha256)
            .map_err(|m| ApiError::Unauthorized(m.to_string()))?;
        let limit = self.config.max_request_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::TooLarge { limit });
        }

        let (mut parts, body) = req.into_parts();
        // Origin-form, as HTTP/1.1 sends it to an origin server (an HTTP/2 request arrives
        // with scheme and authority); the path and query go on unchanged.
        parts.uri = Uri::from(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        // vLLM speaks HTTP/1.1; an HTTP/2 request passed on as such would get a 502.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        // The whole body goes at once (or streams); nothing waits for a 100 Continue.
        parts.headers.remove(header::EXPECT);
        if !self.config.api_key_sha256.is_empty() {
            // The key was for us; the model server never sees it.
            parts.headers.remove(header::AUTHORIZATION);
        }
        if let Some(v) = &self.host {
            parts.headers.insert(header::HOST, v.clone());
        }
        let idle = Duration::from_secs(self.config.idle_timeout_secs);
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        // Two bounds on the client's upload: no byte for the idle limit (stalled), or not
        // whole within request_body_timeout_secs however steadily it moves (a trickle). The
        // second matters to a streamed body, which holds a max_concurrent_requests slot
        // while it uploads; both answer 408 (`body_error`).
        let body = IdleBody::new(Limited::new(body, limit_usize), idle)
            .within(Duration::from_secs(self.config.request_body_timeout_secs));
        let body = if body.is_end_stream() {
            // No body at all (an HTTP/2 GET ends its stream with the headers): none goes
            // upstream either. Sent chunked, its empty end would sit unread on a server that
            // does not expect a body, which then resets the connection under the response.
            RequestBody::Full(Bytes::new())
        } else if declared.is_some_and(|n| n <= BUFFERED_REQUEST_BODY) {
            // A small body (a chat request) is read whole before the upstream is asked, as
            // nginx does: it is usually already in the buffer the headers came in, and the
            // upstream connection then writes head and body at once instead of waiting on
            // this connection for each piece. Read before admission: a client slow to send
            // a few kilobytes holds none of the max_concurrent_requests slots meant for
            // requests the model is working on, so it gets the body's own bounds rather than
            // a tight one (a steady slow upload passes, a stalled one is cut).
            RequestBody::Full(
                read_whole(body)
                    .await
                    .map_err(|e| self.body_error(e.as_ref()))?,
            )
        } else {
            RequestBody::Stream {
                body: boxed(body),
                length: declared,
            }
        };
        let admitted = self.admission.try_admit().ok_or_else(|| {
            ApiError::Overloaded(format!(
                "{} model requests in flight (upstream.max_concurrent_requests)",
                self.config.max_concurrent_requests
            ))
        })?;
        let upstream_req = hyper::Request::from_parts(parts, body);

        let started = Instant::now();
        let wait = Duration::from_secs(self.config.response_header_timeout_secs);
        // Only the model server's own delays count (taking no byte of the request, or no
        // head once it has all of it): a large body uploaded slowly is the client's time,
        // bounded by the body's own limits above (408).
        let resp = match self.pool.send_within(upstream_req, Some(wait)).await {
            Err(e) if e.upstream_timeout().is_some() => {
                return Err(ApiError::UpstreamTimeout {
                    upstream: self.upstream.as_str().to_string(),
                    secs: wait.as_secs(),
                });
            }
            Err(e) => return Err(self.classify(state, &e)),
            Ok(r) => r,
        };
        state
            .metrics
            .requests
            .observe_upstream_header(started.elapsed());
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = boxed(IdleBody::new(body, idle).holding(admitted.streaming()));
        Ok(Response::from_parts(parts, body))
    }

    /// The client's request body could not be read (it is the client's fault, not the
    /// upstream's).
    fn body_error(&self, e: &(dyn std::error::Error + 'static)) -> ApiError {
        if is_length_limit(e) {
            return ApiError::TooLarge {
                limit: self.config.max_request_body_bytes,
            };
        }
        if let Some(cut) = find_cause::<IdleTimeoutError>(e) {
            return ApiError::RequestTimeout(format!(
                "the request body moved no byte for {}s (upstream.idle_timeout_secs)",
                cut.0.as_secs()
            ));
        }
        if let Some(cut) = find_cause::<BodyDeadlineError>(e) {
            return ApiError::RequestTimeout(format!(
                "the request body was not received whole within {}s \
                 (upstream.request_body_timeout_secs)",
                cut.0.as_secs()
            ));
        }
        ApiError::BadRequest(format!("request body: {}", error_chain(e)))
    }

    fn classify(&self, state: &AppState, e: &PoolError) -> ApiError {
        if let Some(body) = e.request_body() {
            return self.body_error(body);
        }
        let detail = error_chain(e);
        if e.is_connect() {
            // Say so at once rather than at the next health poll.
            state.readiness.set(
                Stage::UpstreamHealthy,
                false,
                format!("{}: {detail}", self.upstream.as_str()),
            );
        }
        ApiError::UpstreamUnavailable {
            upstream: self.upstream.as_str().to_string(),
            detail,
        }
    }
}

/// A body read to its end. The usual small request arrives as one frame, which is passed on
/// as it is rather than copied into a list and back (`BodyExt::collect`).
async fn read_whole<B>(mut body: B) -> Result<Bytes, B::Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match &first {
            None => first = Some(data),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

/// Whether `e` or one of its causes is the request body limit.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    find_cause::<LengthLimitError>(e).is_some()
}

/// `e` or the first of its causes that is a `T`.
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<T>() {
            return Some(t);
        }
        source = s.source();
    }
    None
}

/// `e` and its causes on one line: hyper's outer messages alone ("client error (Connect)")
/// do not say what happened.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Everything under `/v1/` (`server::service`).
pub async fn handler(state: &AppState, req: hyper::Request<Incoming>) -> Response {
    let Some(proxy) = state.proxy.as_ref() else {
        return ApiError::NotFound(
            "no model server is configured on this agent (upstream.url): it serves attestation only"
                .into(),
        )
        .into_response();
    };
    let result = proxy.forward(state, req).await;
    let outcome = match &result {
        Ok(r) => Outcome::upstream(r.status().as_u16()),
        Err(e) => Outcome::agent(e.status().as_u16()),
    };
    state.metrics.requests.count_outcome(outcome);
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "model request refused");
            e.into_response()
        }
    }
}
