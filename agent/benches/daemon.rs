//! The daemon under load, against baselines measured in the same run:
//! - full TLS handshakes per second against `tdx-agent serve` vs a plain rustls server with
//!   the same key type (P-256), interleaved rounds, ratio printed (target >= 0.9);
//! - fresh challenges per second with 2,000 concurrent challengers and a 1 s quote delay
//!   (target >= 1,000/s), and how many quotes that took;
//! - the idle resident memory of `serve` (target < 30 MiB).
//!
//! Needs the release binary: run through scripts/bench.sh, which builds it and sets
//! TDX_AGENT_BIN.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 100;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Accepts any certificate: the bench measures the servers' handshake cost, not the
/// client's verification (which the RA-TLS verifier caches anyway).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut c = (*client_config_no_alpn()).clone();
    c.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(c)
}

fn client_config_no_alpn() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    // No session resumption: every handshake is a full one.
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

async fn handshakes(
    addr: std::net::SocketAddr,
    n: usize,
    cfg: Arc<rustls::ClientConfig>,
) -> Duration {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let t = Instant::now();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        drop(tls);
    }
    t.elapsed()
}

/// A plain rustls server with a P-256 self-signed certificate: the baseline.
async fn plain_server() -> std::net::SocketAddr {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
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
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(s).await;
            });
        }
    });
    addr
}

fn serve(bin: &str, sim: &str, delay_ms: u64) -> (Proc, std::net::SocketAddr) {
    let mut child = Command::new(bin)
        .args([
            "serve",
            "--tee",
            "sim",
            "--sim-dir",
            sim,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--sim-quote-delay-ms", &delay_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    (Proc(child), addr)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let bin = std::env::var("TDX_AGENT_BIN")
        .unwrap_or_else(|_| format!("{}/../target/release/tdx-agent", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} missing: run scripts/bench.sh"
    );
    let tmp = tempfile::tempdir().unwrap();
    let sim = tmp.path().to_str().unwrap().to_string();
    let ok = Command::new(&bin)
        .args(["sim", "pki", "--sim-dir", &sim])
        .output()
        .unwrap();
    assert!(ok.status.success());

    // 1. Handshakes.
    let (agent, agent_addr) = serve(&bin, &sim, 0);
    let plain_addr = plain_server().await;
    let cfg = client_config(b"http/1.1");
    handshakes(agent_addr, 20, cfg.clone()).await;
    handshakes(plain_addr, 20, cfg.clone()).await;
    let (mut a, mut p) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(handshakes(agent_addr, PER_ROUND, cfg.clone()).await);
        p.push(handshakes(plain_addr, PER_ROUND, cfg.clone()).await);
    }
    a.sort();
    p.sort();
    let rate = |d: Duration| PER_ROUND as f64 / d.as_secs_f64();
    let (ra, rp) = (rate(a[ROUNDS / 2]), rate(p[ROUNDS / 2]));
    println!(
        "full TLS handshakes (no resumption, P-256), median of {ROUNDS} rounds x {PER_ROUND}:"
    );
    println!("  plain rustls server: {rp:>8.0} /s");
    println!("  tdx-agent serve:     {ra:>8.0} /s");
    println!("  ratio serve / plain: {:.3} (target >= 0.9)", ra / rp);

    // 3. Idle RSS (after the handshakes above, then a quiet moment).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(agent.0.id());
    println!(
        "idle RSS of serve: {:.1} MiB (target < 30 MiB)",
        rss as f64 / 1024.0
    );
    drop(agent);

    // 2. Challenges with a 1 s quote delay.
    let (agent, addr) = serve(&bin, &sim, 1000);
    // Ten HTTP/2 connections: the server allows 256 streams per connection.
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*client_config_no_alpn()).clone())
                .https_only()
                .enable_http2()
                .build();
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build::<_, http_body_util::Full<bytes::Bytes>>(connector)
        })
        .collect();
    // Connect first: the challengers are concurrent clients already talking to the agent.
    for c in &clients {
        let req = hyper::Request::get(format!("https://localhost:{}/livez", addr.port()))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let _ = c.request(req).await;
    }
    let n = 2000;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(async move {
            let nonce = tdx_agent::encoding::b64(&(i as u32).to_be_bytes());
            let req = hyper::Request::post(format!(
                "https://localhost:{}/attestation/v1/challenge",
                addr.port()
            ))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "{{\"nonce\":\"{nonce}\"}}"
            ))))
            .unwrap();
            let resp = client.request(req).await;
            matches!(resp, Ok(r) if r.status().is_success())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    let elapsed = t.elapsed();
    let metrics = Command::new("curl")
        .args(["-sk", &format!("https://{addr}/metrics")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let quotes = metrics
        .lines()
        .find(|l| l.starts_with("tdx_agent_quotes_total{purpose=\"challenge\"}"))
        .unwrap_or("(curl unavailable)");
    println!(
        "challenges: {ok}/{n} answered in {:.2} s = {:.0} /s with a 1 s quote delay (target >= 1000 /s); {quotes}",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64()
    );
    drop(agent);
}
