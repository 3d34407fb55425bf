//! The front door end to end: `serve` on the simulated TD forwarding `/v1/` to a scripted
//! model server. SSE is streamed event by event, a client that leaves cancels the upstream
//! request, a slow reader of 1 GiB keeps the agent's memory bounded, a model server that dies
//! mid-stream ends the stream with an error and turns readiness, and the agent's refusals
//! (not ready, API key, size, timeout) come back in OpenAI's error shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use support::upstream::{ChanBody, Upstream, agent_fronting, http1, read_until};
use support::{Daemon, H2_GOAWAY, HEAD_TIMEOUT, Https, MEASURED, SimTd, assert_closed_for};

/// Poll /readyz until it answers `want`, or panic after `within`.
async fn wait_readyz(c: &Https, want: u16, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let r = c.get("/readyz").await;
        if r.status == want {
            return r.json();
        }
        if Instant::now() > deadline {
            panic!("/readyz stayed {} ({}), wanted {want}", r.status, r.text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn agent_for(sim: &SimTd, up: &Upstream, extra: &[&str]) -> (Daemon, Https) {
    agent_for_url(sim, &up.url(), extra).await
}

async fn agent_for_url(sim: &SimTd, url: &str, extra: &[&str]) -> (Daemon, Https) {
    let mut args = vec!["--upstream", url, "--insecure-unmeasured-model"];
    args.extend_from_slice(extra);
    let d = Daemon::sim(sim, &args);
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    wait_readyz(&c, 200, Duration::from_secs(30)).await;
    (d, c)
}

/// [`agent_fronting`] for a model server at `url`, the agent's listener logging why it closes
/// each connection (`assert_closed_for`).
fn agent_fronting_url(sim: &SimTd, url: &str, upstream: &str) -> (Daemon, tempfile::TempDir) {
    support::upstream::agent_fronting_url(sim, url, upstream, &support::LISTENER_DEBUG_ENV)
}

/// An HTTP/1.1 connection to the agent, like `support::upstream::http1`, and the client's
/// address the agent's log names it by.
async fn http1_from<B>(
    d: &Daemon,
    sim: &SimTd,
) -> (hyper::client::conn::http1::SendRequest<B>, SocketAddr)
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = Arc::new(support::ratls_client_config(sim.root_der(), &[b"http/1.1"]));
    let tls = support::ratls_connect(&d.addr, config).await.unwrap();
    let peer = tls.get_ref().0.local_addr().unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (sender, peer)
}

/// An HTTP/2 connection to the agent, like `support::upstream::http2`, and the client's
/// address.
async fn http2_from<B>(
    d: &Daemon,
    sim: &SimTd,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
    SocketAddr,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = Arc::new(support::ratls_client_config(sim.root_der(), &[b"h2"]));
    let tls = support::ratls_connect(&d.addr, config).await.unwrap();
    let peer = tls.get_ref().0.local_addr().unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    (sender, tokio::spawn(conn), peer)
}

/// One request a [`Recorder`] received.
#[derive(Clone, Debug)]
struct Seen {
    /// The connection it came on, numbered from 0 as they were accepted.
    conn: u64,
    path: String,
    /// The test's flag as it was when the request's head arrived.
    flag: bool,
    content_length: Option<String>,
    body_len: usize,
}

/// A model server of this file's own, for what the shared scripted one does not record: each
/// `/v1/` request with the connection it came on and the test's `flag` as its head arrived,
/// and the connections the agent closed. `/health` answers 200, every other path 200 `{}`.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    closed: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(flag: Arc<AtomicBool>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, closed) = (
            Arc::<Mutex<Vec<Seen>>>::default(),
            Arc::<Mutex<Vec<u64>>>::default(),
        );
        let (s, c) = (Arc::clone(&seen), Arc::clone(&closed));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            for conn in 0.. {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (s, c, flag) = (Arc::clone(&s), Arc::clone(&c), Arc::clone(&flag));
                conns.spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (s, flag) = (Arc::clone(&s), Arc::clone(&flag));
                            async move {
                                let flag = flag.load(Ordering::SeqCst);
                                let path = req.uri().path().to_string();
                                let content_length = req
                                    .headers()
                                    .get("content-length")
                                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                                if path != "/health" {
                                    s.lock().unwrap().push(Seen {
                                        conn,
                                        path,
                                        flag,
                                        content_length,
                                        body_len: body.map(|b| b.len()).unwrap_or(0),
                                    });
                                }
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from_static(b"{}")))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                    c.lock().unwrap().push(conn);
                });
            }
        });
        Recorder {
            url,
            seen,
            closed,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn closed(&self) -> Vec<u64> {
        self.closed.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A whole response body as JSON.
async fn json_body(r: hyper::Response<hyper::body::Incoming>) -> serde_json::Value {
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_arrives_event_by_event_and_requests_are_cleaned() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (_d, c) = agent_for(&sim, &up, &[]).await;

    // The upstream holds event 2 back until we have event 1: a buffering proxy would
    // deliver nothing and this would time out.
    let resp = c
        .open(
            "POST",
            "/v1/sse",
            &[("content-type", "application/json")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = read_until(&mut body, "\"n\":1", Duration::from_secs(10)).await;
    assert!(
        first.as_deref().is_some_and(|s| !s.contains("\"n\":2")),
        "{first:?}"
    );
    up.script.release_event2.notify_one();
    let rest = read_until(&mut body, "[DONE]", Duration::from_secs(10)).await;
    assert!(rest.is_some_and(|s| s.contains("\"n\":2")));

    // HTTP/1.1 client: hop-by-hop headers (and those Connection names) are not passed on.
    let mut h1 = http1(&_d.addr, sim.root_der()).await;
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions?x=1")
        .header("host", "localhost")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("authorization", "Bearer passthrough")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::from_static(b"{\"model\":\"tiny\"}")))
        .unwrap();
    let resp = h1.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo = json_body(resp).await;
    let headers = &echo["headers"];
    for gone in ["x-hop", "keep-alive", "te"] {
        assert!(headers.get(gone).is_none(), "{gone} forwarded: {echo}");
    }
    assert_eq!(headers["x-end-to-end"], "kept");
    // Without configured API keys the Authorization header is the model server's business.
    assert_eq!(headers["authorization"], "Bearer passthrough");
    assert_eq!(echo["path"], "/v1/chat/completions");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body_len"], 16);

    // An HTTP/2 request reaches the HTTP/1.1-only model server as HTTP/1.1.
    let echo = c.get("/v1/models").await.json();
    assert_eq!(echo["version"], "HTTP/1.1", "{echo}");

    // The model server's own errors pass through untouched.
    let r = c.get("/v1/status/500").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["message"], "upstream says no");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_the_upstream_request() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (_d, c) = agent_for(&sim, &up, &[]).await;
    let resp = c.open("GET", "/v1/drip", &[], Bytes::new()).await.unwrap();
    let mut body = resp.into_body();
    assert!(
        read_until(&mut body, "tick", Duration::from_secs(10))
            .await
            .is_some()
    );
    assert!(!up.script.stream_closed.load(Ordering::SeqCst));
    // Dropping the body resets the HTTP/2 stream: the agent must drop the upstream request,
    // which closes its connection, which is how vLLM learns to stop generating.
    drop(body);
    assert!(
        up.wait_stream_closed(Duration::from_secs(10)).await,
        "the model server never saw the client leave"
    );
    // The agent is fine afterwards.
    assert_eq!(c.get("/v1/models").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_1_gib_keeps_the_agent_small() {
    const TOTAL: u64 = 1 << 30;
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (d, c) = agent_for(&sim, &up, &[]).await;
    let before = support::proc_kib(d.pid(), "VmRSS");
    let resp = c
        .open("GET", &format!("/v1/bytes/{TOTAL}"), &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    let mut max_rss = before;
    let mut next_pause = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| {
            panic!("the stream broke after {got} bytes: {e:?}\n{}", d.stderr())
        });
        got += frame.data_ref().map(|d| d.len() as u64).unwrap_or(0);
        if got >= next_pause {
            // A slow reader: stop for a while. Without backpressure the agent would read
            // ahead from the fast upstream into memory while we sleep.
            next_pause += 128 << 20;
            let upstream_before = up.script.streamed_bytes.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(700)).await;
            let upstream_after = up.script.streamed_bytes.load(Ordering::SeqCst);
            // What the upstream could push while we slept is bounded by buffers, not 1 GiB.
            assert!(
                upstream_after - upstream_before < 64 << 20,
                "the upstream pushed {} MiB while the client read nothing",
                (upstream_after - upstream_before) >> 20
            );
            max_rss = max_rss.max(support::proc_kib(d.pid(), "VmRSS"));
        }
    }
    assert_eq!(got, TOTAL);
    eprintln!(
        "agent RSS: {} MiB before, at most {} MiB while streaming 1 GiB",
        before / 1024,
        max_rss / 1024
    );
    assert!(
        max_rss < before + 64 * 1024,
        "RSS grew from {before} KiB to {max_rss} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_model_server_ends_the_stream_and_readiness_follows_it() {
    let sim = SimTd::new();
    let mut up = Upstream::start().await;
    let (d, c) = agent_for(&sim, &up, &["--sim-quote-delay-ms", "0"]).await;
    let resp = c.open("GET", "/v1/drip", &[], Bytes::new()).await.unwrap();
    let mut body = resp.into_body();
    assert!(
        read_until(&mut body, "tick", Duration::from_secs(10))
            .await
            .is_some()
    );
    up.kill().await;
    // The stream ends with an error, not a clean end that would pass for a full answer.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the stream did not end after the model server died");
    assert!(end.is_err(), "the stream ended cleanly");

    let ready = wait_readyz(&c, 503, Duration::from_secs(10)).await;
    let stage = ready["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "upstream_healthy")
        .unwrap()
        .clone();
    assert_eq!(stage["ok"], false);
    // What failed, for the client; where (the model server's address), only in the log.
    let detail = stage["detail"].as_str().unwrap();
    assert!(
        detail.contains("does not answer its health check")
            && !detail.contains(&up.addr.to_string()),
        "{stage}"
    );
    assert!(d.stderr().contains(&up.addr.to_string()), "{}", d.stderr());
    // Model routes say why, in OpenAI's shape.
    let r = c.get("/v1/models").await;
    assert_eq!(r.status, 503);
    let e = r.json();
    assert_eq!(e["error"]["type"], "not_ready", "{e}");
    assert_eq!(e["error"]["code"], "upstream_healthy", "{e}");
    // The agent itself is up: attestation and probes still answer.
    assert_eq!(c.get("/livez").await.status, 200);
    assert_eq!(c.get("/.well-known/attestation").await.status, 200);

    up.restart().await;
    wait_readyz(&c, 200, Duration::from_secs(15)).await;
    assert_eq!(c.get("/v1/models").await.status, 200);
    assert!(d.stderr().contains("upstream unhealthy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_in_openai_shape() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    // A config file: API keys are stored hashed, with small limits for the test.
    let key_hash = tdx_core::encoding::hex(&<[u8; 32]>::from(
        <sha2::Sha256 as sha2::Digest>::digest(b"s3cret"),
    ));
    let (d, _dir) = agent_fronting(
        &sim,
        &up,
        &format!(
            "api_key_sha256 = [\"{key_hash}\"]\nmax_request_body_bytes = 1024\nresponse_header_timeout_secs = 1\n"
        ),
    );
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    wait_readyz(&c, 200, Duration::from_secs(30)).await;

    let err = |r: &support::Resp| r.json()["error"].clone();
    let r = c.get("/v1/models").await;
    assert_eq!(r.status, 401);
    assert_eq!(err(&r)["code"], "invalid_api_key");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = c
        .open(
            "GET",
            "/v1/models",
            &[("authorization", "Bearer nope")],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let auth = [("authorization", "Bearer s3cret")];
    let r = c
        .open("GET", "/v1/models", &auth, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo = json_body(r).await;
    assert!(
        echo["headers"].get("authorization").is_none(),
        "the agent's API key reached the model server: {echo}"
    );
    let before = up.script.model_requests.load(Ordering::SeqCst);

    // Too large, declared up front.
    let r = c
        .open("POST", "/v1/completions", &auth, vec![b'x'; 2048])
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body = json_body(r).await;
    assert_eq!(body["error"]["code"], "request_too_large");
    assert_eq!(up.script.model_requests.load(Ordering::SeqCst), before);

    // Too large, found while streaming (no length declared): 413 as well.
    let r = stream_to_echo(&d, &sim, &[b'x'; 2800], false, &auth).await;
    assert_eq!(r.status(), 413);
    let body = json_body(r).await;
    assert_eq!(body["error"]["code"], "request_too_large");

    // The model server does not start answering in time: 504, its fault.
    let r = c
        .open("GET", "/v1/slow-headers", &auth, Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let body = json_body(r).await;
    assert_eq!(body["error"]["type"], "upstream_timeout");

    // Everything else under /v1 that is not configured answers in OpenAI's shape too, and
    // the agent counted each outcome.
    let m = c.get("/metrics").await.text();
    for outcome in ["401-agent", "413-agent", "504-agent", "2xx"] {
        assert!(
            m.contains(&format!(
                "tdx_agent_model_requests_total{{result=\"{outcome}\"}}"
            )),
            "{outcome} missing from\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_server_model_routes_are_not_found_and_unready_ones_say_why() {
    let sim = SimTd::new();
    // No upstream at all: attestation only.
    let d = Daemon::sim(&sim, &[]);
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    let r = c.get("/v1/models").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found");
    drop(c);
    drop(d);

    // An upstream that is down from the start: ready never holds, and /v1 says which stage.
    // Bound for the rest of the test but never listening: connections are refused, and no
    // other test's listener can take the port meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    // Another configuration is another measurement: it needs a fresh (simulated) boot.
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &["--upstream", &url, "--insecure-unmeasured-model"]);
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    // The first health probe may still be on its way: give it a moment to say it failed
    // (the address stays in the agent's log).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get("/v1/models").await;
        assert_eq!(r.status, 503);
        let e = r.json();
        assert_eq!(e["error"]["code"], "upstream_healthy", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(!message.contains(&url[7..]), "{e}");
        if message.contains("does not answer its health check") {
            break;
        }
        assert!(Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Extend RTMR3 through the agent's admin socket at `socket`: its measurements change.
fn extend_rtmr3(socket: &str) {
    let r = support::admin_extend(socket, "model", r#"{"v":2}"#);
    assert_eq!(r.code, 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rtmr3_change_sends_old_connections_away_after_their_requests() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (_d, c) = agent_for(&sim, &up, &[]).await;
    let old_cert = c.peer_cert.clone();
    let resp = c.open("GET", "/v1/drip", &[], Bytes::new()).await.unwrap();
    let mut stream = resp.into_body();
    assert!(
        read_until(&mut stream, "tick", Duration::from_secs(10))
            .await
            .is_some()
    );

    extend_rtmr3(&format!("{}/run/admin.sock", sim.dir_str()));

    // The request in flight keeps streaming...
    for _ in 0..3 {
        assert!(
            read_until(&mut stream, "tick", Duration::from_secs(10))
                .await
                .is_some(),
            "the in-flight stream was cut"
        );
    }
    // ...but the connection takes no new requests: clients must re-handshake.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.open("GET", "/v1/models", &[], Bytes::new()).await {
            Err(_) => break,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => panic!("the old connection still takes new requests"),
        }
    }
    let fresh = Https::connect(&_d.addr, sim.root_der()).await.unwrap();
    assert_ne!(
        fresh.peer_cert, old_cert,
        "a new handshake must get the new certificate"
    );
    assert_eq!(fresh.get("/v1/models").await.status, 200);
    drop(stream);
}

/// The same two properties through the whole chain, client -> connect -> serve -> model
/// server: SSE is not buffered at either hop, and a client that leaves cancels upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_connect_sse_is_unbuffered_and_leaving_cancels() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (d, _c) = agent_for(&sim, &up, &[]).await;
    // A policy that accepts this simulated TD's agent as it runs here.
    let policy = sim.image_policy("chain-policy.toml");
    let connect = support::ConnectProc::start(
        &d.url(),
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--insecure-root",
            sim.root_str(),
        ],
    );

    let resp = support::upstream::plain_open(&connect.addr, "POST", "/v1/sse").await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = read_until(&mut body, "\"n\":1", Duration::from_secs(15)).await;
    assert!(
        first.as_deref().is_some_and(|s| !s.contains("\"n\":2")),
        "event 1 did not arrive on its own: {first:?}\n{}",
        connect.stderr()
    );
    up.script.release_event2.notify_one();
    assert!(
        read_until(&mut body, "[DONE]", Duration::from_secs(10))
            .await
            .is_some()
    );

    let resp = support::upstream::plain_open(&connect.addr, "GET", "/v1/drip").await;
    let mut body = resp.into_body();
    assert!(
        read_until(&mut body, "tick", Duration::from_secs(10))
            .await
            .is_some()
    );
    drop(body);
    assert!(
        up.wait_stream_closed(Duration::from_secs(10)).await,
        "the model server never saw the client leave through connect and serve"
    );
}

/// A small request body (declared by Content-Length) is read whole before the model server is
/// asked: the model server sees the request only after the second half was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_request_body_is_read_whole_before_the_model_server_is_asked() {
    let sim = SimTd::new();
    let second_half_sent = Arc::new(AtomicBool::new(false));
    let up = Recorder::start(Arc::clone(&second_half_sent)).await;
    let (d, c) = agent_for_url(&sim, &up.url, &[]).await;
    let mut sender = http1(&d.addr, sim.root_der()).await;
    let echo = |body: ChanBody| {
        hyper::Request::builder()
            .method("POST")
            .uri("/v1/echo")
            .header("host", "agent")
            .header("content-type", "application/json")
            .header("content-length", "20")
            .body(body)
            .unwrap()
    };
    // A first request leaves an idle upstream connection on this connection's thread, so an
    // agent that did not wait for the body would pass the head on at once.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Bytes::from_static(b"{\"warm\":\"up.......\"}"))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(
        sender
            .send_request(echo(ChanBody(rx)))
            .await
            .unwrap()
            .status(),
        200
    );
    sender.ready().await.unwrap();

    let before = support::heads_taken(&c).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let answer = tokio::spawn(async move { sender.send_request(echo(ChanBody(rx))).await });
    tx.send(Bytes::from_static(b"{\"half\":1")).await.unwrap();
    // The agent has the head (and may have the first half) before the rest goes.
    support::wait_one_more_head(&c, before, "the request head").await;
    second_half_sent.store(true, Ordering::SeqCst);
    tx.send(Bytes::from_static(b",\"rest\":2}\n"))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("an answer once the body is complete")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[1].flag,
        "the model server saw the request before its body was complete: {seen:?}"
    );
    assert_eq!(seen[1].path, "/v1/echo", "{seen:?}");
    assert_eq!(seen[1].body_len, 20, "{seen:?}");
    assert_eq!(seen[1].content_length.as_deref(), Some("20"), "{seen:?}");
}

/// Requests one after another share one upstream connection; once it has been idle past
/// `keepalive_idle_ms` the agent closes it (the sweep after each health probe, every 100 ms
/// here) and the next request gets a new one.
#[tokio::test]
async fn upstream_connections_are_kept_until_idle_past_the_limit() {
    let sim = SimTd::new();
    let up = Recorder::start(Arc::default()).await;
    let (d, _dir) = agent_fronting_url(
        &sim,
        &up.url,
        "health_interval_ms = 100\nkeepalive_idle_ms = 1500\n",
    );
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    wait_readyz(&c, 200, Duration::from_secs(30)).await;
    // One client connection: one connection thread, one idle stack.
    for _ in 0..6 {
        assert_eq!(c.get("/v1/models").await.status, 200);
    }
    let seen = up.seen();
    let first = seen[0].conn;
    assert!(
        seen.iter().all(|s| s.conn == first),
        "requests one after another share one connection: {seen:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !up.closed().contains(&first) {
        assert!(
            Instant::now() < deadline,
            "an upstream connection idle past the limit was still open after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.get("/v1/models").await.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_ne!(
        seen[6].conn, first,
        "a request went on a connection closed for idling: {seen:?}"
    );
}

/// An agent with a 2 s header timeout (and 30 s for the model's answer to begin), ready.
async fn agent_with_a_2s_header_timeout(sim: &SimTd, up: &Upstream) -> (Daemon, tempfile::TempDir) {
    let (d, dir) = agent_fronting_url(
        sim,
        &up.url(),
        "response_header_timeout_secs = 30\n[limits]\nheader_read_timeout_secs = 2\n",
    );
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    wait_readyz(&c, 200, Duration::from_secs(30)).await;
    (d, dir)
}

/// The header timeout (2 s here) lets go of a client that is idle or slow to send its request,
/// never of one waiting for its answer: a model may think before the first byte, or pause
/// mid-stream, for longer than the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_ends_idle_connections_but_never_a_request_in_flight() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (mut d, _dir) = agent_with_a_2s_header_timeout(&sim, &up).await;
    let get = |path: &str| {
        hyper::Request::get(path)
            .header("host", "agent")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (mut h1, peer) = http1_from::<Full<Bytes>>(&d, &sim).await;

    // 3 s before the answer's head: nothing at all goes to the client meanwhile.
    let r = h1.send_request(get("/v1/delay/3000")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(r).await["object"], "delayed");

    // The client's connection task must have seen the first answer's end before it takes
    // another request (hyper's client contract), or the send fails on our side.
    h1.ready()
        .await
        .expect("the connection closed after one answer");

    // Silent for 3 s between two events of a stream.
    let mut r = h1.send_request(get("/v1/sse")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.body_mut();
    assert!(
        read_until(body, "\"n\":1", Duration::from_secs(10))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    up.script.release_event2.notify_one();
    let rest = read_until(body, "[DONE]", Duration::from_secs(10)).await;
    assert!(
        rest.as_deref().is_some_and(|t| t.contains("\"n\":2")),
        "the stream was cut after a pause: {rest:?}"
    );
    while let Some(frame) = r.body_mut().frame().await {
        frame.unwrap();
    }

    // Idle after its last answer, the connection is closed by the header timeout. That it
    // runs once from the answer's end (the answer's own bytes are not activity after it) is
    // `tdx_net::head_timer`'s unit tests' to show; here, only that it comes, and why.
    let ended = Instant::now();
    while !h1.is_closed() && ended.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = ended.elapsed();
    assert!(
        h1.is_closed(),
        "an idle connection was still open after {after:?}"
    );
    assert_closed_for(&d, peer, &[HEAD_TIMEOUT]).await;
    assert!(d.exited().is_none(), "serve died:\n{}", d.stderr());
}

/// HTTP/2 has the same rule: a connection with no request in flight for the header timeout
/// (2 s here) gets a GOAWAY, but a request waiting for its answer, or a stream pausing, is never
/// cut, however long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_idle_timeout_never_cuts_a_request_in_flight() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (mut d, _dir) = agent_with_a_2s_header_timeout(&sim, &up).await;
    let get = |path: &str| {
        hyper::Request::get(format!("https://agent{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (mut h2, conn, peer) = http2_from::<Full<Bytes>>(&d, &sim).await;

    // 3 s before the answer's head, then a stream silent for 3 s between two events, at once
    // on one connection.
    let delayed = h2.send_request(get("/v1/delay/3000"));
    let mut sse = h2.send_request(get("/v1/sse")).await.unwrap();
    assert_eq!(sse.status(), 200);
    assert!(
        read_until(sse.body_mut(), "\"n\":1", Duration::from_secs(10))
            .await
            .is_some()
    );
    let r = delayed.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_body(r).await["object"], "delayed");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    up.script.release_event2.notify_one();
    let rest = read_until(sse.body_mut(), "[DONE]", Duration::from_secs(10)).await;
    assert!(
        rest.as_deref().is_some_and(|t| t.contains("\"n\":2")),
        "the stream was cut after a pause: {rest:?}"
    );
    while let Some(frame) = sse.body_mut().frame().await {
        frame.unwrap();
    }
    drop(sse);

    // Idle after its last answer, the connection ends with the header timeout's GOAWAY.
    let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        matches!(closed, Ok(Ok(Ok(())))),
        "an idle HTTP/2 connection was not closed cleanly within 10 s: {closed:?}"
    );
    assert_closed_for(&d, peer, &[H2_GOAWAY]).await;
    assert!(d.exited().is_none(), "serve died:\n{}", d.stderr());
}

/// A connection holding part of its first request head when the measurements change is told
/// to close after its requests, and hyper waits for the rest of a head it has begun: the
/// header timeout must still end it, or it would hold its slot until the agent restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_head_is_cut_at_the_header_timeout_after_a_measurement_change() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Long enough for the measurement change (a CLI call) to come first on a loaded machine;
    // the log below shows it did.
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (mut d, dir) =
        agent_fronting_url(&sim, &up.url(), "[limits]\nheader_read_timeout_secs = 10\n");
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    wait_readyz(&c, 200, Duration::from_secs(30)).await;

    let config = std::sync::Arc::new(support::ratls_client_config(sim.root_der(), &[b"http/1.1"]));
    let mut tls = support::ratls_connect(&d.addr, config)
        .await
        .expect("RA-TLS");
    let peer = tls.get_ref().0.local_addr().unwrap();
    let opened = Instant::now();
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nhost: agent\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();

    extend_rtmr3(dir.path().join("run").join("admin.sock").to_str().unwrap());
    let changed = opened.elapsed();
    // The agent rotates its certificate; a new handshake sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let old_cert = c.peer_cert.clone();
    while Https::connect(&d.addr, sim.root_der())
        .await
        .unwrap()
        .peer_cert
        == old_cert
    {
        assert!(
            Instant::now() < deadline,
            "the certificate was not re-issued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => opened.elapsed(),
            Ok(n) => panic!(
                "answered a half-sent head: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a half-sent head held its connection 30 s (timeout 10 s)"));
    println!("measurement change after {changed:?}; connection cut after {closed:?}");
    // Told to close by the change first (else this tested only the plain timeout), then cut
    // by the header timeout while hyper waited for the rest of the head.
    assert_closed_for(&d, peer, &[MEASURED, HEAD_TIMEOUT]).await;
    assert!(d.exited().is_none(), "serve died:\n{}", d.stderr());
}

/// Send `body` to `/v1/echo` in 7,000-byte pieces, with its length declared or not (then the
/// client sends it chunked); the agent's answer.
async fn stream_to_echo(
    d: &Daemon,
    sim: &SimTd,
    body: &[u8],
    declared: bool,
    headers: &[(&str, &str)],
) -> hyper::Response<hyper::body::Incoming> {
    let mut sender = http1(&d.addr, sim.root_der()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri("/v1/echo")
        .header("host", "agent");
    if declared {
        req = req.header("content-length", body.len());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(ChanBody(rx)).unwrap();
    let answer = tokio::spawn(async move { sender.send_request(req).await });
    for piece in body.chunks(7000) {
        // The agent may refuse before it has read everything.
        if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
            break;
        }
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("an answer")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn bodies_reach_the_model_server_intact_however_they_are_framed() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (d, c) = agent_for(&sim, &up, &[]).await;
    // None: an HTTP/2 GET ends with its headers, and goes on with no body framing at all.
    let r = c.open("GET", "/v1/echo", &[], Bytes::new()).await.unwrap();
    let echo = json_body(r).await;
    assert_eq!(echo["body_len"], 0, "{echo}");
    for framing in ["content-length", "transfer-encoding"] {
        assert!(
            echo["headers"].get(framing).is_none(),
            "{framing} sent: {echo}"
        );
    }
    // Far above the size that is read whole first, so these stream.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
    for declared in [true, false] {
        let resp = stream_to_echo(&d, &sim, &body, declared, &[]).await;
        assert_eq!(resp.status(), 200);
        let echo = json_body(resp).await;
        assert_eq!(echo["body_len"], body.len(), "{echo}");
        assert_eq!(echo["body_sha256"], digest.as_str(), "{echo}");
        if declared {
            assert_eq!(echo["headers"]["content-length"], "300000", "{echo}");
        } else {
            assert_eq!(echo["headers"]["transfer-encoding"], "chunked", "{echo}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_leave_v1_once_normalized_are_refused_and_never_forwarded() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (d, c) = agent_for(&sim, &up, &[]).await;
    let before = up.script.model_requests.load(Ordering::SeqCst);
    for path in [
        "/v1/../metrics",
        "/v1/%2e%2e/metrics",
        "/v1/..%2fmetrics",
        "/v1/..%5cmetrics",
        "/v1//metrics",
        "/v1/./models",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let e = r.json()["error"].clone();
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains("/v1/")),
            "{path}: {e}"
        );
    }
    // HTTP/1.1 in absolute form, which a proxy in front of the model server would route by.
    let mut h1 = http1::<http_body_util::Empty<Bytes>>(&d.addr, sim.root_der()).await;
    let req = hyper::Request::builder()
        .uri("http://127.0.0.1:1/v1/models")
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let r = h1.send_request(req).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        up.script.model_requests.load(Ordering::SeqCst),
        before,
        "a refused path reached the model server"
    );
    // What stays under /v1/ goes on, exactly as written.
    let r = c.get("/v1/models").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.script.model_requests.load(Ordering::SeqCst), before + 1);
}
