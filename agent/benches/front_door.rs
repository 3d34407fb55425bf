//! The front door (`serve --upstream`) under load, against baselines measured in the same run
//! on the same machine (docs/benchmarks.md):
//! - requests/s and p50/p99 latency with `wrk` (same threads, connections, duration, TLS 1.3
//!   P-256) for POST /v1/chat/completions: the upstream direct, through nginx as a TLS
//!   reverse proxy (`proxy_buffering off`, keep-alive upstream), and through `serve`, five
//!   interleaved rounds, medians (and serve/nginx round by round, and how idle the machine
//!   was); targets: serve/nginx throughput >= 1, p99 <= nginx's;
//! - time to the first body byte of an SSE response on a kept-alive connection, direct and
//!   through nginx, `serve` and (when the binary has it) `connect` -> `serve`, interleaved;
//!   target: serve's extra p99 over direct < 1 ms.
//!
//! The fixed upstream of the load test is an nginx `return 200` of an OpenAI-shaped JSON body
//! on plain HTTP; the SSE upstream is a small hyper server in this process. A bench reports,
//! it does not fail: it exits non-zero only when it cannot set up (tools missing, a server that
//! does not start).
//!
//! Needs the release binary, nginx and wrk: run through scripts/bench.sh (which installs them
//! with scripts/bench-deps.sh and sets TDX_AGENT_BIN). Knobs: TDX_AGENT_BENCH_SECS (10),
//! TDX_AGENT_BENCH_CONNS (64), TDX_AGENT_BENCH_THREADS (1), TDX_AGENT_BENCH_ROUNDS (5),
//! TDX_AGENT_BENCH_SSE_N (2000), TDX_AGENT_BENCH_CONN_THREADS (the agent's connection
//! threads and nginx's workers; default one per core), TDX_AGENT_BENCH_YIELD (0: the agent's
//! `yield_before_sleep = false`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame};
use rustls::pki_types::ServerName;

/// What vLLM answers to a small non-streaming chat completion.
const JSON_BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;
/// The request every client sends.
const REQUEST_BODY: &str =
    r#"{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}"#;
const SSE_FIRST: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n";
const SSE_LAST: &str = "data: [DONE]\n\n";
/// The SSE upstream sends its first event at once and the rest this much later: a proxy that
/// waited for more than the first event would show it in its time to first byte.
const SSE_GAP: Duration = Duration::from_millis(2);
const PATH: &str = "/v1/chat/completions";

type Setup<T> = Result<T, String>;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("front_door bench: setup failed: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A child process killed (and reaped) on drop. nginx gets SIGTERM first, so its master stops
/// its workers; its process group is killed if it does not stop in time.
struct Proc {
    name: &'static str,
    child: Child,
    graceful: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.graceful {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            eprintln!("front_door bench: {} did not stop on SIGTERM", self.name);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program on PATH or in /usr/sbin (nginx's place on Debian, not on a user's PATH).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> Setup<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

async fn wait_port(name: &str, port: u16) -> Setup<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{name} does not listen on 127.0.0.1:{port}"))
}

/// Start `nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'` with `conf`.
async fn nginx(
    bin: &Path,
    name: &'static str,
    dir: &Path,
    conf: &str,
    ports: &[u16],
) -> Setup<Proc> {
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    let dir_s = format!("{}/", dir.display());
    let check = Command::new(bin)
        .args(["-t", "-q", "-p", &dir_s, "-e", "logs/error.log", "-c"])
        .arg(&conf_path)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !check.status.success() {
        return Err(format!(
            "nginx -t ({name}): {}",
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    use std::os::unix::process::CommandExt as _;
    let child = Command::new(bin)
        .args(["-p", &dir_s, "-e", "logs/error.log", "-c"])
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let proc = Proc {
        name,
        child,
        graceful: true,
    };
    for &p in ports {
        wait_port(name, p).await.map_err(|e| {
            let log = std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default();
            format!("{e}\n{log}")
        })?;
    }
    Ok(proc)
}

/// Start `tdx-agent ARGS` and read its `... listening on ADDR` line.
fn agent(bin: &str, name: &'static str, args: &[&str], log: &Path) -> Setup<(Proc, SocketAddr)> {
    let stderr = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("{bin}: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining, so the process never writes into a closed pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let proc = Proc {
        name,
        child,
        graceful: false,
    };
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            format!(
                "{name} printed no listening line ({line:?}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })?;
    Ok((proc, addr))
}

// ---------------------------------------------------------------------------------------------
// TLS and HTTP/1.1 clients.

fn accept_any_config() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(common::AcceptAny(provider)))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// A client that accepts only an agent whose RA-TLS evidence verifies against `root_der`.
fn ratls_config(root_der: Vec<u8>) -> Setup<Arc<rustls::ClientConfig>> {
    use tdx_core::ratls::{CollateralSource, RaTlsVerifier, client_config};
    let verifier = RaTlsVerifier::new(
        tdx_core::verify::Verifier::with_insecure_root(root_der),
        tdx_core::verify::Policy::default(),
        CollateralSource::Stapled,
    )
    .map_err(|e| format!("RA-TLS verifier: {e}"))?;
    client_config(Arc::new(verifier), vec![b"http/1.1".to_vec()])
        .map(Arc::new)
        .map_err(|e| format!("RA-TLS client config: {e}"))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One HTTP/1.1 connection (kept alive), over TLS when `tls` is given. Also returns the
/// negotiated TLS version and cipher suite.
async fn http1(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Sender, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("HTTP/1.1 with {addr}: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok((sender, "plain HTTP".into()))
        }
        Some(cfg) => {
            let name = ServerName::try_from("localhost").expect("server name");
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {addr}: {e}"))?;
            let (_, session) = tls.get_ref();
            let params = format!(
                "{:?} {:?}",
                session
                    .protocol_version()
                    .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                session
                    .negotiated_cipher_suite()
                    .map(|s| s.suite())
                    .unwrap_or(rustls::CipherSuite::Unknown(0)),
            );
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("HTTP/1.1 with {addr}: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok((sender, params))
        }
    }
}

fn request(method: &str, path: &str, body: &'static str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

/// GET `path` until it answers 200 (`what` is being waited for).
async fn wait_ok(
    what: &str,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    path: &str,
) -> Setup<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        match http1(addr, tls.clone()).await {
            Ok((mut s, _)) => match s.send_request(request("GET", path, "")).await {
                Ok(r) if r.status() == 200 => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    let body = r.into_body().collect().await.map(|b| b.to_bytes());
                    last = format!("{status}: {:?}", body.unwrap_or_default());
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what}: GET {path} not 200 within 60 s ({last})"))
}

// ---------------------------------------------------------------------------------------------
// The SSE upstream: a hyper HTTP/1.1 server on its own thread and runtime.

/// One event at once, the last one SSE_GAP later, then the end.
struct SseBody {
    step: u8,
    gap: Pin<Box<tokio::time::Sleep>>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.step {
            0 => {
                self.step = 1;
                let at = tokio::time::Instant::now() + SSE_GAP;
                self.gap.as_mut().reset(at);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    SSE_FIRST.as_bytes(),
                )))))
            }
            1 => match self.gap.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.step = 2;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        SSE_LAST.as_bytes(),
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
            _ => Poll::Ready(None),
        }
    }
}

type UpResp =
    hyper::Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>;

async fn sse_route(req: hyper::Request<hyper::body::Incoming>) -> Result<UpResp, std::io::Error> {
    let path = req.uri().path().to_string();
    // Read the request body like a model server would before it answers.
    let _ = req.into_body().collect().await;
    let resp = if path == "/health" {
        hyper::Response::new(Full::new(Bytes::from_static(b"ok")).boxed())
    } else {
        let body = SseBody {
            step: 0,
            gap: Box::pin(tokio::time::sleep(SSE_GAP)),
        };
        hyper::Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(body.boxed())
            .expect("response")
    };
    Ok(resp)
}

fn sse_upstream() -> Setup<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(s),
                            hyper::service::service_fn(sse_route),
                        )
                        .await;
                });
            }
        });
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// nginx configurations.

fn temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "client_body_temp_path {d}/client_body; proxy_temp_path {d}/proxy; \
         fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;"
    )
}

/// The fixed upstream: plain HTTP on loopback, one worker, a constant JSON body.
fn upstream_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    let tmp = temp_paths(dir);
    format!(
        r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {tmp}
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /health {{ return 200 "ok"; }}
        location / {{
            default_type application/json;
            return 200 '{JSON_BODY}';
        }}
    }}
}}
"#
    )
}

/// The reference: nginx terminating TLS 1.3 with a P-256 certificate and proxying without
/// buffering over kept-alive HTTP/1.1 connections; one server per upstream. `workers`: nginx's
/// `worker_processes`, "auto" (one per core) or as many as the agent's connection threads.
fn proxy_conf(dir: &Path, json: (u16, u16), sse: (u16, u16), workers: &str) -> String {
    let d = dir.display();
    let tmp = temp_paths(dir);
    let server = |listen: u16, upstream: &str| {
        format!(
            r#"    server {{
        listen 127.0.0.1:{listen} ssl backlog=4096;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1:secp384r1;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
"#
        )
    };
    let upstream = |name: &str, port: u16| {
        format!(
            "    upstream {name} {{ server 127.0.0.1:{port}; keepalive 64; \
             keepalive_requests 100000000; keepalive_timeout 300s; }}\n"
        )
    };
    format!(
        r#"# worker_processes auto = one per core, as the agent has one connection thread per core.
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {tmp}
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{}{}{}{}}}
"#,
        upstream("json_upstream", json.1),
        upstream("sse_upstream", sse.1),
        server(json.0, "json_upstream"),
        server(sse.0, "sse_upstream"),
    )
}

// ---------------------------------------------------------------------------------------------
// wrk.

#[derive(Clone, Debug, Default)]
struct WrkResult {
    rps: f64,
    p50: Duration,
    p99: Duration,
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
    /// CPU time (user + system) per request of the proxy, and of the upstream.
    proxy_cpu: Option<Duration>,
    upstream_cpu: Duration,
    /// Time the proxy's threads spent runnable but not running (waiting for a CPU), per
    /// request: what the scheduler adds to the latency, whoever holds the CPU meanwhile.
    proxy_wait: Option<Duration>,
    /// Share of the machine's CPU time that was idle during the run: with every core busy
    /// the proxy's cost per request decides the throughput; with idle time left, how its
    /// threads sleep and wake does.
    idle: f64,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let unit_at = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(unit_at);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn parse_wrk(out: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let (mut p50, mut p99) = (None, None);
    for line in out.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("50%") => p50 = words.next().and_then(parse_duration),
            Some("99%") => p99 = words.next().and_then(parse_duration),
            Some("Requests/sec:") => r.rps = words.next()?.parse().ok()?,
            Some("Non-2xx") => r.non_2xx = line.rsplit(' ').next()?.trim().parse().ok()?,
            Some("Socket") => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                r.socket_errors = line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum();
            }
            Some(n) if line.contains(" requests in ") => r.requests = n.parse().ok()?,
            _ => {}
        }
    }
    r.p50 = p50?;
    r.p99 = p99?;
    Some(r)
}

struct Wrk {
    bin: PathBuf,
    script: PathBuf,
    threads: u64,
    conns: u64,
}

impl Wrk {
    fn run(&self, url: &str, secs: u64) -> Setup<WrkResult> {
        let out = Command::new(&self.bin)
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.conns))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "5s", "--latency", "-s"])
            .arg(&self.script)
            .arg(url)
            .output()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "wrk {url}: {}\n{text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        parse_wrk(&text).ok_or_else(|| format!("wrk {url}: cannot parse its output:\n{text}"))
    }
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The processes doing a server's work: nginx's workers (the master's children), or the
/// process itself.
fn workers(pid: u32) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect::<Vec<u32>>();
    let mut all = children;
    all.push(pid);
    all
}

/// The command name and user + system CPU ticks of a /proc `stat` line.
fn stat_ticks(stat: &str) -> Option<(&str, u64)> {
    // Fields after the command name (which may hold spaces): state is field 3, utime 14 and
    // stime 15.
    let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        name,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

/// User + system CPU time of `pids` (all their threads) so far, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| Some(stat_ticks(&stat)?.1))
        .sum()
}

/// Nanoseconds so far that the threads of `pids` spent runnable but waiting for a CPU (the
/// second field of /proc/PID/task/TID/schedstat).
fn run_delay_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// CPU ticks so far of each of `pid`'s threads whose name starts with `prefix` (the agent's
/// connection threads are `conn-N`), by name.
fn thread_ticks(pid: u32, prefix: &str) -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            let (name, ticks) = stat_ticks(&stat)?;
            name.starts_with(prefix).then(|| (name.to_string(), ticks))
        })
        .collect();
    out.sort_by_key(|(n, _)| {
        n.trim_start_matches(prefix)
            .parse::<u64>()
            .unwrap_or(u64::MAX)
    });
    out
}

/// The agent's per-connection-thread counters from its /metrics, by thread: (connections,
/// requests).
async fn thread_counts(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Vec<(u64, u64)> {
    let Ok((mut s, _)) = http1(addr, Some(tls)).await else {
        return Vec::new();
    };
    let Ok(resp) = s.send_request(request("GET", "/metrics", "")).await else {
        return Vec::new();
    };
    let Ok(body) = resp.into_body().collect().await else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for line in text.lines() {
        for (metric, which) in [
            ("tdx_agent_connection_thread_connections_total{thread=\"", 0),
            ("tdx_agent_connection_thread_requests_total{thread=\"", 1),
        ] {
            let Some(rest) = line.strip_prefix(metric) else {
                continue;
            };
            let Some((thread, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let (Ok(t), Ok(v)) = (thread.parse::<usize>(), value.trim().parse::<f64>()) else {
                continue;
            };
            if out.len() <= t {
                out.resize(t + 1, (0, 0));
            }
            if which == 0 {
                out[t].0 = v as u64;
            } else {
                out[t].1 = v as u64;
            }
        }
    }
    out
}

/// `v` as "min..max (max/mean x.xx)": how evenly work spread over threads or workers.
fn spread(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "{min:.0}..{max:.0} (max/mean {:.2})",
        max / mean.max(f64::MIN_POSITIVE)
    )
}

/// The machine's (idle + iowait, all) CPU ticks so far, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (idle, f.iter().take(8).sum())
}

/// The 1-minute load average: above the core count, other work competed with the bench.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn median_by<T: Clone>(v: &[T], key: impl Fn(&T) -> f64) -> f64 {
    let mut k: Vec<f64> = v.iter().map(key).collect();
    k.sort_by(f64::total_cmp);
    k[k.len() / 2]
}

fn ms(d: f64) -> String {
    format!("{:.3} ms", d * 1e3)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

// ---------------------------------------------------------------------------------------------
// SSE time to first byte.

struct Leg {
    name: &'static str,
    sender: Sender,
    /// Request i's time, None when it failed.
    samples: Vec<Option<Duration>>,
    errors: u64,
    last_error: String,
}

/// One streamed request: the time from sending it to its first body byte; the rest of the
/// body is read (not timed) so the connection can carry the next one.
async fn ttfb(sender: &mut Sender) -> Result<Duration, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = request("POST", PATH, REQUEST_BODY);
    let t = Instant::now();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = resp.into_body();
    let first = loop {
        match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => break d,
                _ => continue,
            },
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err(format!("{status}: empty body")),
        }
    };
    let elapsed = t.elapsed();
    while let Some(f) = body.frame().await {
        f.map_err(|e| e.to_string())?;
    }
    if status != 200 || !first.starts_with(b"data: ") {
        return Err(format!("{status}: {:?}", String::from_utf8_lossy(&first)));
    }
    Ok(elapsed)
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.0} us", d.as_secs_f64() * 1e6)
}

fn signed_us(a: Duration, b: Duration) -> String {
    format!("{:+.0} us", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

// ---------------------------------------------------------------------------------------------

async fn run() -> Setup<()> {
    let bin = std::env::var("TDX_AGENT_BIN")
        .unwrap_or_else(|_| format!("{}/../target/release/tdx-agent", env!("CARGO_MANIFEST_DIR")));
    if !Path::new(&bin).exists() {
        return Err(format!("{bin} missing: run scripts/bench.sh"));
    }
    let nginx_bin = find_tool("nginx").ok_or("nginx not found: run scripts/bench-deps.sh")?;
    let wrk_bin = find_tool("wrk").ok_or("wrk not found: run scripts/bench-deps.sh")?;
    let secs = env_num("TDX_AGENT_BENCH_SECS", 10).max(1);
    let conns = env_num("TDX_AGENT_BENCH_CONNS", 64).max(1);
    let threads = env_num("TDX_AGENT_BENCH_THREADS", 1).clamp(1, conns);
    let rounds = env_num("TDX_AGENT_BENCH_ROUNDS", 5).max(1) as usize;
    let sse_n = env_num("TDX_AGENT_BENCH_SSE_N", 2000).max(1) as usize;

    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path();

    // Two simulated TDs: one agent per upstream (an agent has one upstream, and each TD's
    // RTMR3 holds one configuration).
    let sims: Vec<PathBuf> = ["sim-json", "sim-sse"]
        .iter()
        .map(|s| dir.join(s))
        .collect();
    for s in &sims {
        let out = Command::new(&bin)
            .args(["sim", "pki", "--sim-dir"])
            .arg(s)
            .output()
            .map_err(|e| format!("{bin}: {e}"))?;
        if !out.status.success() {
            return Err(format!("sim pki: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }

    // nginx's certificate: self-signed ECDSA P-256, like the agent's RA-TLS certificate.
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .map_err(|e| e.to_string())?
        .self_signed(&key)
        .map_err(|e| e.to_string())?;
    let ngx_dir = dir.join("nginx-proxy");
    let up_dir = dir.join("nginx-upstream");
    std::fs::create_dir_all(&ngx_dir).map_err(|e| e.to_string())?;
    std::fs::write(ngx_dir.join("cert.pem"), cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(ngx_dir.join("key.pem"), key.serialize_pem()).map_err(|e| e.to_string())?;

    // Upstreams.
    let up_port = free_port()?;
    let upstream = nginx(
        &nginx_bin,
        "nginx (upstream)",
        &up_dir,
        &upstream_conf(&up_dir, up_port),
        &[up_port],
    )
    .await?;
    let up_addr: SocketAddr = ([127, 0, 0, 1], up_port).into();
    wait_ok("the nginx upstream", up_addr, None, "/health").await?;
    let sse_addr = sse_upstream()?;
    wait_ok("the SSE upstream", sse_addr, None, "/health").await?;

    // The reference proxy, with as many workers as the agent has connection threads.
    let conn_threads = common::conn_threads();
    let worker_processes = conn_threads.map_or("auto".to_string(), |n| n.to_string());
    let (ngx_json, ngx_sse) = (free_port()?, free_port()?);
    let proxy = nginx(
        &nginx_bin,
        "nginx (proxy)",
        &ngx_dir,
        &proxy_conf(
            &ngx_dir,
            (ngx_json, up_port),
            (ngx_sse, sse_addr.port()),
            &worker_processes,
        ),
        &[ngx_json, ngx_sse],
    )
    .await?;
    let ngx_json_addr: SocketAddr = ([127, 0, 0, 1], ngx_json).into();
    let ngx_sse_addr: SocketAddr = ([127, 0, 0, 1], ngx_sse).into();

    // The agents, with TDX_AGENT_BENCH_CONN_THREADS and TDX_AGENT_BENCH_YIELD.
    let limits = dir.join("limits.toml");
    std::fs::write(&limits, common::limits_toml()).map_err(|e| e.to_string())?;
    let limits = limits.to_str().expect("UTF-8 path").to_string();
    let serve = |sim: &Path, upstream: SocketAddr, name: &'static str| {
        let sim = sim.to_str().expect("UTF-8 path").to_string();
        let up = format!("http://{upstream}");
        agent(
            &bin,
            name,
            &[
                "serve",
                "--config",
                &limits,
                "--tee",
                "sim",
                "--sim-dir",
                &sim,
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                &up,
                // nginx stands in for the model server: nothing to measure.
                "--insecure-unmeasured-model",
            ],
            &dir.join(format!("{name}.log")),
        )
    };
    let (serve_json, serve_json_addr) = serve(&sims[0], up_addr, "serve-json")?;
    let (_serve_sse, serve_sse_addr) = serve(&sims[1], sse_addr, "serve-sse")?;
    let probe = accept_any_config();
    wait_ok(
        "serve (JSON)",
        serve_json_addr,
        Some(probe.clone()),
        "/readyz",
    )
    .await?;
    wait_ok(
        "serve (SSE)",
        serve_sse_addr,
        Some(probe.clone()),
        "/readyz",
    )
    .await?;
    wait_ok("nginx (proxy)", ngx_json_addr, Some(probe.clone()), PATH).await?;

    let agent_cert_len = {
        let tcp = tokio::net::TcpStream::connect(serve_json_addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(probe.clone())
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.len())
            .unwrap_or(0)
    };

    // ---- 1. Load: wrk against the three paths.
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{REQUEST_BODY}'\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let wrk = Wrk {
        bin: wrk_bin,
        script,
        threads,
        conns,
    };
    let ngx_workers = workers(proxy.child.id());
    let ngx_worker_pids = ngx_workers.clone();
    let up_workers = workers(upstream.child.id());
    let targets: [(&str, String, Option<Vec<u32>>); 3] = [
        (
            "upstream direct (HTTP)",
            format!("http://{up_addr}{PATH}"),
            None,
        ),
        (
            "nginx (TLS proxy)",
            format!("https://{ngx_json_addr}{PATH}"),
            Some(ngx_workers),
        ),
        (
            "tdx-agent serve",
            format!("https://{serve_json_addr}{PATH}"),
            Some(vec![serve_json.child.id()]),
        ),
    ];
    let ticks = clock_ticks();
    println!(
        "front door: POST {PATH} ({} B request, {} B JSON answer) from wrk, {threads} thread(s), \
         {conns} keep-alive connections, {secs} s per run, {rounds} interleaved rounds, medians",
        REQUEST_BODY.len(),
        JSON_BODY.len()
    );
    println!(
        "  TLS 1.3, ECDSA P-256 certificates (nginx's {} B self-signed, the agent's \
         {agent_cert_len} B RA-TLS); {} cores shared by wrk, the proxy and the upstream; nginx \
         worker_processes {worker_processes}, the agent's connection threads {} ({})",
        cert.der().len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        conn_threads.map_or("one per core".to_string(), |n| n.to_string()),
        common::limits_toml().trim().replace('\n', "; ")
    );
    let load_before = loadavg();
    for (name, url, _) in &targets {
        // Warm-up: connections, caches, the agent's upstream pool.
        wrk.run(url, 2.min(secs))
            .map_err(|e| format!("warm-up {name}: {e}"))?;
    }
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); targets.len()];
    // Per connection thread (serve) and per worker (nginx), last round: connections,
    // requests, CPU ticks.
    let serve_pid = serve_json.child.id();
    let mut serve_threads: (Vec<(u64, u64)>, Vec<u64>) = (Vec::new(), Vec::new());
    let mut nginx_workers_cpu: Vec<u64> = Vec::new();
    for round in 0..rounds {
        // Rotate the order, so no path always runs first (or right after another).
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let (_, url, pids) = &targets[i];
            let before = (pids.as_deref().map(cpu_ticks), cpu_ticks(&up_workers));
            let wait_before = pids.as_deref().map(run_delay_ns);
            // Per thread or worker, only for the path that has them.
            let (counts_before, threads_before) = if i == 2 {
                (
                    thread_counts(serve_json_addr, probe.clone()).await,
                    thread_ticks(serve_pid, "conn-"),
                )
            } else {
                (Vec::new(), Vec::new())
            };
            let ngx_before: Vec<u64> = if i == 1 {
                ngx_worker_pids.iter().map(|p| cpu_ticks(&[*p])).collect()
            } else {
                Vec::new()
            };
            let machine_before = machine_ticks();
            let mut r = wrk.run(url, secs)?;
            let machine_after = machine_ticks();
            if i == 2 {
                let after = thread_counts(serve_json_addr, probe.clone()).await;
                serve_threads.0 = after
                    .iter()
                    .enumerate()
                    .map(|(t, (c, q))| {
                        let (c0, q0) = counts_before.get(t).copied().unwrap_or((0, 0));
                        (c.saturating_sub(c0), q.saturating_sub(q0))
                    })
                    .collect();
                serve_threads.1 = thread_ticks(serve_pid, "conn-")
                    .iter()
                    .map(|(n, t)| {
                        let t0 = threads_before
                            .iter()
                            .find(|(m, _)| m == n)
                            .map_or(0, |(_, t0)| *t0);
                        t.saturating_sub(t0)
                    })
                    .collect();
            }
            if i == 1 {
                nginx_workers_cpu = ngx_worker_pids
                    .iter()
                    .zip(&ngx_before)
                    .map(|(p, b)| cpu_ticks(&[*p]).saturating_sub(*b))
                    .collect();
            }
            r.idle = machine_after.0.saturating_sub(machine_before.0) as f64
                / machine_after.1.saturating_sub(machine_before.1).max(1) as f64;
            let per_req =
                |t: u64| Duration::from_secs_f64(t as f64 / ticks / r.requests.max(1) as f64);
            r.proxy_cpu = pids
                .as_deref()
                .zip(before.0)
                .map(|(p, b)| per_req(cpu_ticks(p).saturating_sub(b)));
            r.upstream_cpu = per_req(cpu_ticks(&up_workers).saturating_sub(before.1));
            r.proxy_wait = pids.as_deref().zip(wait_before).map(|(p, b)| {
                Duration::from_nanos(run_delay_ns(p).saturating_sub(b) / r.requests.max(1))
            });
            results[i].push(r);
        }
    }
    // Medians of the rounds: req/s, p50, p99, proxy CPU per request, upstream CPU per request,
    // machine idle, proxy's run-queue wait per request.
    let med: Vec<[f64; 7]> = results
        .iter()
        .map(|r| {
            [
                median_by(r, |x| x.rps),
                median_by(r, |x| x.p50.as_secs_f64()),
                median_by(r, |x| x.p99.as_secs_f64()),
                median_by(r, |x| x.proxy_cpu.map_or(0.0, |d| d.as_secs_f64())),
                median_by(r, |x| x.upstream_cpu.as_secs_f64()),
                median_by(r, |x| x.idle),
                median_by(r, |x| x.proxy_wait.map_or(0.0, |d| d.as_secs_f64())),
            ]
        })
        .collect();
    println!(
        "  {:<24} {:>9} {:>10} {:>10} {:>13} {:>14} {:>6}   per round req/s; errors",
        "path", "req/s", "p50", "p99", "proxy CPU/req", "upstream CPU/req", "idle"
    );
    for (i, (name, _, pids)) in targets.iter().enumerate() {
        let [rps, p50, p99, cpu, up_cpu, idle, _] = med[i];
        let per_round: Vec<String> = results[i].iter().map(|r| format!("{:.0}", r.rps)).collect();
        let errors: u64 = results[i].iter().map(|r| r.non_2xx + r.socket_errors).sum();
        let total: u64 = results[i].iter().map(|r| r.requests).sum();
        let cpu = if pids.is_some() {
            format!("{:.1} us", cpu * 1e6)
        } else {
            "-".into()
        };
        println!(
            "  {name:<24} {rps:>9.0} {:>10} {:>10} {cpu:>13} {:>14} {:>6}   {}; {errors} of {total} non-2xx or socket errors",
            ms(p50),
            ms(p99),
            format!("{:.1} us", up_cpu * 1e6),
            format!("{:.1}%", idle * 100.0),
            per_round.join(" ")
        );
    }
    let (d, n, s) = (med[0], med[1], med[2]);
    let tput = s[0] / n[0];
    let p99r = s[2] / n[2];
    println!(
        "  {:<24} {tput:>9.3} {:>10.3} {p99r:>10.3} {:>13.3}",
        "serve / nginx",
        s[1] / n[1],
        s[3] / n[3]
    );
    // Serve and nginx run next to each other in every round, so their ratio round by round
    // is less exposed to the machine's drift than the ratio of medians.
    let paired: Vec<f64> = results[2]
        .iter()
        .zip(&results[1])
        .map(|(s, n)| s.rps / n.rps.max(1.0))
        .collect();
    println!(
        "  serve / nginx round by round: {} ({} of {} rounds at or above 1)",
        paired
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" "),
        paired.iter().filter(|r| **r >= 1.0).count(),
        paired.len()
    );
    println!(
        "  (req/s: nginx / direct {:.3}, serve / direct {:.3})",
        n[0] / d[0],
        s[0] / d[0]
    );
    println!(
        "  proxy threads runnable but waiting for a CPU, per request: nginx {:.1} us, serve {:.1} us \
         (ratio {:.3})",
        n[6] * 1e6,
        s[6] * 1e6,
        s[6] / n[6].max(f64::MIN_POSITIVE)
    );
    println!(
        "  target throughput serve >= nginx: {} ({tput:.3}); target p99 serve <= nginx: {} ({p99r:.3})",
        verdict(tput >= 1.0),
        verdict(p99r <= 1.0)
    );
    println!(
        "  1-min load average {load_before} before, {} after",
        loadavg()
    );
    // How the work spread, last round: a connection thread with more than its share of the
    // connections (or of the CPU) is where the tail grows.
    let f = |v: Vec<u64>| v.into_iter().map(|x| x as f64).collect::<Vec<f64>>();
    let (counts, cpu) = &serve_threads;
    println!(
        "  serve, last round, per connection thread ({}): connections {}; requests {}; CPU ticks {}",
        counts.len(),
        spread(&f(counts.iter().map(|c| c.0).collect())),
        spread(&f(counts.iter().map(|c| c.1).collect())),
        spread(&f(cpu.clone()))
    );
    for (what, pick) in [
        (
            "connections",
            (|c: &(u64, u64)| c.0) as fn(&(u64, u64)) -> u64,
        ),
        ("requests", |c| c.1),
    ] {
        let by_thread: Vec<String> = counts.iter().map(|c| pick(c).to_string()).collect();
        println!("    {what:<11} by thread: {}", by_thread.join(" "));
    }
    // The master is the last of `ngx_workers` and does no request work.
    let ngx_cpu: Vec<u64> = nginx_workers_cpu
        .iter()
        .take(ngx_worker_pids.len().saturating_sub(1))
        .copied()
        .collect();
    println!(
        "  nginx, last round, per worker ({}): CPU ticks {}",
        ngx_cpu.len(),
        spread(&f(ngx_cpu))
    );

    // ---- 2. SSE time to first byte.
    let root = std::fs::read(sims[1].join("root.der")).map_err(|e| format!("root.der: {e}"))?;
    let ratls = ratls_config(root)?;
    let mut legs = Vec::new();
    let mut params = Vec::new();
    for (name, addr, tls) in [
        ("upstream direct (HTTP)", sse_addr, None),
        ("nginx (TLS proxy)", ngx_sse_addr, Some(probe.clone())),
        ("tdx-agent serve", serve_sse_addr, Some(ratls.clone())),
    ] {
        let (sender, p) = http1(addr, tls).await?;
        params.push(format!("{name}: {p}"));
        legs.push(Leg {
            name,
            sender,
            samples: Vec::with_capacity(sse_n),
            errors: 0,
            last_error: String::new(),
        });
    }
    // connect -> serve, when the binary has `connect` (a plain-HTTP local endpoint that
    // forwards over RA-TLS).
    let mut _connect_proc = None;
    let connect_skip = match Command::new(&bin).args(["connect", "--help"]).output() {
        Ok(o) if o.status.success() => {
            let help = String::from_utf8_lossy(&o.stdout);
            if ["--listen", "--insecure-root", "--insecure-no-policy"]
                .iter()
                .all(|f| help.contains(f))
            {
                let root = sims[1].join("root.der");
                let (p, addr) = agent(
                    &bin,
                    "connect",
                    &[
                        "connect",
                        &format!("https://{serve_sse_addr}"),
                        "--listen",
                        "127.0.0.1:0",
                        "--insecure-root",
                        root.to_str().expect("UTF-8 path"),
                        "--insecure-no-policy",
                    ],
                    &dir.join("connect.log"),
                )?;
                _connect_proc = Some(p);
                let (sender, _) = http1(addr, None).await?;
                legs.push(Leg {
                    name: "connect -> serve",
                    sender,
                    samples: Vec::with_capacity(sse_n),
                    errors: 0,
                    last_error: String::new(),
                });
                None
            } else {
                Some("`tdx-agent connect` has no --listen/--insecure-root/--insecure-no-policy")
            }
        }
        _ => Some("this tdx-agent has no `connect` subcommand (`connect --help` fails)"),
    };
    let load_before = loadavg();
    // Warm-up (and, for connect, its verification and first challenge).
    for leg in &mut legs {
        for _ in 0..200 {
            if let Err(e) = ttfb(&mut leg.sender).await {
                return Err(format!("SSE warm-up through {}: {e}", leg.name));
            }
        }
    }
    // Interleaved: request i goes to every path before request i+1 goes to any.
    for _ in 0..sse_n {
        for leg in &mut legs {
            match ttfb(&mut leg.sender).await {
                Ok(d) => leg.samples.push(Some(d)),
                Err(e) => {
                    leg.samples.push(None);
                    leg.errors += 1;
                    leg.last_error = e;
                }
            }
        }
    }
    println!();
    println!(
        "SSE time to first body byte: POST {PATH} answered text/event-stream, first event at once \
         and [DONE] {SSE_GAP:?} later; {sse_n} requests per path on one kept-alive HTTP/1.1 \
         connection each, interleaved"
    );
    println!("  TLS: {}", params.join("; "));
    println!(
        "  {:<24} {:>9} {:>9} {:>11} {:>11} {:>19}",
        "path", "p50", "p99", "extra p50", "extra p99", "paired Δ p50/p99"
    );
    let sorted = |leg: &Leg| {
        let mut v: Vec<Duration> = leg.samples.iter().flatten().copied().collect();
        v.sort();
        v
    };
    let direct = sorted(&legs[0]);
    let (dp50, dp99) = (pct(&direct, 0.5), pct(&direct, 0.99));
    let mut serve_extra = None;
    let mut nginx_extra = None;
    for (k, leg) in legs.iter().enumerate() {
        let own = sorted(leg);
        let (p50, p99) = (pct(&own, 0.5), pct(&own, 0.99));
        let (e50, e99, paired) = if k == 0 {
            (String::new(), String::new(), String::new())
        } else {
            // Request i of this path minus request i of the direct path, sent just before.
            let mut diffs: Vec<f64> = leg
                .samples
                .iter()
                .zip(&legs[0].samples)
                .filter_map(|(a, b)| Some(a.as_ref()?.as_secs_f64() - b.as_ref()?.as_secs_f64()))
                .collect();
            diffs.sort_by(f64::total_cmp);
            let q = |q: f64| {
                let i = ((q * diffs.len() as f64).ceil() as usize).clamp(1, diffs.len().max(1)) - 1;
                diffs.get(i).map_or(0.0, |d| d * 1e6)
            };
            (
                signed_us(p50, dp50),
                signed_us(p99, dp99),
                format!("{:+.0}/{:+.0} us", q(0.5), q(0.99)),
            )
        };
        let extra = p99.as_secs_f64() - dp99.as_secs_f64();
        if leg.name == "tdx-agent serve" && !own.is_empty() {
            serve_extra = Some(extra);
        }
        if leg.name == "nginx (TLS proxy)" && !own.is_empty() {
            nginx_extra = Some(extra);
        }
        println!(
            "  {:<24} {:>9} {:>9} {:>11} {:>11} {:>19}{}",
            leg.name,
            us(p50),
            us(p99),
            e50,
            e99,
            paired,
            if leg.errors > 0 {
                format!("  ({} errors, last: {})", leg.errors, leg.last_error)
            } else {
                String::new()
            }
        );
    }
    if let Some(why) = connect_skip {
        println!("  {:<24} skipped: {why}", "connect -> serve");
    }
    match serve_extra {
        Some(x) => println!(
            "  target serve's extra p99 over direct < 1 ms: {} ({:+.3} ms; nginx's {})",
            verdict(x < 1e-3),
            x * 1e3,
            nginx_extra.map_or("-".into(), |n| format!("{:+.3} ms", n * 1e3)),
        ),
        None => println!("  serve: no samples"),
    }
    println!(
        "  1-min load average {load_before} before, {} after",
        loadavg()
    );
    Ok(())
}
