//! Third-party clients against the real daemon: Python `grpcio` for `tdx_agent.v1.Attestation`,
//! `grpcio-health-checking` for `grpc.health.v1.Health`, and Python's `ssl`/`urllib` for
//! `/readyz`, all over the one RA-TLS listener of `serve --tee sim` (docs/design.md §8, §11).
//!
//! The Python venv comes from scripts/python-env.sh (cached). If it cannot be built the tests
//! fail, never skip: CI installs what it needs through scripts/setup.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use support::{Run, bin, grpc_client as client, tdx_agent};

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{r}"))
}

/// A running `serve --tee sim`, killed on drop.
struct Agent {
    child: Child,
    /// The "tdx-agent listening on ADDR" line, when it comes.
    listening: Receiver<String>,
    log: PathBuf,
    /// The simulated TD's quote-hang switch (DIR/quote-hang).
    quote_hang: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Agent {
    fn start(listen: &str, extra: &[&str]) -> Agent {
        Agent::start_with(listen, extra, false)
    }

    /// With `quotes_hang`, the simulated TD's quotes hang from the start (until the test
    /// removes [`Agent::quote_hang`]), so the agent stays in its startup, before its first
    /// certificate and its listener, for as long as the test wants.
    fn start_with(listen: &str, extra: &[&str], quotes_hang: bool) -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        let sim_dir = tmp.path().join("sim");
        let sim = sim_dir.to_str().unwrap();
        let r = tdx_agent(&["sim", "pki", "--sim-dir", sim]);
        assert_eq!(r.code, 0, "sim pki: {r}");
        let quote_hang = sim_dir.join(tdx_sim::QUOTE_HANG);
        let config = tmp.path().join("agent.toml");
        if quotes_hang {
            std::fs::write(&quote_hang, b"").unwrap();
            // The longest quote timeout, so a slow test holding the gate cannot make the
            // startup fail on a timeout instead.
            std::fs::write(&config, "[tee]\nquote_timeout_secs = 600\n").unwrap();
        }
        let config_args: Vec<&std::ffi::OsStr> = if quotes_hang {
            vec!["--config".as_ref(), config.as_os_str()]
        } else {
            Vec::new()
        };
        let audit = tmp.path().join("audit");
        let state = tmp.path().join("state");
        let log = tmp.path().join("agent.log");
        let mut child = support::command()
            .args([
                "serve",
                "--tee",
                "sim",
                "--sim-dir",
                sim,
                "--listen",
                listen,
            ])
            .arg("--audit-dir")
            .arg(&audit)
            .arg("--state-dir")
            .arg(&state)
            .args(config_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            listening: rx,
            log,
            quote_hang,
            _tmp: tmp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the listening line and returns the bound address.
    fn addr(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.listening.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("tdx-agent listening on ") {
                        return addr.trim().to_string();
                    }
                }
                Err(e) => {
                    let status = self.child.try_wait();
                    panic!(
                        "no listening line ({e}); agent {status:?}\n--- agent log\n{}",
                        self.log()
                    );
                }
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_serving(r: &Run, agent: &Agent) {
    assert_eq!(r.code, 0, "health: {r}\n--- agent log\n{}", agent.log());
    let v = json(r);
    assert_eq!(v["statuses"][""], "SERVING", "{r}");
    assert_eq!(v["statuses"]["tdx_agent.v1.Attestation"], "SERVING", "{r}");
}

#[test]
fn python_grpc_clients_get_evidence_health_and_errors() {
    let mut agent = Agent::start("127.0.0.1:0", &[]);
    let addr = agent.addr();

    // GetEvidence with a nonce, GetMeasurements and Verify, as grpcio + cryptography see them.
    let ev = client(&addr, "evidence");
    assert_eq!(ev.code, 0, "evidence: {ev}\n--- agent log\n{}", agent.log());
    let v = json(&ev);
    assert_eq!(v["ok"], true, "{ev}");
    let exts: Vec<&str> = v["certificate_extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(exts.contains(&"2.23.133.5.4.9"), "{ev}");
    assert_eq!(v["certificate_is_served_certificate"], true, "{ev}");
    assert_eq!(v["collateral_fields"].as_array().unwrap().len(), 9, "{ev}");
    assert!(v["proof"]["tree_size"].as_u64().unwrap() >= 1, "{ev}");
    assert_eq!(v["audit_chain_head"].as_str().unwrap().len(), 64, "{ev}");
    assert_eq!(v["measurements"]["tee"], "simulated", "{ev}");
    assert_eq!(
        v["measurements"]["mrtd"].as_str().unwrap().len(),
        96,
        "{ev}"
    );
    assert_eq!(v["measurements"]["rtmrs"], 4, "{ev}");
    assert_eq!(v["verify"]["accepted"], true, "{ev}");
    assert_eq!(v["verify"]["tcb_status"], "UpToDate", "{ev}");

    // grpc.health.v1 for the whole server and for our service.
    assert_serving(&client(&addr, "health"), &agent);

    // A 65-byte nonce is the caller's error.
    let bad = client(&addr, "bad");
    assert_eq!(bad.code, 0, "bad: {bad}\n--- agent log\n{}", agent.log());
    assert_eq!(json(&bad)["code"], "INVALID_ARGUMENT", "{bad}");
    assert_eq!(json(&bad)["unknown_method"], "UNIMPLEMENTED", "{bad}");
}

#[test]
fn health_is_serving_only_once_ready() {
    // The port is bound only after the first certificate, whose quote hangs until the test
    // lets it go: a probe before then must find nothing, never SERVING. (The address is
    // fixed in advance so the early probe knows where the agent will listen.)
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = Agent::start_with(&addr, &[], true);
    // The agent is up and in its startup, waiting for the first quote.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent.log().contains("quote hangs while the switch exists") {
        assert!(
            Instant::now() < deadline,
            "the agent never reached its first quote; agent {:?}\n--- agent log\n{}",
            agent.child.try_wait(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let early = client(&addr, "health");
    // Holds by construction (the listening line comes after the first certificate, whose
    // quote still hangs); checked so the probe below is known to be an early one.
    assert!(
        agent.listening.try_recv().is_err(),
        "the agent was listening while its first quote hung (probe: {early})"
    );
    assert_eq!(
        early.code, 3,
        "a probe before the listener exists must fail to connect: {early}"
    );
    assert!(!early.stdout.contains("SERVING"), "{early}");

    std::fs::remove_file(&agent.quote_hang).unwrap();
    assert_eq!(agent.addr(), addr);
    // /readyz (HTTPS on the same listener) turns 200; from then on health says SERVING.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client(&addr, "readyz");
        if r.code == 0 {
            let v = json(&r);
            assert_eq!(v["status"], 200, "{r}");
            assert_eq!(v["body"]["ready"], true, "{r}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never turned 200: {r}\n--- agent log\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_serving(&client(&addr, "health"), &agent);
}
