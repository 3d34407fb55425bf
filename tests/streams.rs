//! Many concurrent SSE streams through the front door, end to end: 1,000 through `serve` on
//! their own RA-TLS connections and 250 through `connect` (multiplexed on its one HTTP/2
//! connection to `serve`), all at once, from the scripted model server's numbered events.
//! Every stream must get every event in order and end with `[DONE]`; none may stall; the
//! agent's file descriptors and memory stay bounded and its descriptors return when the
//! streams end.
//!
//! CI runs it for a few seconds. `scripts/soak.sh` runs the same test for 10 minutes
//! (`TDX_AGENT_SOAK_SECS=600`, an event a second) and prints the memory curve
//! (docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use support::upstream::Upstream;
use support::{ConnectProc, Daemon, Https, SimTd, open_fds, proc_kib, raise_nofile_limit};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one stream saw.
#[derive(Debug)]
struct Seen {
    events: u64,
    longest_gap: Duration,
}

/// Read `body` to its end, checking the events are 0, 1, 2, ... `n - 1` then `[DONE]`. A
/// stream that gets nothing for `stall` has stalled.
async fn read_events(mut body: Incoming, n: u64, stall: Duration) -> Result<Seen, String> {
    let mut buf = Vec::new();
    let mut next = 0u64;
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    loop {
        let frame = match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(format!("stalled after event {next} for {stall:?}")),
            Ok(None) => return Err(format!("ended after {next} events without [DONE]")),
            Ok(Some(Err(e))) => return Err(format!("failed after {next} events: {e}")),
            Ok(Some(Ok(f))) => f,
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let text = text.trim();
            if text == "data: [DONE]" {
                return if next == n {
                    Ok(Seen {
                        events: next,
                        longest_gap,
                    })
                } else {
                    Err(format!("[DONE] after {next} of {n} events"))
                };
            }
            let want = format!("data: {{\"seq\":{next}}}");
            if text != want {
                return Err(format!("expected {want:?}, got {text:?}"));
            }
            longest_gap = longest_gap.max(last.elapsed());
            last = Instant::now();
            next += 1;
        }
    }
}

/// One GET of `path` on `io` (HTTP/1.1), its events read to the end.
async fn stream_over<T>(
    io: T,
    host: &str,
    path: String,
    n: u64,
    stall: Duration,
) -> Result<Seen, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    read_events(resp.into_body(), n, stall).await
}

/// One stream through `serve`, on its own RA-TLS connection.
async fn through_serve(
    addr: String,
    config: Arc<rustls::ClientConfig>,
    path: String,
    n: u64,
    stall: Duration,
) -> Result<Seen, String> {
    let tls = support::ratls_connect(&addr, config).await?;
    stream_over(tls, "localhost", path, n, stall).await
}

/// One stream through `connect`'s plain local listener.
async fn through_connect(
    addr: String,
    path: String,
    n: u64,
    stall: Duration,
) -> Result<Seen, String> {
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream_over(tcp, &addr, path, n, stall).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_streams_through_serve_and_250_through_connect_get_every_event_in_order() {
    let serve_streams = env_u64("TDX_AGENT_SOAK_SERVE_STREAMS", 1000) as usize;
    let connect_streams = env_u64("TDX_AGENT_SOAK_CONNECT_STREAMS", 250) as usize;
    let secs = env_u64("TDX_AGENT_SOAK_SECS", 5);
    let event_ms = env_u64("TDX_AGENT_SOAK_EVENT_MS", 250);
    let n = (secs * 1000 / event_ms).max(1);
    let stall = Duration::from_secs(30);
    // The clients and the scripted model server live in this process, and `serve` inherits
    // its limit: one descriptor per client connection here, and per upstream connection in
    // both, with room to spare.
    let want = 4 * (serve_streams + connect_streams) as u64 + 1024;
    let limit = raise_nofile_limit(want);
    assert!(
        limit >= want,
        "the open-file limit is {limit}, this test needs {want}: raise the hard limit (ulimit -Hn)"
    );

    let sim = SimTd::new();
    let up = Upstream::start().await;
    // Both sets at once pass `serve`'s default cap of 1,024 requests in flight.
    let dir = tempfile::tempdir().unwrap();
    let config = support::sim_config(
        &sim,
        dir.path(),
        "",
        &format!(
            "[model]\ninsecure_unmeasured = true\n[upstream]\nurl = \"{}\"\nmax_concurrent_requests = {}\n",
            up.url(),
            serve_streams + connect_streams + 64
        ),
    );
    let d = Daemon::start(&["serve", "--config", support::path_str(&config)], &[], &[]);
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get("/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);
    let policy = sim.image_policy("streams-policy.toml");
    let connect = ConnectProc::start(
        &d.url(),
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--insecure-root",
            sim.root_str(),
        ],
    );
    let (pid, connect_pid) = (d.pid(), connect.pid());
    let (fds_before, connect_fds_before) = (open_fds(pid), open_fds(connect_pid));

    // Memory and descriptors of both agents, every second, while the streams run.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut curve = Vec::new();
            while !done.load(Ordering::Relaxed) {
                curve.push((
                    started.elapsed().as_secs(),
                    proc_kib(pid, "VmRSS"),
                    open_fds(pid),
                    proc_kib(connect_pid, "VmRSS"),
                    open_fds(connect_pid),
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            curve
        })
    };

    let path = format!("/v1/count/{n}/{event_ms}");
    let config = Arc::new(support::ratls_client_config(sim.root_der(), &[b"http/1.1"]));
    let started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..serve_streams {
        let (addr, config, path) = (d.addr.clone(), Arc::clone(&config), path.clone());
        streams.spawn(async move { ("serve", through_serve(addr, config, path, n, stall).await) });
    }
    for _ in 0..connect_streams {
        let (addr, path) = (connect.addr.clone(), path.clone());
        streams.spawn(async move { ("connect", through_connect(addr, path, n, stall).await) });
    }
    let mut failures = Vec::new();
    let mut longest_gap = Duration::ZERO;
    let mut complete = 0;
    while let Some(r) = streams.join_next().await {
        match r.unwrap() {
            (_, Ok(seen)) => {
                assert_eq!(seen.events, n);
                longest_gap = longest_gap.max(seen.longest_gap);
                complete += 1;
            }
            (via, Err(e)) => failures.push(format!("{via}: {e}")),
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let curve = sampler.await.unwrap();
    println!("time_s serve_rss_mib serve_fds connect_rss_mib connect_fds");
    for (t, rss, fds, crss, cfds) in &curve {
        println!(
            "{t} {:.1} {fds} {:.1} {cfds}",
            *rss as f64 / 1024.0,
            *crss as f64 / 1024.0
        );
    }
    println!(
        "{complete} streams of {n} events in {elapsed:.1?}; longest gap between two events of a \
         stream {longest_gap:?} (events every {event_ms} ms)"
    );
    assert!(
        failures.is_empty(),
        "{} of {} streams failed, first: {:?}\n{}",
        failures.len(),
        serve_streams + connect_streams,
        failures.first(),
        d.stderr()
    );

    // Bounded: one descriptor per client connection and one per upstream connection, plus
    // the agent's own; and they are given back when the streams end.
    let peak_fds = curve.iter().map(|s| s.2).max().unwrap_or(0);
    let bound = fds_before + 2 * (serve_streams + connect_streams) + 64;
    assert!(
        peak_fds <= bound,
        "serve held {peak_fds} descriptors, more than {bound}"
    );
    let peak_rss = curve.iter().map(|s| s.1).max().unwrap_or(0);
    assert!(
        peak_rss < 1024 * 1024,
        "serve's RSS peaked at {} MiB for {} streams",
        peak_rss / 1024,
        serve_streams + connect_streams
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (fds, cfds) = (open_fds(pid), open_fds(connect_pid));
        // The upstream pool may keep some idle connections for reuse.
        if fds <= fds_before + 64 && cfds <= connect_fds_before + 16 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors not given back: serve {fds} (was {fds_before}), connect {cfds} (was \
             {connect_fds_before})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(up);
}
