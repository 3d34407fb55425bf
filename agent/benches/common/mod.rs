//! What the benches share: a client certificate verifier that accepts anything, child
//! processes that announce their address, sequential full handshakes, medians.
// Each bench uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any certificate (nginx's self-signed one, the plain servers', the agent's): the
/// benches measure the servers, not the client's verification (which the RA-TLS verifier
/// caches anyway).
#[derive(Debug)]
pub struct AcceptAny(pub Arc<rustls::crypto::CryptoProvider>);

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

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn client_config_no_alpn() -> Arc<rustls::ClientConfig> {
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

/// `n` sequential full handshakes; the wall time.
pub async fn handshakes(
    addr: std::net::SocketAddr,
    n: usize,
    cfg: Arc<rustls::ClientConfig>,
) -> Duration {
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let t = Instant::now();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        drop(tls);
    }
    t.elapsed()
}

/// Start a child that prints `... ADDR` as its first line; its stderr goes to a file that is
/// shown if it does not start.
pub fn spawn_listening(mut cmd: Command, what: &str) -> (Proc, std::net::SocketAddr) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line.trim().rsplit(' ').next().and_then(|a| a.parse().ok()) else {
        let mut err = String::new();
        let _ = log.reopen().unwrap().read_to_string(&mut err);
        panic!("{what} did not start: {line:?}\n{err}");
    };
    (Proc(child), addr)
}

pub fn median<T: PartialOrd + Copy>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// The release binary the benches drive: TDX_AGENT_BIN (scripts/bench.sh sets it), else
/// target/release/tdx-agent.
pub fn release_bin() -> String {
    let bin = std::env::var("TDX_AGENT_BIN")
        .unwrap_or_else(|_| format!("{}/../target/release/tdx-agent", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} missing: run scripts/bench.sh"
    );
    bin
}

/// `sim pki --sim-dir SIM PKI_ARGS...` then `serve --tee sim --sim-dir SIM --listen
/// 127.0.0.1:0 SERVE_ARGS...`, on a fresh simulated TD each time (a second agent with another
/// configuration in the same simulated boot would be refused: RTMR3 already holds the first).
pub fn serve_sim(
    bin: &str,
    sim: &str,
    pki_args: &[&str],
    serve_args: &[&str],
) -> (Proc, std::net::SocketAddr) {
    let ok = Command::new(bin)
        .args(["sim", "pki", "--sim-dir", sim])
        .args(pki_args)
        .output()
        .unwrap();
    assert!(ok.status.success(), "sim pki: {ok:?}");
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--tee", "sim", "--sim-dir", sim])
        .args(["--listen", "127.0.0.1:0"])
        .args(serve_args);
    spawn_listening(cmd, "tdx-agent serve")
}

/// TDX_AGENT_BENCH_CONN_THREADS: the agent's `[limits] connection_threads` and the baseline's
/// workers alike (absent or 0: one per core each), e.g. 16 on a smaller machine, the closest
/// it can come to a 16-core one's thread counts.
pub fn conn_threads() -> Option<usize> {
    std::env::var("TDX_AGENT_BENCH_CONN_THREADS")
        .ok()?
        .parse()
        .ok()
        .filter(|n| *n > 0)
}

/// The `[limits]` of the benched agent's `--config`: TDX_AGENT_BENCH_CONN_THREADS, and
/// TDX_AGENT_BENCH_YIELD (`0` sets `yield_before_sleep = false`; absent: the agent's default).
pub fn limits_toml() -> String {
    let mut toml = String::from("[limits]\n");
    if let Some(n) = conn_threads() {
        toml.push_str(&format!("connection_threads = {n}\n"));
    }
    if std::env::var("TDX_AGENT_BENCH_YIELD").is_ok_and(|v| v == "0") {
        toml.push_str("yield_before_sleep = false\n");
    }
    toml
}
