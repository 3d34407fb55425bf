//! `tdx-agent connect`'s proxy: a local plain-HTTP endpoint for unmodified OpenAI SDKs that forwards
//! every request to an agent, but only over an HTTP/2 RA-TLS connection whose certificate
//! passed the policy and whose TD answered a fresh challenge on that same connection.
//!
//! One multiplexed connection carries all requests. It is replaced when it closes (a server
//! re-issuing its certificate sends GOAWAY) or fails, and every replacement is verified again
//! before anything crosses it. The TD is re-challenged before forwarding once the last
//! challenge is older than `--rechallenge-secs`. A failed verification answers the request
//! with a 502 in OpenAI's error shape naming the failed check; nothing is forwarded.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http2;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::session::BoxError;
use crate::{
    Alpn, Client, ClientBody, ClientError, FailedCheck, Session, Target, Timeouts, challenge,
};
use tdx_core::verify::Report;
use tdx_net::forward::headers::strip_hop_by_hop;
use tdx_net::forward::openai_error::OpenAiError;
use tdx_net::head_timer::{Activity, HeadTimer, Timed, finish};

/// Bound on one challenge exchange (evidence + a fresh quote, which takes ~1 s and may queue
/// behind other callers' batches): above the agent's own quote timeout (45 s by default), so a
/// slow but healthy quote is not reported as an unavailable server. Forwarded requests have
/// no such bound.
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for a local client's request headers (slow clients must not hold connections).
const LOCAL_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a local connection may have no request in flight before it is closed: a socket
/// that never says anything (hyper-util's version sniffing has no timeout of its own), a
/// half-sent HTTP/2 preface, an idle keep-alive or HTTP/2 connection. Without it, 1024 silent
/// sockets would take every slot and stop the accept loop.
const LOCAL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a local client's request body may pause between bytes while the server waits
/// for it: past it the request is reset on the server and the client gets a 400.
const LOCAL_BODY_PAUSE: Duration = Duration::from_secs(30);
const MAX_LOCAL_CONNECTIONS: usize = 1024;
/// How long in-flight requests may finish after SIGTERM/Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
pub const HEALTHZ: &str = "/healthz";

/// Error `type`s clients see.
pub const ATTESTATION_FAILED: &str = "attestation_failed";
pub const UPSTREAM_UNAVAILABLE: &str = "upstream_unavailable";

pub const DEFAULT_RECHALLENGE_SECS: u64 = 300;
/// A day: a challenge older than that no longer says much about whether the TD is live.
pub const MAX_RECHALLENGE_SECS: u64 = 86_400;
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 32 << 20;

/// How `connect` forwards, beyond which server and policy; only valid values are built.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    rechallenge: Duration,
    max_request_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectOptionsError {
    #[error(
        "rechallenge_secs {0} is over {MAX_RECHALLENGE_SECS} (a day): a challenge that old no \
         longer shows the server is live; use 0 (before every request) to {MAX_RECHALLENGE_SECS}"
    )]
    Rechallenge(u64),
    #[error("max_request_bytes must be at least 1")]
    MaxRequestBytes,
}

impl ConnectOptions {
    /// Challenge the server again before forwarding once the last challenge is
    /// `rechallenge_secs` old (0: before every request, at most [`MAX_RECHALLENGE_SECS`]);
    /// forward request bodies of at most `max_request_bytes` (larger ones get 413).
    pub fn new(rechallenge_secs: u64, max_request_bytes: u64) -> Result<Self, ConnectOptionsError> {
        if rechallenge_secs > MAX_RECHALLENGE_SECS {
            return Err(ConnectOptionsError::Rechallenge(rechallenge_secs));
        }
        if max_request_bytes == 0 {
            return Err(ConnectOptionsError::MaxRequestBytes);
        }
        Ok(ConnectOptions {
            rechallenge: Duration::from_secs(rechallenge_secs),
            max_request_bytes,
        })
    }
}

/// Whether a policy may guard forwarded requests: prompts and API keys go only to a TD whose
/// image the policy pins (MRTD and RTMR0-2), unless the caller said in so many words that any
/// genuine TD will do. RTMR3, its events and the owner registers do not count: any image can
/// reproduce them. `connect` and the Python transport both decide here, each naming its own
/// spelling of the flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// MRTD and RTMR0-2 each have allowed values.
    Pinned,
    /// The image is not pinned and the caller accepted that: warn before forwarding.
    InsecureUnpinned,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinningError {
    #[error(
        "{policy} does not pin the TD image: {} {} no allowed value in [measurements], so \
         requests would be forwarded to any TD image on a genuine platform (RTMR3, its events \
         and the owner registers can be reproduced by any image). Pin MRTD and RTMR0-2 \
         (`tdx-agent measurements --toml` on a reference TD prints them; docs/connect.md), or \
         add {flag} to accept any image",
        unpinned.join(", "),
        if unpinned.len() == 1 { "has" } else { "have" }
    )]
    Unpinned {
        policy: String,
        unpinned: Vec<&'static str>,
        flag: &'static str,
    },
    #[error(
        "{flag} with {policy}, which pins the TD image: the flag is for a policy that does \
         not; drop it"
    )]
    NeedlessFlag { policy: String, flag: &'static str },
}

impl Pinning {
    /// `policy_name` names the policy in errors (its file); `flag` is how the caller spells the
    /// insecure flag (`--insecure-no-policy`, `insecure_no_policy=True`).
    pub fn of(
        policy: &tdx_core::verify::Policy,
        policy_name: &str,
        insecure_no_policy: bool,
        flag: &'static str,
    ) -> Result<Pinning, PinningError> {
        let unpinned = policy.measurements.unpinned_image_registers();
        match (unpinned.is_empty(), insecure_no_policy) {
            (true, false) => Ok(Pinning::Pinned),
            (false, true) => Ok(Pinning::InsecureUnpinned),
            (false, false) => Err(PinningError::Unpinned {
                policy: policy_name.to_owned(),
                unpinned,
                flag,
            }),
            (true, true) => Err(PinningError::NeedlessFlag {
                policy: policy_name.to_owned(),
                flag,
            }),
        }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            rechallenge: Duration::from_secs(DEFAULT_RECHALLENGE_SECS),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// Forward every request accepted on `listener` to `target` over one verified HTTP/2 RA-TLS
/// connection, until `shutdown`. Verification starts at once, so a server the policy refuses
/// is reported at start, not at the first request; requests arriving meanwhile wait for that
/// verification and share it.
pub async fn run(
    listener: TcpListener,
    client: Client,
    target: Target,
    options: ConnectOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let upstream = Arc::new(Upstream::new(
        client,
        target,
        options.rechallenge,
        options.max_request_bytes,
    ));
    let first = Arc::clone(&upstream);
    tokio::spawn(async move {
        let _ = first.acquire().await;
    });
    serve(listener, upstream, shutdown).await;
}

/// `connect`'s verified forwarding for in-process clients (the Python package's httpx
/// transport): the same one HTTP/2 connection, certificate policy, fresh challenge per
/// connection and re-challenge interval as the proxy, but a refusal is an error the caller
/// sees, never an answer that looks like the server's.
pub struct Forwarder {
    upstream: Arc<Upstream>,
}

/// Why [`Forwarder::send`] has no response.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The server failed a check (its certificate against the policy, or a fresh
    /// challenge): nothing of the request was sent.
    #[error(
        "{server} failed attestation, so nothing was sent: {} check failed: expected {}, found {}",
        check.name, check.expected, check.found
    )]
    Attestation { server: String, check: FailedCheck },
    /// The server could not be reached or verified: nothing of the request was sent.
    #[error("{server} is unavailable, so nothing was sent: {detail}")]
    Unavailable { server: String, detail: String },
    #[error("the request body exceeds {max} bytes")]
    TooLarge { max: u64 },
    /// The request could not be expressed (a bad header or path).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request went out over the verified connection, which failed before an answer.
    #[error("{server}: the verified connection failed: {detail}")]
    Failed { server: String, detail: String },
    /// No verified connection within [`Deadlines::connect`]: nothing of the request was sent.
    #[error("{server}: no verified connection within {secs:.3} s, so nothing was sent")]
    ConnectTimeout { server: String, secs: f64 },
    /// The request went out and the answer's head did not come within [`Deadlines::answer`]
    /// (the request is reset, but the server may have acted on it).
    #[error("{server}: no answer within {secs:.3} s of sending the request")]
    AnswerTimeout { server: String, secs: f64 },
}

/// Time limits of one [`Forwarder::send_within`]; `None` waits as long as the connection's
/// own limits allow (connect and handshake 10 s each, a challenge's answer 60 s).
#[derive(Clone, Copy, Debug, Default)]
pub struct Deadlines {
    /// To have a verified connection: connect, handshake, certificate policy, a challenge
    /// when one is due.
    pub connect: Option<Duration>,
    /// From sending the request to the answer's head.
    pub answer: Option<Duration>,
}

impl Forwarder {
    pub fn new(client: Client, target: Target, options: ConnectOptions) -> Self {
        Forwarder {
            upstream: Arc::new(Upstream::new(
                client,
                target,
                options.rechallenge,
                options.max_request_bytes,
            )),
        }
    }

    /// The server this forwarder sends to.
    pub fn target(&self) -> &Target {
        &self.upstream.target
    }

    fn refused(&self, r: Refusal) -> ForwardError {
        let server = self.upstream.target.url.clone();
        match r {
            Refusal::Attestation(check) => ForwardError::Attestation { server, check },
            Refusal::Unavailable(detail) => ForwardError::Unavailable { server, detail },
        }
    }

    /// Verify the server now, as the next request would: open and verify a connection, or
    /// re-challenge the one held when it is due.
    pub async fn verify(&self) -> Result<(), ForwardError> {
        self.upstream
            .acquire()
            .await
            .map(|_| ())
            .map_err(|r| self.refused(r))
    }

    /// Send one request (`path_and_query` on the verified server; hop-by-hop headers are
    /// dropped) and return the server's answer, its body still streaming.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<hyper::body::Incoming>, ForwardError> {
        self.send_within(method, path_and_query, headers, body, Deadlines::default())
            .await
    }

    /// [`Forwarder::send`] within `deadlines`.
    pub async fn send_within(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
        deadlines: Deadlines,
    ) -> Result<Response<hyper::body::Incoming>, ForwardError> {
        let max = self.upstream.max_request_bytes;
        if u64::try_from(body.len()).unwrap_or(u64::MAX) > max {
            return Err(ForwardError::TooLarge { max });
        }
        if method == Method::CONNECT {
            return Err(ForwardError::Invalid("CONNECT is not forwarded".into()));
        }
        let mut headers = headers;
        // The body is whole here: its length is known, whatever the caller's header said (a
        // mismatch would be an HTTP/2 protocol error after the request went out).
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut builder = Request::builder().method(method).uri(path_and_query);
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        let req = builder
            .body(())
            .map_err(|e| ForwardError::Invalid(e.to_string()))?;
        let (parts, ()) = req.into_parts();
        let body = Full::new(body).map_err(|e| match e {}).boxed();
        let upstream_req = upstream_request(&parts, &self.upstream.target.authority, body)
            .map_err(|e| ForwardError::Invalid(e.to_string()))?;
        let fault = BodyFault::none();
        let server = || self.upstream.target.url.clone();
        match self.upstream.send(upstream_req, &fault, deadlines).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body))
            }
            Err(SendError::Refused(r)) => Err(self.refused(r)),
            Err(SendError::TooLarge) => Err(ForwardError::TooLarge { max }),
            // The body is whole in memory: reading it cannot fail.
            Err(SendError::LocalBody(detail)) => Err(ForwardError::Invalid(detail)),
            Err(SendError::Failed(detail)) => Err(ForwardError::Failed {
                server: server(),
                detail,
            }),
            Err(SendError::ConnectTimeout(limit)) => Err(ForwardError::ConnectTimeout {
                server: server(),
                secs: limit.as_secs_f64(),
            }),
            Err(SendError::AnswerTimeout(limit)) => Err(ForwardError::AnswerTimeout {
                server: server(),
                secs: limit.as_secs_f64(),
            }),
        }
    }
}

/// When the last passed challenge was made, as the rechallenge rule reads it.
#[derive(Clone, Copy, Debug)]
struct Challenged {
    /// When it was sent: a request that arrived before then is answered by it.
    started: Instant,
    /// When it passed: its age counts from here.
    passed: Instant,
}

/// The rechallenge rule: challenge again before forwarding a request that `arrived` once the
/// last passed challenge is `every` old or older, unless that challenge was sent after the
/// request arrived. The exception keeps `--rechallenge-secs 0` ("before every request") from
/// queueing requests behind one challenge each: every request that waited while a challenge
/// was made is forwarded on it, and it is still proof made after the request came.
fn challenge_due(last: Challenged, arrived: Instant, now: Instant, every: Duration) -> bool {
    last.started < arrived && now.saturating_duration_since(last.passed) >= every
}

/// Why a request was not forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refusal {
    /// The server was reached but failed a check.
    Attestation(FailedCheck),
    /// The server could not be reached or stopped answering.
    Unavailable(String),
}

impl Refusal {
    fn from_client(e: &ClientError) -> Self {
        match e.failed_check() {
            Some(c) => Refusal::Attestation(c),
            None => Refusal::Unavailable(e.to_string()),
        }
    }

    fn from_report(report: &Report) -> Self {
        Refusal::from_client(&ClientError::Rejected(Box::new(report.clone())))
    }

    fn to_openai(&self, server: &str) -> OpenAiError {
        match self {
            Refusal::Attestation(c) => OpenAiError::new(
                StatusCode::BAD_GATEWAY,
                ATTESTATION_FAILED,
                format!(
                    "{server} failed attestation, so nothing was forwarded: {} check failed: \
                     expected {}, found {}",
                    c.name, c.expected, c.found
                ),
            )
            .with_code(c.name.clone()),
            Refusal::Unavailable(detail) => OpenAiError::new(
                StatusCode::BAD_GATEWAY,
                UPSTREAM_UNAVAILABLE,
                format!("{server} is unavailable: {detail}"),
            ),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Refusal::Attestation(_) => ATTESTATION_FAILED,
            Refusal::Unavailable(_) => UPSTREAM_UNAVAILABLE,
        }
    }
}

/// A challenge that did not pass: why, and whether all it showed is that the server now
/// serves another key ([`challenge::answered_for_another_key`]): the refusal names only the
/// first failed check, which cannot tell a rotated key from a server failing more.
struct ChallengeFailed {
    refusal: Refusal,
    key_changed: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Attestation(c) => write!(
                f,
                "{} check failed: expected {}, found {}",
                c.name, c.expected, c.found
            ),
            Refusal::Unavailable(d) => f.write_str(d),
        }
    }
}

/// The verified connection.
struct Live {
    id: u64,
    session: Session,
    h2: http2::SendRequest<ClientBody>,
    last: Passed,
}

/// The last challenge that passed on a connection: when, and what it showed.
struct Passed {
    when: Challenged,
    unix: i64,
    summary: String,
}

impl Passed {
    /// A challenge sent at `started` passed just now with `report`.
    fn now(report: &Report, started: Instant) -> Self {
        Passed {
            when: Challenged {
                started,
                passed: Instant::now(),
            },
            unix: tdx_core::verify::time::now_unix(),
            summary: report.summary(),
        }
    }
}

/// What a request needs to go out over the verified connection, and what /healthz shows.
#[derive(Clone)]
struct Verified {
    id: u64,
    sender: http2::SendRequest<ClientBody>,
    last_challenge_unix: i64,
    summary: String,
    spki_sha256: String,
}

impl Live {
    fn verified(&self) -> Verified {
        Verified {
            id: self.id,
            sender: self.h2.clone(),
            last_challenge_unix: self.last.unix,
            summary: self.last.summary.clone(),
            spki_sha256: tdx_core::encoding::hex(&self.session.spki_sha256),
        }
    }
}

#[derive(Default)]
struct Slot {
    live: Option<Live>,
    /// The outcome of the latest failed attempt, shared with requests that queued behind it.
    last_failure: Option<Refusal>,
}

/// What local clients may take of the proxy: time without a request, pauses in a body.
#[derive(Clone, Copy, Debug)]
struct LocalLimits {
    idle: Duration,
    body_pause: Duration,
}

impl Default for LocalLimits {
    fn default() -> Self {
        LocalLimits {
            idle: LOCAL_IDLE_TIMEOUT,
            body_pause: LOCAL_BODY_PAUSE,
        }
    }
}

/// The server and the one verified connection to it.
struct Upstream {
    client: Client,
    target: Target,
    rechallenge: Duration,
    max_request_bytes: u64,
    local: LocalLimits,
    /// Held while a connection is opened or challenged, so requests wait for that
    /// verification instead of starting their own.
    slot: tokio::sync::Mutex<Slot>,
    /// Connection attempts started; tells a waiting request whether one finished meanwhile.
    attempts: AtomicU64,
    next_id: AtomicU64,
}

impl Upstream {
    fn new(client: Client, target: Target, rechallenge: Duration, max_request_bytes: u64) -> Self {
        Upstream {
            client,
            target,
            rechallenge,
            max_request_bytes,
            local: LocalLimits::default(),
            slot: tokio::sync::Mutex::new(Slot::default()),
            attempts: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// The verified connection, opened and verified or re-challenged first when needed. The
    /// verification runs in a task of its own: a caller that gives up (its deadline, a client
    /// that disconnects) must not cancel it half-way, since other requests wait on it and,
    /// were every caller's deadline shorter than a verification, none would ever complete.
    async fn acquire(self: &Arc<Self>) -> Result<Verified, Refusal> {
        let arrived = Instant::now();
        let upstream = Arc::clone(self);
        tokio::spawn(async move { upstream.acquire_here(arrived).await })
            .await
            .unwrap_or_else(|e| {
                Err(Refusal::Unavailable(format!(
                    "the verification task ended: {e}"
                )))
            })
    }

    async fn acquire_here(&self, arrived: Instant) -> Result<Verified, Refusal> {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut slot = self.slot.lock().await;
        if slot.live.as_ref().is_some_and(|l| l.h2.is_closed()) {
            tracing::info!(server = %self.target.url, "the verified connection closed; opening and verifying a new one");
            slot.live = None;
        }
        if let Some(live) = slot.live.as_mut() {
            if !challenge_due(live.last.when, arrived, Instant::now(), self.rechallenge) {
                return Ok(live.verified());
            }
            let started = Instant::now();
            match self.challenge(&mut live.session).await {
                Ok(report) => {
                    live.last = Passed::now(&report, started);
                    tracing::info!(server = %self.target.url, connection = live.id, "re-challenge passed: {}", live.last.summary);
                    return Ok(live.verified());
                }
                Err(ChallengeFailed {
                    refusal,
                    key_changed,
                }) => {
                    // Retire the connection and judge a new one, which alone decides whether
                    // the request is forwarded. Often the connection is merely stale: the
                    // server re-issued its certificate, so challenges commit to a newer key.
                    if key_changed {
                        // Benign: streams in flight finish on the old connection.
                        tracing::info!(server = %self.target.url, connection = live.id, "the server's key changed since this connection opened; verifying a new connection");
                    } else {
                        // The server failed a check: no request queued for this connection
                        // a moment ago may still go out on it.
                        tracing::warn!(server = %self.target.url, connection = live.id, "re-challenge failed, closing the connection: {refusal}");
                        live.session.abort();
                    }
                    slot.live = None;
                }
            }
        }
        if self.attempts.load(Ordering::Acquire) != seen
            && let Some(failure) = &slot.last_failure
        {
            return Err(failure.clone());
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match self.establish().await {
            Ok(live) => {
                let verified = live.verified();
                slot.live = Some(live);
                slot.last_failure = None;
                Ok(verified)
            }
            Err(refusal) => {
                tracing::warn!(server = %self.target.url, "verification failed, nothing will be forwarded: {refusal}");
                slot.last_failure = Some(refusal.clone());
                Err(refusal)
            }
        }
    }

    /// A new connection: RA-TLS handshake (the certificate appraised), then a fresh challenge
    /// on that connection before it may carry anything.
    async fn establish(&self) -> Result<Live, Refusal> {
        let mut session =
            Session::open(&self.client, &self.target, Alpn::Http2, Timeouts::default())
                .await
                .map_err(|e| Refusal::from_client(&e))?;
        let h2 = session
            .sender
            .http2()
            .ok_or_else(|| Refusal::Unavailable("the connection is not HTTP/2".into()))?;
        let started = Instant::now();
        let report = self.challenge(&mut session).await.map_err(|f| f.refusal)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            server = %self.target.url,
            connection = id,
            spki_sha256 = %tdx_core::encoding::hex(&session.spki_sha256),
            "verified (certificate and fresh challenge): {}",
            report.summary()
        );
        Ok(Live {
            id,
            session,
            h2,
            last: Passed::now(&report, started),
        })
    }

    async fn challenge(&self, session: &mut Session) -> Result<Report, ChallengeFailed> {
        let failed = |refusal| ChallengeFailed {
            refusal,
            key_changed: false,
        };
        match tokio::time::timeout(
            CHALLENGE_TIMEOUT,
            challenge::fresh_with_evidence(&self.client, session),
        )
        .await
        {
            Err(_) => Err(failed(Refusal::Unavailable(format!(
                "no answer to the fresh challenge within {} s",
                CHALLENGE_TIMEOUT.as_secs()
            )))),
            Ok(Err(e)) => Err(failed(Refusal::from_client(&e))),
            Ok(Ok(fresh)) if fresh.report.accepted() => Ok(fresh.report),
            Ok(Ok(fresh)) => Err(ChallengeFailed {
                refusal: Refusal::from_report(&fresh.report),
                key_changed: self
                    .answered_for_another_key(session.peer_cert.clone(), fresh)
                    .await,
            }),
        }
    }

    /// [`challenge::answered_for_another_key`] for a failed challenge on the connection whose
    /// certificate is `peer_cert`, with the GPU roots and policy the challenge was appraised
    /// with. Under a GPU policy it appraises the answer's GPUs again (CPU work, as the
    /// challenge's own appraisal), so it runs on the blocking pool too; should that task not
    /// finish, the failure is taken as the server's, never as a rotation.
    async fn answered_for_another_key(&self, peer_cert: Vec<u8>, fresh: challenge::Fresh) -> bool {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            let gpus = client.gpus();
            challenge::answered_for_another_key(
                &fresh.report,
                &fresh.challenge,
                &fresh.nonce,
                &challenge::ChallengeGpus {
                    verifier: &gpus.verifier,
                    roots: &gpus.roots,
                    policy: &client.policy().gpu,
                    peer_cert: &peer_cert,
                    evidence: &fresh.evidence,
                    now: tdx_core::verify::time::now_unix(),
                },
            )
        })
        .await
        .unwrap_or(false)
    }

    /// Forget connection `id` (a request found it closed), unless already replaced.
    async fn retire(&self, id: u64) {
        let mut slot = self.slot.lock().await;
        if slot.live.as_ref().is_some_and(|l| l.id == id) {
            slot.live = None;
        }
    }

    async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Response<ClientBody>
    where
        B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if req.uri().path() == HEALTHZ {
            return self.healthz(req.method()).await;
        }
        self.forward(req).await
    }

    async fn healthz(self: &Arc<Self>, method: &Method) -> Response<ClientBody> {
        if method != Method::GET && method != Method::HEAD {
            return error_response(&OpenAiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                format!("{HEALTHZ} answers GET only"),
            ));
        }
        // The same path a request takes: healthy means a request sent now would be forwarded.
        let (status, body) = match self.acquire().await {
            Ok(v) => (
                StatusCode::OK,
                serde_json::json!({
                    "verified": true,
                    "server": self.target.url,
                    "last_challenge": tdx_core::verify::time::format_unix(v.last_challenge_unix),
                    "report_summary": v.summary,
                    "spki_sha256": v.spki_sha256,
                }),
            ),
            Err(r) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "verified": false,
                    "server": self.target.url,
                    "type": r.kind(),
                    "check": match &r { Refusal::Attestation(c) => Some(c.name.clone()), Refusal::Unavailable(_) => None },
                    "reason": r.to_string(),
                }),
            ),
        };
        json_response(status, body.to_string())
    }

    async fn forward<B>(self: &Arc<Self>, req: Request<B>) -> Response<ClientBody>
    where
        B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if req.method() == Method::CONNECT {
            return error_response(&OpenAiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "CONNECT is not forwarded",
            ));
        }
        if let Err(e) = check_content_length(req.headers(), self.max_request_bytes) {
            return error_response(&e);
        }
        let local_version = req.version();
        let what = format!(
            "{} {}",
            req.method(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        let (parts, body) = req.into_parts();
        let fault = BodyFault::none();
        let body = LimitedBody::new(
            body,
            self.max_request_bytes,
            self.local.body_pause,
            Arc::clone(&fault),
        )
        .boxed();
        let upstream_req = match upstream_request(&parts, &self.target.authority, body) {
            Ok(r) => r,
            Err(e) => {
                return error_response(&OpenAiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("{what}: {e}"),
                ));
            }
        };
        match self.send(upstream_req, &fault, Deadlines::default()).await {
            Ok(mut resp) => {
                if let Err(elsewhere) = check_redirect(resp.headers_mut(), &self.target) {
                    tracing::warn!(server = %self.target.url, "refused a redirect to {elsewhere}");
                    return error_response(&OpenAiError::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_unavailable",
                        format!(
                            "{what}: the server redirected to {elsewhere}, which connect \
                             does not verify; the redirect was not passed on"
                        ),
                    ));
                }
                downstream_response(resp, local_version)
            }
            Err(SendError::TooLarge) => error_response(&too_large(self.max_request_bytes)),
            // The local client's fault, not the server's: a 502 would blame the server.
            Err(SendError::LocalBody(detail)) => error_response(&OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!(
                    "{what}: the request body could not be read from this client ({detail}); \
                     the request was reset on the server"
                ),
            )),
            Err(SendError::Refused(r)) => error_response(&r.to_openai(&self.target.url)),
            Err(SendError::Failed(detail)) => error_response(
                &Refusal::Unavailable(format!("{what}: {detail}")).to_openai(&self.target.url),
            ),
            // The proxy sets no deadlines (its clients' own timeouts apply), so these two
            // never come; answered like a failed connection all the same.
            Err(SendError::ConnectTimeout(d) | SendError::AnswerTimeout(d)) => error_response(
                &Refusal::Unavailable(format!("{what}: timed out after {d:?}"))
                    .to_openai(&self.target.url),
            ),
        }
    }

    /// Send `upstream_req` over the verified connection, opening and verifying one first (or
    /// re-challenging) when needed. Two tries: a request the connection never sent (it closed
    /// just now) goes out on a fresh, freshly verified connection. `fault` is set by a body
    /// that went over the size limit or could not be read from the local client.
    async fn send(
        self: &Arc<Self>,
        mut upstream_req: Request<ClientBody>,
        fault: &BodyFaultCell,
        deadlines: Deadlines,
    ) -> Result<Response<hyper::body::Incoming>, SendError> {
        let mut last_error = String::from("no connection");
        for _ in 0..2 {
            let verified = within(deadlines.connect, self.acquire())
                .await
                .map_err(SendError::ConnectTimeout)?
                .map_err(SendError::Refused)?;
            let mut sender = verified.sender;
            let answer = within(deadlines.answer, sender.try_send_request(upstream_req))
                .await
                .map_err(SendError::AnswerTimeout)?;
            match answer {
                Ok(resp) => return Ok(resp),
                Err(mut e) => {
                    match fault.get() {
                        Some(BodyFault::TooLarge) => return Err(SendError::TooLarge),
                        Some(BodyFault::Local(detail)) => {
                            return Err(SendError::LocalBody(detail.clone()));
                        }
                        Some(BodyFault::Paused(limit)) => {
                            return Err(SendError::LocalBody(Paused(*limit).to_string()));
                        }
                        None => {}
                    }
                    last_error = tdx_net::error_chain(e.error());
                    match e.take_message() {
                        Some(unsent) => {
                            self.retire(verified.id).await;
                            upstream_req = unsent;
                        }
                        None => break,
                    }
                }
            }
        }
        Err(SendError::Failed(last_error))
    }
}

/// Why [`Upstream::send`] gave no response.
enum SendError {
    /// Verification refused the server or it could not be reached: nothing was sent.
    Refused(Refusal),
    /// The request body went over the limit.
    TooLarge,
    /// The local client's request body failed or stalled: the request was reset.
    LocalBody(String),
    /// The request was sent (maybe partly) and the connection failed.
    Failed(String),
    /// No verified connection within this limit: nothing was sent.
    ConnectTimeout(Duration),
    /// Sent, and no answer's head within this limit.
    AnswerTimeout(Duration),
}

/// `fut`, or the limit it ran past (dropping `fut`, which cancels it).
async fn within<F: std::future::Future>(
    limit: Option<Duration>,
    fut: F,
) -> Result<F::Output, Duration> {
    match limit {
        None => Ok(fut.await),
        Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| d),
    }
}

fn too_large(max: u64) -> OpenAiError {
    OpenAiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!("the request body exceeds {max} bytes (--max-request-bytes)"),
    )
    .with_code("request_too_large")
}

/// Refuse up front a body whose declared length is over the limit (streamed bodies are
/// counted as they pass, see [`LimitedBody`]).
fn check_content_length(headers: &HeaderMap, max: u64) -> Result<(), OpenAiError> {
    let declared = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .filter_map(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .max();
    match declared {
        Some(n) if n > max => Err(too_large(max)),
        _ => Ok(()),
    }
}

/// The request as the server gets it: same method, path and query, end-to-end headers; the
/// server named in `:authority`.
fn upstream_request(
    parts: &hyper::http::request::Parts,
    authority: &str,
    body: ClientBody,
) -> Result<Request<ClientBody>, hyper::http::Error> {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    // HTTP/2 names the server in :authority (from the URI), not in Host.
    headers.remove(header::HOST);
    // This process already told its client to go on; the server must not wait for that.
    headers.remove(header::EXPECT);
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(crate::session::absolute_uri(authority, pq)?)
        .body(body)?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The answer's redirect, if any, made safe to pass on ([`checked_location`]), or what it
/// pointed to when it may not be. More than one `Location` is refused: clients differ on
/// which they follow (OkHttp the last, most the first), so checking one would let another
/// through.
fn check_redirect(headers: &mut HeaderMap, target: &Target) -> Result<(), String> {
    let mut locations = headers.get_all(header::LOCATION).iter();
    let Some(first) = locations.next() else {
        return Ok(());
    };
    let count = 1 + locations.count();
    if count > 1 {
        return Err(format!("{count} places at once ({count} Location headers)"));
    }
    if let Some(path) = checked_location(first, target)? {
        headers.insert(header::LOCATION, path);
    }
    Ok(())
}

/// Where a redirect from the verified server may send the local client: somewhere on that
/// server, through connect again. A relative reference is passed on; an absolute URL on the
/// verified server is rewritten to its path (followed as given, it would bypass connect and
/// its verification); anything else (another origin, a network-path reference `//host`) is
/// refused, since following it would send the client's next request, prompt included, to a
/// server nobody verified.
fn checked_location(value: &HeaderValue, target: &Target) -> Result<Option<HeaderValue>, String> {
    let text = value
        .to_str()
        .map_err(|_| "a Location that is not text".to_string())?
        .trim_matches(' ');
    // Visible ASCII only: WHATWG URL parsers (browsers, the OpenAI Node SDK) delete tabs and
    // newlines anywhere in a URL before parsing, so `/\t/evil` would be followed as
    // `//evil` and `ht\ttps://evil` as `https://evil`: only without any is what they follow
    // what was checked here. (A redirect's target has no use for whitespace.)
    if !text.bytes().all(|b| matches!(b, 0x21..=0x7e)) {
        return Err(format!("{text:?}"));
    }
    // WHATWG also reads `\` as `/` in http(s) URLs: `/\host` is `//host`.
    if text.starts_with("//") || text.starts_with("/\\") || text.starts_with('\\') {
        return Err(format!("{text:?}"));
    }
    // A scheme is letters, digits, `+`, `-`, `.` up to the first `:`, before any `/?#`.
    let scheme_end = text.find([':', '/', '?', '#']);
    let has_scheme = scheme_end.is_some_and(|i| {
        i > 0
            && text[i..].starts_with(':')
            && text[..i]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if !has_scheme {
        return Ok(None);
    }
    let uri: Uri = text.parse().map_err(|_| format!("{text:?}"))?;
    let same_origin = uri.scheme_str() == Some("https")
        && uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| h.eq_ignore_ascii_case(&target.host))
        && uri.port_u16().unwrap_or(443) == target.port;
    if !same_origin {
        return Err(format!("{text:?}"));
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    HeaderValue::from_str(path)
        .map(Some)
        .map_err(|_| format!("{text:?}"))
}

/// The server's answer as the local client gets it: streamed frame by frame as it arrives.
fn downstream_response(
    resp: Response<hyper::body::Incoming>,
    version: Version,
) -> Response<ClientBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The local connection's version, not the upstream HTTP/2's.
    parts.version = version;
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

fn json_response(status: StatusCode, body: String) -> Response<ClientBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &OpenAiError) -> Response<ClientBody> {
    json_response(e.status, e.to_json())
}

/// Why a local client's request body was cut off, as [`LimitedBody`] saw it (the first
/// reason wins).
#[derive(Debug)]
enum BodyFault {
    /// More than the limit went through.
    TooLarge,
    /// Reading it from the local client failed (a reset, a malformed chunk).
    Local(String),
    /// The client sent nothing of it for this long while the server waited.
    Paused(Duration),
}

type BodyFaultCell = std::sync::OnceLock<BodyFault>;

impl BodyFault {
    fn none() -> Arc<BodyFaultCell> {
        Arc::new(std::sync::OnceLock::new())
    }
}

/// The request body, passed on frame by frame (no buffering) and cut off with an error once
/// more than `max` bytes went through, once reading it fails, or once the client pauses
/// longer than `pause` while the server waits for it; `fault` tells the caller why.
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    max: u64,
    pause: Duration,
    /// Runs only while the last poll found nothing (time the server is not pulling, under
    /// flow control or before the connection is verified, is not the client's pause).
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    fault: Arc<BodyFaultCell>,
}

impl<B> LimitedBody<B> {
    fn new(inner: B, max: u64, pause: Duration, fault: Arc<BodyFaultCell>) -> Self {
        LimitedBody {
            inner,
            remaining: max,
            max,
            pause,
            waiting: None,
            fault,
        }
    }

    fn cut(
        &mut self,
        fault: BodyFault,
        error: BoxError,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let _ = self.fault.set(fault);
        self.waiting = None;
        Poll::Ready(Some(Err(error)))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body exceeds {0} bytes")]
struct TooLarge(u64);

#[derive(Debug, thiserror::Error)]
#[error("no byte of the request body came for {} s", .0.as_secs())]
struct Paused(Duration);

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Poll::Ready(frame) = polled else {
            let pause = this.pause;
            let timer = this
                .waiting
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if timer.as_mut().poll(cx).is_ready() {
                return this.cut(BodyFault::Paused(pause), Box::new(Paused(pause)));
            }
            return Poll::Pending;
        };
        this.waiting = None;
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    if n > this.remaining {
                        let max = this.max;
                        return this.cut(BodyFault::TooLarge, Box::new(TooLarge(max)));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                this.cut(BodyFault::Local(tdx_net::error_chain(&*e)), e)
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve the local listener until `shutdown`, then let in-flight requests finish for a
/// grace period.
async fn serve(
    listener: TcpListener,
    upstream: Arc<Upstream>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_LOCAL_CONNECTIONS));
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let upstream = Arc::clone(&upstream);
        let drain = drain_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            local_connection(tcp, upstream, drain).await;
        });
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let all = u32::try_from(MAX_LOCAL_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await;
}

/// What a local request's service call returns (boxed: `Timed` needs an `Unpin` future).
type LocalAnswer =
    Pin<Box<dyn std::future::Future<Output = Result<Response<ClientBody>, Infallible>> + Send>>;

async fn local_connection(
    tcp: tokio::net::TcpStream,
    upstream: Arc<Upstream>,
    mut drain: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let idle = upstream.local.idle;
    // In flight from a request's head until its response body is done or dropped (`Timed`).
    let activity = Activity::new();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let upstream = Arc::clone(&upstream);
        let answer: LocalAnswer = Box::pin(async move { Ok(upstream.handle(req).await) });
        answer
    });
    let service = Timed::new(service, Arc::clone(&activity));
    // Only requests keep a local connection: bytes it writes with nothing in flight (HTTP/2
    // settings and ping answers a client can ask for at will) do not.
    let mut timer = HeadTimer::new(Arc::clone(&activity), idle).ignoring_idle_writes();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(LOCAL_HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    enum Event<T> {
        Ended(T),
        Drain,
        Idle,
    }
    let event = tokio::select! {
        res = conn.as_mut() => Event::Ended(res),
        _ = drain.changed() => Event::Drain,
        () = std::future::poll_fn(|cx| timer.poll_expired(cx)) => Event::Idle,
    };
    let ended = match event {
        Event::Ended(res) => res,
        Event::Drain => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        Event::Idle => {
            // Nothing in flight for `idle` (which covers hyper-util's version sniff, half a
            // preface or head, idle keep-alive): a GOAWAY lets an HTTP/2 client know nothing
            // was lost; a client that does not read it does not hold the slot either. A
            // request that began just now still finishes, however long it runs; with nothing
            // in flight the connection gets the shutdown grace, not another idle period.
            conn.as_mut().graceful_shutdown();
            let grace = HeadTimer::new(activity, SHUTDOWN_GRACE).ignoring_idle_writes();
            match finish(conn.as_mut(), Some(grace)).await {
                Some(res) => res,
                None => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "local connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdx_core::verify::{Policy, Verifier};

    #[test]
    fn forwarding_needs_the_image_pinned_or_the_flag_and_never_both()
    -> Result<(), Box<dyn std::error::Error>> {
        let h = "ab".repeat(48);
        let image = format!(
            "[measurements]\nmrtd = [\"{h}\"]\nrtmr0 = [\"{h}\"]\nrtmr1 = [\"{h}\"]\nrtmr2 = [\"{h}\"]\n"
        );
        let pinned = Policy::from_toml(&image, "p.toml")?;
        assert_eq!(
            Pinning::of(&pinned, "p.toml", false, "--f")?,
            Pinning::Pinned
        );
        let needless = Pinning::of(&pinned, "p.toml", true, "--f")
            .err()
            .ok_or("accepted")?;
        assert!(
            matches!(needless, PinningError::NeedlessFlag { .. }),
            "{needless}"
        );
        // What any image can reproduce does not pin it: RTMR3, its events, the owner
        // registers; nor does the firmware alone.
        let model_event = "[[rtmr3_events.pin]]\ntype = \"model\"\n";
        for (text, unpinned) in [
            (
                "[gpu]\ncount = 1".to_string(),
                "MRTD, RTMR0, RTMR1, RTMR2 have",
            ),
            (model_event.to_string(), "MRTD, RTMR0, RTMR1, RTMR2 have"),
            (
                format!("[measurements]\nrtmr3 = [\"{h}\"]\nmrowner = [\"{h}\"]"),
                "MRTD, RTMR0, RTMR1, RTMR2 have",
            ),
            (
                format!("[measurements]\nmrtd = [\"{h}\"]\nrtmr0 = [\"{h}\"]\nrtmr1 = [\"{h}\"]"),
                "RTMR2 has",
            ),
        ] {
            let policy = Policy::from_toml(&text, "u.toml")?;
            assert_eq!(
                Pinning::of(&policy, "u.toml", true, "--f")?,
                Pinning::InsecureUnpinned
            );
            let e = Pinning::of(&policy, "u.toml", false, "--f")
                .err()
                .ok_or("accepted")?;
            let msg = e.to_string();
            assert!(
                msg.starts_with("u.toml does not pin the TD image: ")
                    && msg.contains(unpinned)
                    && msg.contains("add --f"),
                "{text}: {msg}"
            );
        }
        Ok(())
    }

    #[test]
    fn rechallenge_is_due_once_the_last_challenge_is_old_enough() {
        let s = Duration::from_secs;
        let t0 = Instant::now() + s(10);
        let every = s(300);
        // Sent at t0, passed a second later; requests arriving after it was sent.
        let last = Challenged {
            started: t0,
            passed: t0 + s(1),
        };
        let after = t0 + s(2);
        assert!(!challenge_due(last, after, after, every));
        assert!(!challenge_due(last, after, t0 + s(300), every));
        assert!(challenge_due(last, after, t0 + s(301), every));
        assert!(challenge_due(last, after, t0 + s(3600), every));
        // 0 means before every request...
        assert!(challenge_due(last, after, after, Duration::ZERO));
        assert!(challenge_due(last, t0 + s(1), t0 + s(1), Duration::ZERO));
        // ...made after it arrived: one that waited while the challenge was sent is answered
        // by it, however old it is by then.
        assert!(!challenge_due(last, t0, after, Duration::ZERO));
        assert!(!challenge_due(last, t0 - s(1), t0 + s(3600), every));
        // A clock that seems to go backwards never skips a due challenge forever.
        assert!(!challenge_due(last, after, t0, every));
    }

    fn parts(req: Request<()>) -> hyper::http::request::Parts {
        req.into_parts().0
    }

    fn empty() -> ClientBody {
        Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
    }

    #[test]
    fn upstream_requests_keep_end_to_end_headers_and_name_the_server() {
        let p = parts(
            Request::builder()
                .method("POST")
                .uri("/v1/chat/completions?stream=true")
                .header("host", "127.0.0.1:9000")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("transfer-encoding", "chunked")
                .header("te", "trailers")
                .header("upgrade", "h2c")
                .header("proxy-authorization", "Basic eA==")
                .header("expect", "100-continue")
                .header("authorization", "Bearer sk-test")
                .header("content-type", "application/json")
                .header("accept", "text/event-stream")
                .header("openai-organization", "org")
                .body(())
                .unwrap(),
        );
        let r = upstream_request(&p, "10.0.0.5:8443", empty()).unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(
            r.uri().to_string(),
            "https://10.0.0.5:8443/v1/chat/completions?stream=true"
        );
        let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "accept",
                "authorization",
                "content-type",
                "openai-organization"
            ]
        );
        assert_eq!(r.headers()["authorization"], "Bearer sk-test");
    }

    #[test]
    fn absolute_form_requests_are_sent_to_the_verified_server_only() {
        // A client that speaks to us as to a forward proxy still reaches only the server.
        let p = parts(
            Request::builder()
                .uri("http://elsewhere.example/v1/models")
                .body(())
                .unwrap(),
        );
        let r = upstream_request(&p, "h:8443", empty()).unwrap();
        assert_eq!(r.uri().to_string(), "https://h:8443/v1/models");
    }

    #[test]
    fn declared_lengths_over_the_limit_are_refused_up_front() {
        let mut h = HeaderMap::new();
        assert!(check_content_length(&h, 10).is_ok());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(check_content_length(&h, 10).is_ok());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        let e = check_content_length(&h, 10).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.code.as_deref(), Some("request_too_large"));
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--max-request-bytes")
        );
        // A duplicate header cannot hide a large value behind a small one.
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        assert!(check_content_length(&h, 10).is_err());
    }

    /// A body fed through a channel, chunk by chunk, as a slow client or server sends it.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn streamed_bodies_are_counted_and_cut_at_the_limit() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let fault = BodyFault::none();
        let mut body = LimitedBody::new(
            ChannelBody(rx),
            10,
            Duration::from_secs(30),
            Arc::clone(&fault),
        );
        tx.send(Bytes::from_static(b"123456")).await.unwrap();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "123456");
        tx.send(Bytes::from_static(b"7890")).await.unwrap();
        assert!(
            body.frame().await.unwrap().is_ok(),
            "exactly the limit passes"
        );
        assert!(fault.get().is_none());
        tx.send(Bytes::from_static(b"x")).await.unwrap();
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("10 bytes"), "{e}");
        assert!(matches!(fault.get(), Some(BodyFault::TooLarge)));
    }

    /// A body that fails as a local client's can: a reset, a malformed chunk.
    struct FailingBody;

    impl Body for FailingBody {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(Err(std::io::Error::other("invalid chunk size line"))))
        }
    }

    // Paused time: the pause limit and the gaps between bytes are deterministic.
    #[tokio::test(start_paused = true)]
    async fn a_local_body_that_fails_or_pauses_is_cut_and_says_why() {
        let fault = BodyFault::none();
        let mut body =
            LimitedBody::new(FailingBody, 10, Duration::from_secs(30), Arc::clone(&fault));
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("invalid chunk"), "{e}");
        assert!(
            matches!(fault.get(), Some(BodyFault::Local(d)) if d.contains("invalid chunk")),
            "{fault:?}"
        );

        // Bytes keep it going; a pause past the limit while the server waits cuts it.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let fault = BodyFault::none();
        let pause = Duration::from_millis(200);
        let mut body = LimitedBody::new(ChannelBody(rx), 100, pause, Arc::clone(&fault));
        for _ in 0..3 {
            let sender = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                sender.send(Bytes::from_static(b"a")).await.unwrap();
            });
            assert!(body.frame().await.unwrap().is_ok());
        }
        assert!(fault.get().is_none());
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("no byte"), "{e}");
        assert!(matches!(fault.get(), Some(BodyFault::Paused(p)) if *p == pause));
        drop(tx);
    }

    fn failed(name: &str) -> Refusal {
        Refusal::Attestation(FailedCheck {
            name: name.into(),
            expected: "aa".into(),
            found: "bb".into(),
        })
    }

    #[test]
    fn refusals_map_to_openai_errors_naming_server_and_check() {
        let e = failed("RTMR3 event \"model\"").to_openai("https://h:8443");
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], ATTESTATION_FAILED);
        assert_eq!(v["error"]["code"], "RTMR3 event \"model\"");
        let msg = v["error"]["message"].as_str().unwrap();
        for part in ["https://h:8443", "RTMR3 event", "expected aa", "found bb"] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }

        let e =
            Refusal::Unavailable("h:8443: Connection refused".into()).to_openai("https://h:8443");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert_eq!(v["error"]["type"], UPSTREAM_UNAVAILABLE);
        assert!(v["error"]["message"].as_str().unwrap().contains("refused"));

        // Client errors land on the right side.
        let r = Refusal::from_client(&ClientError::Connect {
            addr: "h:1".into(),
            detail: "refused".into(),
        });
        assert!(matches!(r, Refusal::Unavailable(_)), "{r:?}");
        let r = Refusal::from_client(&ClientError::Refused {
            addr: "h:1".into(),
            detail: "no evidence".into(),
        });
        assert!(
            matches!(&r, Refusal::Attestation(c) if c.name == crate::CHECK_CERTIFICATE),
            "{r:?}"
        );
    }

    #[test]
    fn redirects_stay_on_the_verified_server_or_are_refused() {
        let target = Target::parse("https://Agent.example:8443").unwrap();
        let check = |l: &str| checked_location(&HeaderValue::from_str(l).unwrap(), &target);
        for kept in ["/v1/models", "models", "?page=2", "#top", "v1/a:b"] {
            assert_eq!(check(kept), Ok(None), "{kept}");
        }
        for (same, path) in [
            ("https://agent.example:8443/v1/models?x=1", "/v1/models?x=1"),
            ("HTTPS://AGENT.EXAMPLE:8443", "/"),
        ] {
            assert_eq!(
                check(same),
                Ok(Some(HeaderValue::from_static(path))),
                "{same}"
            );
        }
        for elsewhere in [
            "https://evil.example/v1/models",
            "https://agent.example/v1/models",
            "http://agent.example:8443/v1/models",
            "https://agent.example:8443.evil.example/",
            "//evil.example/v1/models",
            "/\\evil.example/v1/models",
            "javascript:alert(1)",
            "ftp://agent.example:8443/",
            // WHATWG parsers delete tabs anywhere: `//evil.example/x`, `https://evil...`.
            "/\t/evil.example/x",
            "\t//evil.example/x",
            "ht\ttps://evil.example/x",
            "https:\t//evil.example/x",
            "/v1/models\tx",
        ] {
            assert!(check(elsewhere).is_err(), "{elsewhere:?}");
        }
        // Surrounding spaces are no part of the reference.
        assert_eq!(check(" /v1/models "), Ok(None));
    }

    #[test]
    fn an_answer_redirecting_to_more_than_one_location_is_refused() {
        let target = Target::parse("https://agent.example:8443").unwrap();
        let mut two = HeaderMap::new();
        two.append(header::LOCATION, HeaderValue::from_static("/v1/models"));
        two.append(
            header::LOCATION,
            HeaderValue::from_static("https://evil.example/x"),
        );
        let e = check_redirect(&mut two, &target).unwrap_err();
        assert!(e.contains("2 Location"), "{e}");

        let mut one = HeaderMap::new();
        one.insert(
            header::LOCATION,
            HeaderValue::from_static("https://agent.example:8443/v1/models"),
        );
        assert_eq!(check_redirect(&mut one, &target), Ok(()));
        assert_eq!(one.get_all(header::LOCATION).iter().count(), 1);
        assert_eq!(one[header::LOCATION], "/v1/models");
        let mut none = HeaderMap::new();
        assert_eq!(check_redirect(&mut none, &target), Ok(()));
        assert!(none.is_empty());
    }

    fn upstream_at(addr: &str, max: u64) -> Arc<Upstream> {
        let client = Client::new(Verifier::production(), Policy::default()).unwrap();
        Arc::new(Upstream::new(
            client,
            Target::parse(&format!("https://{addr}")).unwrap(),
            Duration::from_secs(300),
            max,
        ))
    }

    async fn body_json(r: Response<ClientBody>) -> serde_json::Value {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    /// A port nothing listens on, held for the test: bound but never listening, so a
    /// connection is refused and no parallel test's listener can take the port meanwhile.
    fn dead_addr() -> (tokio::net::TcpSocket, String) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        (socket, addr)
    }

    #[tokio::test]
    async fn an_unreachable_server_gets_502_and_healthz_503() {
        let (_held, dead) = dead_addr();
        let up = upstream_at(&dead, 100);
        let r = up
            .handle(
                Request::get("/v1/models")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v = body_json(r).await;
        assert_eq!(v["error"]["type"], UPSTREAM_UNAVAILABLE, "{v}");

        let r = up
            .handle(Request::get(HEALTHZ).body(Full::new(Bytes::new())).unwrap())
            .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let v = body_json(r).await;
        assert_eq!(v["verified"], false, "{v}");
        assert_eq!(v["type"], UPSTREAM_UNAVAILABLE, "{v}");
        assert!(v["reason"].as_str().unwrap().contains("127.0.0.1"), "{v}");

        let r = up
            .handle(
                Request::post(HEALTHZ)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn local_connections_with_nothing_in_flight_are_closed_but_requests_in_flight_are_not() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A server that accepts, says nothing and hangs up: a request through the proxy is
        // in flight all that time, past the idle limit below and past the grace a graceful
        // shutdown gives (so only counting the request in flight keeps its connection).
        let tarpit = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tarpit.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = tarpit.accept().await {
                tokio::spawn(async move {
                    tokio::time::sleep(SHUTDOWN_GRACE + Duration::from_secs(1)).await;
                    drop(s);
                });
            }
        });
        let client = Client::new(Verifier::production(), Policy::default()).unwrap();
        let mut up = Upstream::new(
            client,
            Target::parse(&format!("https://{addr}")).unwrap(),
            Duration::from_secs(300),
            100,
        );
        up.local.idle = Duration::from_millis(200);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(up), std::future::pending()));

        let open = || tokio::net::TcpStream::connect(local);
        let silent = open().await.unwrap();
        let mut preface = open().await.unwrap();
        preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        let mut half_head = open().await.unwrap();
        half_head
            .write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut asking = open().await.unwrap();
        asking
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        for (name, mut s) in [
            ("a silent socket", silent),
            ("half an HTTP/2 preface", preface),
            ("half a request head", half_head),
        ] {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{name} still held its connection after 30 s"));
            assert!(matches!(read, Ok(0) | Err(_)), "{name}: {read:?}");
        }
        // The request outlived the idle limit and was answered; then its connection, idle,
        // was closed too.
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(30), asking.read_to_string(&mut answer))
            .await
            .expect("the answered connection was closed once idle")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"verified\":false"), "{answer}");
    }

    #[tokio::test]
    async fn oversized_requests_get_413_before_any_connection() {
        // The server address is unreachable: a 413 proves no connection was tried.
        let (_held, dead) = dead_addr();
        let up = upstream_at(&dead, 4);
        let r = up
            .handle(
                Request::post("/v1/completions")
                    .header(header::CONTENT_LENGTH, "5")
                    .body(Full::new(Bytes::from_static(b"12345")))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_json(r).await["error"]["code"], "request_too_large");
        assert_eq!(up.attempts.load(Ordering::Acquire), 0);
    }

    /// A plain HTTP/2 server on an in-memory pipe, and a client connection to it.
    async fn h2_pair<S, F>(handler: S) -> http2::SendRequest<ClientBody>
    where
        S: Fn(Request<hyper::body::Incoming>) -> F + Send + Sync + Clone + 'static,
        F: std::future::Future<Output = Response<ChannelBody>> + Send + 'static,
    {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = handler.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server_io), svc)
                .await;
        });
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    #[tokio::test]
    async fn after_a_goaway_the_connection_reads_closed_and_unsent_requests_come_back() {
        // What `acquire` and the retry in `forward` rely on: a server's GOAWAY (sent when it
        // re-issues its certificate) shows as a closed sender, and a request the closed
        // connection never sent is handed back to be sent on a new one.
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (goaway_tx, goaway_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server_io), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = goaway_rx => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, ClientBody>(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let p = parts(Request::get("/readyz").body(()).unwrap());
        let r = sender
            .send_request(upstream_request(&p, "h:1", empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);

        goaway_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the GOAWAY closed the connection");
        let mut e = sender
            .try_send_request(upstream_request(&p, "h:1", empty()).unwrap())
            .await
            .expect_err("a closed connection sends nothing");
        assert!(
            e.take_message().is_some(),
            "the unsent request is handed back"
        );
    }

    #[tokio::test]
    async fn responses_stream_as_they_arrive_and_a_dropped_client_resets_only_its_stream() {
        sse_scenario(false).await;
    }

    #[tokio::test]
    async fn streams_in_flight_outlive_a_retired_connection() {
        sse_scenario(true).await;
    }

    /// The server sends one SSE event, then waits until the test has seen it before the
    /// next: a proxy that buffered would deadlock here. With `retire`, connect's handles on
    /// the connection are dropped (as when it retires a connection) while the stream runs.
    async fn sse_scenario(retire: bool) {
        let (seen_tx, seen_rx) = tokio::sync::mpsc::channel::<()>(1);
        let seen_rx = Arc::new(tokio::sync::Mutex::new(Some(seen_rx)));
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
        let cancel_tx = Arc::new(std::sync::Mutex::new(Some(cancel_tx)));
        let mut sender = h2_pair(move |_req| {
            let seen_rx = Arc::clone(&seen_rx);
            let cancel_tx = Arc::clone(&cancel_tx);
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    let mut seen = seen_rx.lock().await.take().unwrap();
                    let _ = tx.send(Bytes::from_static(b"data: one\n\n")).await;
                    seen.recv().await;
                    let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
                    // Keep the stream open until the client goes away.
                    tx.closed().await;
                    if let Some(c) = cancel_tx.lock().unwrap().take() {
                        let _ = c.send(());
                    }
                });
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("connection", "keep-alive")
                    .body(ChannelBody(rx))
                    .unwrap()
            }
        })
        .await;

        let p = parts(
            Request::post("/v1/chat/completions")
                .header("host", "127.0.0.1:9000")
                .body(())
                .unwrap(),
        );
        let req = upstream_request(&p, "h:8443", empty()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let kept = if retire {
            drop(sender);
            None
        } else {
            Some(sender)
        };
        let resp = downstream_response(resp, Version::HTTP_11);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert!(!resp.headers().contains_key("connection"));
        assert_eq!(resp.version(), Version::HTTP_11);
        let mut body = resp.into_body();
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the first event arrived before the stream ended")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: one\n\n");
        seen_tx.send(()).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(second.into_data().unwrap(), "data: two\n\n");

        drop(body);
        tokio::time::timeout(Duration::from_secs(5), cancel_rx)
            .await
            .expect("dropping the client's body reset the upstream stream")
            .unwrap();
        if let Some(sender) = kept {
            // A stream reset, not a closed connection: other requests go on using it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!sender.is_closed());
        }
    }
}
