//! The daemon under load, against baselines measured in the same run:
//! - full TLS handshakes against `tdx-agent serve` vs a plain rustls server with the same key
//!   type (P-256), each in its own process, interleaved rounds: the median of the per-round
//!   rate ratios (target >= 0.9), and the servers' CPU time per handshake (from
//!   /proc/PID/task/*/schedstat, so client noise does not enter it);
//! - fresh challenges per second with 2,000 concurrent challengers on already-open
//!   connections and a 1 s quote delay (target >= 1,000/s), with the batches that took and
//!   when the answers arrived;
//! - the idle resident memory of `serve` (target < 30 MiB).
//!
//! Needs the release binary: run through scripts/bench.sh, which builds it and sets
//! TDX_AGENT_BIN. Knobs: TDX_AGENT_BENCH_CONN_THREADS (the agent's connection threads and the
//! plain server's runtime workers; default one per core), TDX_AGENT_BENCH_YIELD (0: the agent's
//! `yield_before_sleep = false`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod common;

use common::{Proc, client_config_no_alpn, handshakes, median, spawn_listening};

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

/// Odd, so the median is one round.
const ROUNDS: usize = 41;
const PER_ROUND: usize = 200;
const CHALLENGERS: usize = 2000;
/// The bench re-runs itself with this variable set to be the plain rustls server, so both
/// servers run in their own process with their own runtime, like `serve` does.
const PLAIN_SERVER_ENV: &str = "TDX_AGENT_BENCH_PLAIN_SERVER";

fn client_config(alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut c = (*client_config_no_alpn()).clone();
    c.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(c)
}

/// The DER size of the certificate `addr` serves.
async fn served_cert_len(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>) -> usize {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map_or(0, |c| c.len())
}

/// The plain rustls server (this binary re-run with PLAIN_SERVER_ENV): a P-256 self-signed
/// certificate, the agent's protocol versions and ALPN, one task per connection that
/// handshakes and then waits for the client to go, as the agent's listener does.
/// `padding` > 0 adds an extension of that many bytes (incompressible, like a quote's
/// signatures) so the certificate is as large as the agent's: that server shows how much of
/// the difference is the certificate's size alone.
fn plain_server_main(padding: usize) {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = common::conn_threads() {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().unwrap();
    rt.block_on(async {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        if padding > 0 {
            let mut pad = vec![0u8; padding];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut pad);
            // An OCTET STRING of the padding, under a private-arc OID nobody interprets.
            let len = u16::try_from(padding).unwrap().to_be_bytes();
            let content = [&[0x04, 0x82, len[0], len[1]][..], &pad].concat();
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 55555, 1],
                    content,
                ));
        }
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 1];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                }
            });
        }
    });
}

/// `serve` on a fresh simulated TD in `tmp/name`.
fn serve(
    bin: &str,
    tmp: &std::path::Path,
    name: &str,
    delay_ms: u64,
) -> (Proc, std::net::SocketAddr) {
    let sim = tmp.join(name);
    let delay = delay_ms.to_string();
    let limits = tmp.join(format!("{name}-limits.toml"));
    std::fs::write(&limits, common::limits_toml()).unwrap();
    common::serve_sim(
        bin,
        sim.to_str().unwrap(),
        &[],
        &[
            "--config",
            limits.to_str().unwrap(),
            "--sim-quote-delay-ms",
            &delay,
        ],
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time so far of each thread of `pid` (ns, from schedstat), by thread id.
fn cpu_ns(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        if let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        {
            out.insert(tid, ns);
        }
    }
    out
}

/// CPU time spent between two snapshots, over the threads alive in both (an idle blocking
/// thread that exits in between did no work in the round).
fn cpu_between(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> Duration {
    let ns: u64 = after
        .iter()
        .filter_map(|(tid, a)| Some(a.saturating_sub(*before.get(tid)?)))
        .sum();
    Duration::from_nanos(ns)
}

/// One round against one server: wall time and the server's CPU time.
async fn round(
    pid: u32,
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> (Duration, Duration) {
    let before = cpu_ns(pid);
    let wall = handshakes(addr, PER_ROUND, cfg).await;
    (wall, cpu_between(&before, &cpu_ns(pid)))
}

fn spread(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    // The middle half: robust to the odd slow round on a shared machine.
    (v[v.len() / 4], v[v.len() * 3 / 4])
}

fn main() {
    if let Ok(padding) = std::env::var(PLAIN_SERVER_ENV) {
        plain_server_main(padding.parse().unwrap_or(0));
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let bin = common::release_bin();
    let tmp = tempfile::tempdir().unwrap();

    // 1. Handshakes.
    let (agent, agent_addr) = serve(&bin, tmp.path(), "sim-handshakes", 0);
    let cfg = client_config(b"http/1.1");
    let agent_cert = served_cert_len(agent_addr, cfg.clone()).await;
    let plain_server = |padding: usize| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(PLAIN_SERVER_ENV, padding.to_string());
        spawn_listening(cmd, "the plain rustls server")
    };
    let (plain, plain_addr) = plain_server(0);
    // Padding to the agent's size, less the plain certificate's own ~350 bytes.
    let (padded, padded_addr) = plain_server(agent_cert.saturating_sub(360));
    let servers = [
        (agent.0.id(), agent_addr),
        (plain.0.id(), plain_addr),
        (padded.0.id(), padded_addr),
    ];
    for (_, addr) in servers {
        handshakes(addr, 100, cfg.clone()).await;
    }
    // Per server: wall-clock rates and CPU microseconds per handshake, one entry per round.
    let mut rate = [Vec::new(), Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..ROUNDS {
        // Rotate which server goes first, so drift in the machine's load hits all alike.
        for k in 0..servers.len() {
            let s = (i + k) % servers.len();
            let (wall, used) = round(servers[s].0, servers[s].1, cfg.clone()).await;
            rate[s].push(PER_ROUND as f64 / wall.as_secs_f64());
            cpu[s].push(used.as_secs_f64() * 1e6 / PER_ROUND as f64);
        }
    }
    let certs = [
        agent_cert,
        served_cert_len(plain_addr, cfg.clone()).await,
        served_cert_len(padded_addr, cfg.clone()).await,
    ];
    drop((plain, padded));
    println!(
        "full TLS handshakes (TLS 1.3, no resumption, P-256, one client connecting sequentially), \
         {ROUNDS} rounds x {PER_ROUND}, servers interleaved, each in its own process:"
    );
    let names = [
        "tdx-agent serve",
        "plain rustls server",
        "plain rustls, padded cert",
    ];
    for s in 0..servers.len() {
        println!(
            "  {:<26} certificate {:>5} bytes: {:>6.0} /s, server CPU {:>4.0} us/handshake (medians)",
            names[s],
            certs[s],
            median(&rate[s]),
            median(&cpu[s])
        );
    }
    // Per round, so slow patches of the machine cancel out.
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
    let show = |what: &str, r: Vec<f64>| {
        let (lo, hi) = spread(&r);
        println!(
            "  {what}: median {:.3} (middle half {lo:.3}..{hi:.3})",
            median(&r)
        );
    };
    show(
        "ratio serve / plain, wall-clock rate (target >= 0.9)",
        ratio(&rate[0], &rate[1]),
    );
    // CPU per handshake, inverted: handshakes per CPU-second of the server.
    show(
        "ratio serve / plain, handshakes per server CPU-second",
        ratio(&cpu[1], &cpu[0]),
    );
    show(
        "ratio serve / plain with a certificate of the same size, wall-clock rate",
        ratio(&rate[0], &rate[2]),
    );
    show(
        "ratio serve / plain with a certificate of the same size, per server CPU-second",
        ratio(&cpu[2], &cpu[0]),
    );

    // 3. Idle RSS (after the handshakes above, then a quiet moment).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(agent.0.id());
    println!(
        "idle RSS of serve: {:.1} MiB (target < 30 MiB)",
        rss as f64 / 1024.0
    );
    drop(agent);

    // 2. Challenges with a 1 s quote delay.
    challenges(&bin, tmp.path()).await;
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

async fn get(client: &Client, port: u16, path: &str) -> String {
    use http_body_util::BodyExt as _;
    let req = hyper::Request::get(format!("https://localhost:{port}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    match client.request(req).await {
        Ok(r) => r
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default(),
        Err(e) => format!("GET {path}: {e}"),
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn challenges(bin: &str, tmp: &std::path::Path) {
    let (agent, addr) = serve(bin, tmp, "sim-challenges", 1000);
    let port = addr.port();
    // Ten HTTP/2 connections: the server allows 256 streams per connection.
    let clients: Vec<Client> = (0..10)
        .map(|_| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*client_config_no_alpn()).clone())
                .https_only()
                .enable_http2()
                .build();
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build(connector)
        })
        .collect();
    // Connect first: the challengers are concurrent clients already talking to the agent, so
    // what is timed is the challenge phase, not TLS handshakes.
    for c in &clients {
        get(c, port, "/livez").await;
    }
    let before = get(&clients[0], port, "/metrics").await;
    // The request bodies are made before the clock starts.
    let bodies: Vec<bytes::Bytes> = (0..CHALLENGERS)
        .map(|i| {
            let nonce = tdx_core::encoding::b64(&(i as u32).to_be_bytes());
            bytes::Bytes::from(format!("{{\"nonce\":\"{nonce}\"}}"))
        })
        .collect();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let client = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            use http_body_util::BodyExt as _;
            let req =
                hyper::Request::post(format!("https://localhost:{port}/attestation/v1/challenge"))
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(body))
                    .unwrap();
            let ok = match client.request(req).await {
                Ok(r) if r.status().is_success() => r.into_body().collect().await.is_ok(),
                _ => false,
            };
            (ok, t.elapsed())
        }));
    }
    let mut ok = 0;
    let mut done = Vec::new();
    for task in tasks {
        if let Ok((answered, at)) = task.await {
            ok += usize::from(answered);
            done.push(at);
        }
    }
    let elapsed = t.elapsed();
    done.sort();
    let after = get(&clients[0], port, "/metrics").await;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    let quotes = delta("tdx_agent_quotes_total{purpose=\"challenge\"}");
    let batches = delta("tdx_agent_challenge_batch_size_count");
    let leaves = delta("tdx_agent_challenge_batch_size_sum");
    println!(
        "challenges: {ok}/{CHALLENGERS} answered in {:.2} s = {:.0} /s with a 1 s quote delay on already-open \
         connections (target >= 1000 /s)",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64()
    );
    if !done.is_empty() {
        let at = |q: usize| done[(done.len() - 1) * q / 100].as_secs_f64();
        println!(
            "  answers arrived at {:.3} s (first), {:.3} s (median), {:.3} s (last); \
             {quotes} challenge quotes, {batches} batches, {leaves} leaves",
            at(0),
            at(50),
            at(100)
        );
    }
    drop(agent);
}
