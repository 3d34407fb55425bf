//! A scripted model server for the front-door tests: HTTP/1.1 like vLLM, with routes that
//! hold back an SSE event until the test says so, stream without end, stream numbered events,
//! stream a given number of bytes, echo what they received, or answer late; and it can be killed and restarted on the
//! same port. It records whether the agent closed a stream's connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::Https;

/// What the routes share with the test.
#[derive(Default)]
pub struct Script {
    /// `/health` answers 200 while true, 503 otherwise.
    pub unhealthy: AtomicBool,
    /// Requests received on `/v1/` routes.
    pub model_requests: AtomicU64,
    /// `/v1/sse` sends its second event only once notified.
    pub release_event2: Notify,
    /// Set when a streaming route found its client (the agent) gone.
    pub stream_closed: AtomicBool,
    pub stream_closed_notify: Notify,
    /// Bytes a streaming route has handed to hyper so far.
    pub streamed_bytes: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub script: Arc<Script>,
    tasks: JoinSet<()>,
}

/// A body fed from a channel, so the sender decides when each piece goes; a failed send means
/// the connection is gone. The scripted routes answer with it, and tests send requests with it.
pub struct ChanBody(pub mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type Resp = Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>;

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .expect("response")
}

fn streaming(content_type: &str, rx: mpsc::Receiver<Bytes>) -> Resp {
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(ChanBody(rx).boxed())
        .expect("response")
}

fn closed(script: &Script) {
    script.stream_closed.store(true, Ordering::SeqCst);
    script.stream_closed_notify.notify_waiters();
}

async fn route(script: Arc<Script>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let code = if script.unhealthy.load(Ordering::SeqCst) {
            503
        } else {
            200
        };
        return full(code, "text/plain", "");
    }
    script.model_requests.fetch_add(1, Ordering::SeqCst);
    match path.as_str() {
        "/v1/sse" => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: {\"n\":1}\n\n")).await;
                script.release_event2.notified().await;
                let _ = tx.send(Bytes::from_static(b"data: {\"n\":2}\n\n")).await;
                let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            });
            streaming("text/event-stream", rx)
        }
        "/v1/drip" => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                loop {
                    if tx
                        .send(Bytes::from_static(b"data: tick\n\n"))
                        .await
                        .is_err()
                    {
                        closed(&script);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            streaming("text/event-stream", rx)
        }
        p if p.starts_with("/v1/count/") => {
            // `/v1/count/N/MS`: N numbered events MS milliseconds apart, then [DONE], so a
            // client can tell a lost, repeated or reordered event.
            let mut it = p["/v1/count/".len()..].split('/');
            let n: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let ms: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(ms.max(1)));
                for seq in 0..n {
                    tick.tick().await;
                    let event = Bytes::from(format!("data: {{\"seq\":{seq}}}\n\n"));
                    if tx.send(event).await.is_err() {
                        closed(&script);
                        return;
                    }
                }
                let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            });
            streaming("text/event-stream", rx)
        }
        p if p.starts_with("/v1/bytes/") => {
            let total: u64 = p["/v1/bytes/".len()..].parse().unwrap_or(0);
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 << 10]);
                let mut sent = 0u64;
                while sent < total {
                    let n = (total - sent).min(chunk.len() as u64) as usize;
                    if tx.send(chunk.slice(..n)).await.is_err() {
                        closed(&script);
                        return;
                    }
                    sent += n as u64;
                    script.streamed_bytes.store(sent, Ordering::SeqCst);
                }
            });
            streaming("application/octet-stream", rx)
        }
        p if p.starts_with("/v1/redirect/") => {
            // `/v1/redirect/HEX`: a 307 to the hex-decoded Location, whatever it names.
            let to = hex::decode(&p["/v1/redirect/".len()..]).unwrap_or_default();
            let mut r = full(307, "application/json", "{}");
            if let Ok(v) = hyper::header::HeaderValue::from_bytes(&to) {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            r
        }
        p if p.starts_with("/v1/delay/") => {
            // A model that thinks this many milliseconds before its answer's head.
            let ms: u64 = p["/v1/delay/".len()..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(200, "application/json", r#"{"object":"delayed"}"#)
        }
        "/v1/slow-headers" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            full(200, "application/json", "{}")
        }
        "/v1/status/500" => full(
            500,
            "application/json",
            r#"{"object":"error","message":"upstream says no","code":500}"#,
        ),
        _ => {
            let version = format!("{:?}", req.version());
            let method = req.method().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let headers: BTreeMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let echo = serde_json::json!({
                "method": method,
                "path": path,
                "query": query,
                "version": version,
                "headers": headers,
                "body_len": body.as_ref().map(|b| b.len()).unwrap_or(0),
                "body_sha256": body.as_ref().map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))).ok(),
                "body_error": body.as_ref().err().map(|e| e.to_string()),
            });
            full(200, "application/json", echo.to_string())
        }
    }
}

impl Upstream {
    /// Serve on 127.0.0.1, on `port` (0: any).
    pub async fn start_on(port: u16, script: Arc<Script>) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("binding the scripted upstream");
        let addr = listener.local_addr().expect("local address");
        let mut tasks = JoinSet::new();
        let s = Arc::clone(&script);
        // Connections run inside the accept task's own set, so aborting it drops them all:
        // that is what a killed process looks like from the agent's side.
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = Arc::clone(&s);
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = Arc::clone(&s);
                        async move { Ok::<_, std::convert::Infallible>(route(s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            script,
            tasks,
        }
    }

    pub async fn start() -> Self {
        Self::start_on(0, Arc::new(Script::default())).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drop the listener and every connection at once, as if the process died.
    pub async fn kill(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Start again on the same port with the same script.
    pub async fn restart(&mut self) {
        self.kill().await;
        *self = Self::start_on(self.addr.port(), Arc::clone(&self.script)).await;
    }

    /// Wait until a streaming route saw its connection closed, or `within` passes.
    pub async fn wait_stream_closed(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.script.stream_closed_notify.notified();
            if self.script.stream_closed.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.script.stream_closed.load(Ordering::SeqCst);
            }
        }
    }
}

impl Https {
    /// Send a request and return the response with its body unread, to read frame by frame.
    pub async fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response<Incoming>, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let mut sender = self.sender.clone();
        sender
            .ready()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))
    }
}

/// Read frames from `body` until the bytes seen so far contain `needle`; `None` if the body
/// ends, fails or `within` passes first.
pub async fn read_until(body: &mut Incoming, needle: &str, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if String::from_utf8_lossy(&seen).contains(needle) {
            return Some(String::from_utf8_lossy(&seen).into_owned());
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    seen.extend_from_slice(d);
                }
            }
            _ => return None,
        }
    }
}

/// An HTTP/1.1 client over RA-TLS (the front door also serves HTTP/1.1, and only HTTP/1.1
/// can carry the hop-by-hop headers a proxy must strip).
pub async fn http1<B>(addr: &str, root_der: Vec<u8>) -> hyper::client::conn::http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = Arc::new(super::ratls_client_config(root_der, &[b"http/1.1"]));
    let tls = super::ratls_connect(addr, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 connection to the agent, and its connection task: it ends `Ok` when the agent
/// closes with a GOAWAY.
pub async fn http2<B>(
    addr: &str,
    root_der: Vec<u8>,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
)
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = Arc::new(super::ratls_client_config(root_der, &[b"h2"]));
    let tls = super::ratls_connect(addr, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    (sender, tokio::spawn(conn))
}

/// Open a plain HTTP/1.1 request to `addr` (e.g. `tdx-agent connect`'s local listener) and
/// return the response with its body unread.
pub async fn plain_open(addr: &str, method: &str, path: &str) -> Response<Incoming> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// An agent started from a configuration file only (it and the agent's state live in the
/// returned directory), fronting `up`, with these extra `[upstream]` lines (further sections
/// may follow).
pub fn agent_fronting(
    sim: &super::SimTd,
    up: &Upstream,
    upstream: &str,
) -> (super::Daemon, tempfile::TempDir) {
    agent_fronting_url(sim, &up.url(), upstream, &[])
}

/// [`agent_fronting`] for a model server at `url`, the agent run with `env` added.
pub fn agent_fronting_url(
    sim: &super::SimTd,
    url: &str,
    upstream: &str,
    env: &[(&str, &str)],
) -> (super::Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = super::sim_config(
        sim,
        dir.path(),
        "",
        // A stand-in model server: nothing to measure.
        &format!("[model]\ninsecure_unmeasured = true\n[upstream]\nurl = \"{url}\"\n{upstream}"),
    );
    let d = super::Daemon::start(&["serve", "--config", super::path_str(&config)], env, &[]);
    (d, dir)
}
