//! The front door's upstream HTTP/1.1 client (`proxy/h1` through `proxy/pool`) against hyper's
//! `client::conn::http1` with one kept-alive connection per concurrent caller, on the same
//! loopback upstream, in the same run (docs/benchmarks.md, "Issue 18 part 2"): requests/s and
//! the client thread's CPU per request, rounds alternated, medians.
//!
//! The client side runs on one current-thread runtime, as each of serve's connection threads
//! does; the upstream, on a thread of its own, answers every request with the same small JSON
//! (its CPU is not counted). The CPU is the client thread's user + system time from
//! /proc/thread-self/stat (10 ms ticks: rounds last seconds). A bench reports, it does not fail.
//!
//! Knobs: TDX_AGENT_BENCH_REQUESTS (100000 per round), TDX_AGENT_BENCH_CONNS (16),
//! TDX_AGENT_BENCH_ROUNDS (5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench may fail loudly

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tdx_daemon::server::proxy::h1::RequestBody;
use tdx_daemon::server::proxy::pool::Pool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const JSON_BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The upstream on its own thread: every request head gets the same answer.
fn upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let answer: &'static [u8] = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{JSON_BODY}",
                JSON_BODY.len()
            )
            .leak()
            .as_bytes();
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut pending = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        let mut out = Vec::new();
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            out.extend_from_slice(answer);
                        }
                        if !out.is_empty() && s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    addr
}

/// This thread's user + system CPU so far.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

struct Round {
    per_sec: f64,
    cpu_us: f64,
}

fn measure(requests: usize, f: impl std::future::Future<Output = ()>) -> Round {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (t0, c0) = (Instant::now(), thread_cpu());
    rt.block_on(f);
    let (wall, cpu) = (t0.elapsed(), thread_cpu() - c0);
    Round {
        per_sec: requests as f64 / wall.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / requests as f64,
    }
}

async fn ours(addr: SocketAddr, conns: usize, each: usize) {
    let pool = Pool::new(
        addr.to_string(),
        Duration::from_secs(5),
        Duration::from_secs(60),
        conns,
        0,
    );
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                let req = hyper::Request::post("/v1/chat/completions")
                    .header("host", "upstream")
                    .body(RequestBody::Full(Bytes::from_static(
                        b"{\"model\":\"bench\"}",
                    )))
                    .unwrap();
                let resp = pool.send(req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), JSON_BODY.len());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn hyper(addr: SocketAddr, conns: usize, each: usize) {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            for _ in 0..each {
                sender.ready().await.unwrap();
                let req = hyper::Request::post("/v1/chat/completions")
                    .header("host", "upstream")
                    .header("content-length", "17")
                    .body(http_body_util::Full::new(Bytes::from_static(
                        b"{\"model\":\"bench\"}",
                    )))
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), JSON_BODY.len());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let requests = knob("TDX_AGENT_BENCH_REQUESTS", 100_000);
    let conns = knob("TDX_AGENT_BENCH_CONNS", 16).max(1);
    let rounds = knob("TDX_AGENT_BENCH_ROUNDS", 5).max(1);
    let each = (requests / conns).max(1);
    let requests = each * conns;
    let addr = upstream();
    println!(
        "upstream client: {requests} POSTs per round over {conns} kept-alive connections, {rounds} rounds each, alternated"
    );
    // Warm up both (connections, allocator, caches).
    measure(requests / 10, ours(addr, conns, each / 10));
    measure(requests / 10, hyper(addr, conns, each / 10));
    let (mut o_rate, mut o_cpu, mut h_rate, mut h_cpu) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let o = measure(requests, ours(addr, conns, each));
        let h = measure(requests, hyper(addr, conns, each));
        println!(
            "round {round}: ours {:.0} req/s {:.2} us CPU/req; hyper {:.0} req/s {:.2} us CPU/req",
            o.per_sec, o.cpu_us, h.per_sec, h.cpu_us
        );
        o_rate.push(o.per_sec);
        o_cpu.push(o.cpu_us);
        h_rate.push(h.per_sec);
        h_cpu.push(h.cpu_us);
    }
    let (or, oc, hr, hc) = (median(o_rate), median(o_cpu), median(h_rate), median(h_cpu));
    println!(
        "median: ours {or:.0} req/s {oc:.2} us CPU/req; hyper {hr:.0} req/s {hc:.2} us CPU/req; ours/hyper throughput {:.3}, CPU per request {:.3}",
        or / hr,
        oc / hc
    );
}
