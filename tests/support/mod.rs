//! Shared helpers for the end-to-end tests: run the real binary, find the vendored vectors.
#![allow(dead_code)]

pub mod upstream;

use std::fmt;
use std::process::Command;
use std::sync::OnceLock;

/// The outcome of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tdx-agent")
}

/// A command for the binary. Its default collateral cache (`$XDG_CACHE_HOME/tdx-agent`, used
/// by `verify` and `attest`) goes under cargo's per-build temporary directory, not the
/// user's ~/.cache: every simulated TD has new keys, so each run would add files there.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"));
    cmd
}

/// `tdx-agent admin --socket SOCKET extend --type KIND --data DATA`: a runtime event through
/// a running agent's admin socket.
pub fn admin_extend(socket: &str, kind: &str, data: &str) -> Run {
    tdx_agent(&[
        "admin", "--socket", socket, "extend", "--type", kind, "--data", data,
    ])
}

pub fn tdx_agent(args: &[&str]) -> Run {
    run(command().args(args))
}

/// Run `cmd` to completion and keep what it said.
pub fn run(cmd: &mut Command) -> Run {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", cmd.get_program()));
    Run {
        // A signal (a crash) has no code: report it as -1 so no assertion mistakes it for 0/1/2.
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tests' Python venv (scripts/python-env.sh; the package of python/ installed in it by
/// scripts/test.sh), built once per test binary (the script itself also serialises builds).
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let script = repo().join("scripts/python-env.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let hint = if std::env::var_os("CI").is_some() {
                "CI must provide the Python clients: .ci/run runs scripts/setup.sh first"
            } else {
                "run scripts/setup.sh (it installs python3-venv), then scripts/python-env.sh"
            };
            panic!(
                "scripts/python-env.sh failed ({}): {hint}\n--- its stderr\n{stderr}",
                out.status
            );
        }
        let py = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            Path::new(&py).is_file(),
            "scripts/python-env.sh printed {py:?}, not a python\n--- its stderr\n{stderr}"
        );
        py
    })
}

/// One run of tests/python/grpc_client.py (a third-party gRPC client) in `mode` against `addr`.
pub fn grpc_client(addr: &str, mode: &str) -> Run {
    let script = repo().join("tests/python/grpc_client.py");
    let out = Command::new(python())
        .arg(&script)
        .args(["--addr", addr, "--mode", mode, "--proto-dir"])
        .arg(repo().join("proto"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn vector_path(rel: &str) -> String {
    format!("{}/../tests/vectors/{rel}", env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The daemon: a simulated TD, `serve` as a child process, and an RA-TLS HTTPS client.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};

/// A simulated TD and PKI in a temporary directory (`sim pki`).
pub struct SimTd {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub root: PathBuf,
}

impl SimTd {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("sim");
        let r = tdx_agent(&["sim", "pki", "--sim-dir", dir.to_str().expect("UTF-8 path")]);
        assert_eq!(r.code, 0, "sim pki: {r}");
        let root = dir.join("root.der");
        SimTd { tmp, dir, root }
    }

    /// A simulated TD with `n` simulated GPUs (their PKI and services beside the TD's).
    pub fn with_gpus(n: u32) -> Self {
        let sim = SimTd::new();
        let r = tdx_agent(&[
            "sim",
            "pki",
            "--sim-dir",
            sim.dir_str(),
            "--gpus",
            &n.to_string(),
        ]);
        assert_eq!(r.code, 0, "{r}");
        assert!(r.stdout.contains("gpu[1]") || n == 1, "{r}");
        sim
    }

    /// `sim gpu --index I --state S`: what the simulated GPU `index` answers from now on.
    pub fn set_gpu_state(&self, index: u32, state: &str) {
        let i = index.to_string();
        let r = tdx_agent(&[
            "sim",
            "gpu",
            "--sim-dir",
            self.dir_str(),
            "--index",
            &i,
            "--state",
            state,
        ]);
        assert_eq!(r.code, 0, "{r}");
    }

    pub fn dir_str(&self) -> &str {
        self.dir.to_str().expect("UTF-8 path")
    }

    pub fn root_str(&self) -> &str {
        self.root.to_str().expect("UTF-8 path")
    }

    pub fn root_der(&self) -> Vec<u8> {
        std::fs::read(&self.root).expect("reading root.der")
    }

    /// A policy's `[measurements]` table pinning this TD's image (MRTD, RTMR0-2), as
    /// `tdx-agent measurements --toml` prints it: what `connect` requires before it forwards.
    pub fn image_pins(&self) -> String {
        self.measurements_as("--toml")
    }

    /// A policy file (`name` in this TD's directory) accepting this TD's agent as it runs
    /// here: its image pinned, and its agent-config event present.
    pub fn image_policy(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(
            &path,
            format!(
                "{}[[rtmr3_events.pin]]\ntype = \"agent-config\"\n",
                self.image_pins()
            ),
        )
        .expect("writing a policy");
        path
    }

    /// `tdx-agent measurements --json` of this TD.
    pub fn measurements(&self) -> serde_json::Value {
        serde_json::from_str(&self.measurements_as("--json")).expect("measurements JSON")
    }

    /// `tdx-agent measurements` of this TD, printed as `format` says (`--json`, `--toml`).
    fn measurements_as(&self, format: &str) -> String {
        let m = tdx_agent(&[
            "measurements",
            "--tee",
            "sim",
            "--sim-dir",
            self.dir_str(),
            format,
        ]);
        assert_eq!(m.code, 0, "{m}");
        m.stdout
    }

    /// The audit files a sim `serve` without `--config` writes (SIMDIR/audit), oldest first.
    pub fn audit_files(&self) -> Vec<PathBuf> {
        tdx_daemon::audit::list_files(&self.dir.join("audit")).expect("listing the audit dir")
    }
}

impl Default for SimTd {
    fn default() -> Self {
        Self::new()
    }
}

/// A `tdx-agent` child process that announces its listener on stdout (`PREFIX ADDR` as its
/// first line); killed (and reaped) on drop. `serve` and `connect` both run as one.
pub struct Listening {
    pub child: Child,
    /// HOST:PORT from the listening line.
    pub addr: String,
    /// When the process was spawned.
    pub spawned: Instant,
    /// What it is, for messages (`serve`, `connect`).
    what: &'static str,
    stderr_path: PathBuf,
    _stderr_dir: tempfile::TempDir,
}

/// How long a daemon may take to print its listening line (debug build, busy machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Listening {
    /// Spawn `tdx-agent ARGS` with extra environment variables (and some removed), and wait
    /// for a first stdout line `PREFIX ADDR`.
    pub fn spawn(
        what: &'static str,
        prefix: &str,
        args: &[&str],
        env: &[(&str, &str)],
        env_remove: &[&str],
    ) -> Self {
        let stderr_dir = tempfile::tempdir().expect("temporary directory");
        let stderr_path = stderr_dir.path().join(format!("{what}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("creating the stderr file");
        let mut cmd = command();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        for k in env_remove {
            cmd.env_remove(k);
        }
        let spawned = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the process never writes into a closed pipe.
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let mut proc = Listening {
            child,
            addr: String::new(),
            spawned,
            what,
            stderr_path,
            _stderr_dir: stderr_dir,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => panic!(
                "{what} printed no listening line within {START_TIMEOUT:?}\n{}",
                proc.stderr()
            ),
        };
        let Some(addr) = line.trim().strip_prefix(prefix) else {
            let status = proc.child.try_wait();
            panic!(
                "{what} did not start (status {status:?}); stdout {line:?}\n--- stderr\n{}",
                proc.stderr()
            );
        };
        proc.addr = addr.to_string();
        proc
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// None while the process runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let what = self.what;
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
    }

    /// `kill -TERM PID`.
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(st.success(), "kill -TERM {}: {st}", self.pid());
    }

    /// Poll until the process exits, or `timeout` passes (None).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.sigterm();
        self.wait_exit(timeout)
    }

    /// SIGTERM and wait for a clean exit (status 0).
    pub fn stop(&mut self) {
        let st = self.sigterm_and_wait(Duration::from_secs(20));
        assert!(
            st.is_some_and(|s| s.success()),
            "{} did not exit cleanly after SIGTERM: {st:?}\n{}",
            self.what,
            self.stderr()
        );
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tdx-agent serve` as a child process.
pub struct Daemon(Listening);

impl Daemon {
    /// `serve --tee sim --sim-dir DIR --listen 127.0.0.1:0 EXTRA...`.
    pub fn sim(sim: &SimTd, extra: &[&str]) -> Self {
        Self::sim_with_env(sim, extra, &[], &[])
    }

    /// [`Daemon::sim`] with extra environment variables (and some removed).
    pub fn sim_with_env(
        sim: &SimTd,
        extra: &[&str],
        env: &[(&str, &str)],
        env_remove: &[&str],
    ) -> Self {
        let mut args = vec![
            "serve",
            "--tee",
            "sim",
            "--sim-dir",
            sim.dir_str(),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Self::start(&args, env, env_remove)
    }

    /// Spawn `tdx-agent ARGS` with extra environment variables (and some removed), and wait
    /// for the listening line.
    pub fn start(args: &[&str], env: &[(&str, &str)], env_remove: &[&str]) -> Self {
        Daemon(Listening::spawn(
            "serve",
            "tdx-agent listening on ",
            args,
            env,
            env_remove,
        ))
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl std::ops::Deref for Daemon {
    type Target = Listening;
    fn deref(&self) -> &Listening {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Listening {
        &mut self.0
    }
}

/// An HTTP/2 connection over RA-TLS, verified against the simulated root (default policy).
#[derive(Clone)]
pub struct Https {
    pub sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    /// The certificate the server presented (DER).
    pub peer_cert: Vec<u8>,
    authority: String,
}

/// An HTTP response, body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Response headers (for gRPC: `grpc-status` of a trailers-only error response).
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// Status, headers and the whole body (at most 16 MiB) of `resp` to `method path`.
    async fn collect(
        resp: hyper::Response<hyper::body::Incoming>,
        method: &str,
        path: &str,
    ) -> Result<Resp, String> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = Limited::new(resp.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| format!("{method} {path}: body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A rustls client config that accepts only agents whose evidence verifies against `root_der`.
pub fn ratls_client_config(root_der: Vec<u8>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    use tdx_core::ratls::{CollateralSource, RaTlsVerifier, client_config};
    let verifier = RaTlsVerifier::new(
        tdx_core::verify::Verifier::with_insecure_root(root_der),
        tdx_core::verify::Policy::default(),
        CollateralSource::Stapled,
    )
    .expect("RA-TLS verifier");
    client_config(
        Arc::new(verifier),
        alpn.iter().map(|a| a.to_vec()).collect(),
    )
    .expect("client config")
}

/// TCP + RA-TLS handshake with `addr` (HOST:PORT).
pub async fn ratls_connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("RA-TLS handshake with {addr}: {e}"))
}

impl Https {
    pub async fn connect(addr: &str, root_der: Vec<u8>) -> Result<Self, String> {
        let config = Arc::new(ratls_client_config(root_der, &[b"h2"]));
        Self::connect_with(addr, config).await
    }

    pub async fn connect_with(
        addr: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        let tls = ratls_connect(addr, config).await?;
        let peer_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("no peer certificate")?;
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Https {
            sender,
            peer_cert,
            authority: addr.to_string(),
        })
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        self.request_typed(method, path, "application/json", body)
            .await
    }

    /// A request with the given content type (e.g. `application/grpc`).
    pub async fn request_typed(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<Resp, String> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let mut sender = self.sender.clone();
        sender
            .ready()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        Resp::collect(resp, method, path).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Resp {
        self.request("POST", path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// SHA-256 of the peer certificate's SubjectPublicKeyInfo.
    pub fn spki_sha256(&self) -> [u8; 32] {
        spki_sha256(&self.peer_cert)
    }
}

pub fn spki_sha256(cert_der: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .expect("peer certificate parses");
    sha2::Sha256::digest(cert.public_key().raw).into()
}

/// The value of the sample `name` (exact, labels included) in a Prometheus exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The metric families the table under the heading `section` of `doc` lists, with `prefix`
/// put before each name (the agent's table writes them without `tdx_agent_`): the row
/// `` | `appraisals_total{target}` | `` gives `PREFIXappraisals_total`.
pub fn documented_metrics(doc: &str, section: &str, prefix: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(doc)).unwrap();
    let start = text
        .find(section)
        .unwrap_or_else(|| panic!("{doc}: no section {section:?}"));
    let body = &text[start + section.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    body.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            format!("{prefix}{name}")
        })
        .collect()
}

/// Every family in `families` shows in the exposition `text`, except those in `no_series_yet`
/// (families whose series only come with an event this run does not have: prometheus-client
/// writes nothing for a family without series). A family the docs list and the code never
/// registers fails here; `no_series_yet` must itself be documented, so the list cannot rot.
pub fn assert_families_exported(text: &str, families: &[String], no_series_yet: &[&str]) {
    assert!(!families.is_empty(), "no metrics table found");
    for f in no_series_yet {
        assert!(
            families.iter().any(|d| d == f),
            "{f} is not documented: {families:?}"
        );
    }
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| !no_series_yet.contains(&f.as_str()))
        .filter(|f| {
            let base = f.strip_suffix("_total").unwrap_or(f);
            !text
                .lines()
                .any(|l| l.starts_with(&format!("# TYPE {base} ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exported: {missing:?}\n--- the exposition\n{text}"
    );
}

/// The environment under which `serve`'s listener logs why it lets each connection go
/// (debug level, no colour), for [`listener_log`].
pub const LISTENER_DEBUG_ENV: [(&str, &str); 2] = [
    (
        "TDX_AGENT_LOG",
        "warn,rustls=error,tdx_daemon::server::listener=debug",
    ),
    ("NO_COLOR", "1"),
];

/// Why the listener lets a connection go, as it logs it: a connection that sent no TLS
/// handshake, one with no complete request head, an HTTP/2 one with no request in flight, one
/// whose TD's measurements changed.
pub const TLS_TIMEOUT: &str = "TLS handshake timed out";
pub const HEAD_TIMEOUT: &str = "no complete request head within the header timeout: closing";
pub const H2_GOAWAY: &str = "HTTP/2: no request in flight within the header timeout: GOAWAY";
pub const MEASURED: &str = "measurements changed: closing the connection after its requests";

/// What the listener logged about each peer (`HOST:PORT`, the client's own address), in order,
/// from an agent's stderr under [`LISTENER_DEBUG_ENV`]. A closing connection is told apart by
/// why, not by when: a timer that fires early or late is `tdx_net::head_timer`'s unit tests'
/// business (they ask its verdict at given instants).
pub fn listener_log(stderr: &str) -> std::collections::HashMap<String, Vec<String>> {
    let mut by_peer = std::collections::HashMap::<String, Vec<String>>::new();
    for line in stderr.lines() {
        let Some((_, rest)) = line.split_once("tdx_daemon::server::listener: ") else {
            continue;
        };
        let Some((message, fields)) = rest.split_once(" peer=") else {
            continue;
        };
        let peer = fields.split_whitespace().next().unwrap_or_default();
        by_peer
            .entry(peer.to_string())
            .or_default()
            .push(message.to_string());
    }
    by_peer
}

/// Wait until the listener has logged `reasons`, in this order, for the connection from `peer`
/// (it logs before the socket closes, but the file is read from another process).
pub async fn assert_closed_for(d: &Daemon, peer: std::net::SocketAddr, reasons: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let said = listener_log(&d.stderr())
            .remove(&peer.to_string())
            .unwrap_or_default();
        let mut left = reasons.iter().peekable();
        for m in &said {
            if left.peek().is_some_and(|r| *r == m) {
                left.next();
            }
        }
        if left.peek().is_none() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never logged {reasons:?} for {peer}; for it: {said:?}\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Request heads the agent behind `c` has taken in so far (its connection threads' request
/// counter). Each call is a scrape, which counts itself too.
pub async fn heads_taken(c: &Https) -> f64 {
    metric_sum(
        &c.get("/metrics").await.text(),
        "tdx_agent_connection_thread_requests_total",
    )
}

/// Poll until the agent behind `c` has taken in one request head more than `before` (from
/// [`heads_taken`]) besides the scrapes themselves: a request sent elsewhere has reached it.
pub async fn wait_one_more_head(c: &Https, before: f64, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut scrapes = 0.0;
    loop {
        let now = heads_taken(c).await;
        scrapes += 1.0;
        if now >= before + scrapes + 1.0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never took in {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The sum over every series of a counter family (`tdx_agent_quotes_total`).
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `serve --config` file for the simulated TD `sim`, written to DIR/agent.toml with the
/// agent's state, audit log and collateral cache inside DIR: `tee_extra` lines go in `[tee]`,
/// and `after` follows the `[audit]` section (more of its lines, or further sections).
pub fn sim_config(sim: &SimTd, dir: &Path, tee_extra: &str, after: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let d = path_str(dir);
    std::fs::write(
        &path,
        format!(
            r#"listen = "127.0.0.1:0"
state_dir = "{d}/run"

[tee]
kind = "sim"
sim_dir = "{sim}"
{tee_extra}

[collateral]
cache_dir = "{d}/cache"

[audit]
dir = "{d}/audit"
{after}"#,
            sim = sim.dir_str(),
        ),
    )
    .expect("writing the config");
    path
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A `tdx-agent sim pccs` process, killed on drop.
pub struct SimPccs {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl SimPccs {
    /// Serve `sim_dir`'s PKI on `listen` (`127.0.0.1:0` for any port).
    pub fn start(sim_dir: &str, listen: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = command()
            .args(["sim", "pccs", "--sim-dir", sim_dir, "--listen", listen])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting sim pccs: {e}"));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("sim pccs prints its address");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "sim pccs said {line:?}"
        );
        SimPccs { child, url }
    }
}

impl Drop for SimPccs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// `tdx-agent connect`: the client-side proxy as a child process, and a plain HTTP client for
// its local endpoint.

/// `tdx-agent connect` as a child process.
pub struct ConnectProc(Listening);

impl ConnectProc {
    /// `tdx-agent connect URL --listen 127.0.0.1:0 EXTRA...`, waiting for the listening line.
    pub fn start(url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["connect", url, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_args(&args)
    }

    /// Spawn `tdx-agent ARGS` and wait for connect's listening line.
    pub fn start_args(args: &[&str]) -> Self {
        ConnectProc(Listening::spawn(
            "connect",
            "tdx-agent connect listening on ",
            args,
            &[("TDX_AGENT_LOG", "info")],
            &[],
        ))
    }
}

impl std::ops::Deref for ConnectProc {
    type Target = Listening;
    fn deref(&self) -> &Listening {
        &self.0
    }
}

impl std::ops::DerefMut for ConnectProc {
    fn deref_mut(&mut self) -> &mut Listening {
        &mut self.0
    }
}

/// Run `tdx-agent ARGS` to completion, killing it after `timeout` (code -1 then).
pub fn tdx_agent_within(args: &[&str], timeout: Duration) -> Run {
    let mut child = command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin()));
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collecting output");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One plain HTTP/1.1 request to `addr` (HOST:PORT) on a fresh connection.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Resp, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Resp::collect(resp, method, path).await
}

/// `GET path` over plain HTTP; panics on transport errors.
pub async fn http_get(addr: &str, path: &str) -> Resp {
    http_request(addr, "GET", path, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A free loopback port for a process to bind later (a server restarted on its port, a
/// child that takes `--listen HOST:PORT`). Taken outside the kernel's ephemeral range, which
/// `bind(…:0)` and outgoing connections draw from: a port released here cannot be handed to
/// another test's listener or client before its owner binds it. Within this process each call
/// starts further on, so parallel tests do not pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut it = r.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Up to 8192 ports below the range, above the privileged ones; if the range starts too
    // low for that, the ports above it.
    let (base, end) = if range.0 >= 2048 + 1024 {
        (range.0.saturating_sub(8192).max(2048), range.0)
    } else {
        (range.1 + 1, 65536)
    };
    assert!(
        end.saturating_sub(base) >= 1024,
        "no room outside the ephemeral port range {range:?} for test ports"
    );
    let span = end - base;
    // Another test binary may run beside this one: start somewhere its pid makes different.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(base + offset) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{base}..{end}")
}

/// This process's open-file limits (soft, hard), from /proc/self/limits.
pub fn nofile_limits() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/limits").expect("reading /proc/self/limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut n = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(u64::MAX));
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

/// Raise this process's open-file limit towards `want` (the agent we spawn inherits it; as
/// root the hard limit too) and return the soft limit in force. The crate uses no libc, so
/// util-linux `prlimit` does the setrlimit; if that is missing the limit stays and the caller
/// says so.
pub fn raise_nofile_limit(want: u64) -> u64 {
    let (soft, hard) = nofile_limits();
    if soft < want {
        let prlimit = |limits: String| {
            std::process::Command::new("prlimit")
                .args(["--pid", &std::process::id().to_string(), &limits])
                .status()
                .is_ok_and(|s| s.success())
        };
        // Root may raise the hard limit too; anyone may raise the soft one up to it.
        if !(want > hard && prlimit(format!("--nofile={want}:{want}"))) && hard > soft {
            prlimit(format!("--nofile={}:{hard}", want.min(hard)));
        }
    }
    nofile_limits().0
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `tdx-agent watch --config CONFIG`, waiting for its listening line.
pub fn spawn_watch(config: &Path) -> Listening {
    Listening::spawn(
        "watch",
        "tdx-agent watch listening on ",
        &["watch", "--config", path_str(config)],
        &[],
        &[],
    )
}
