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
    _tmp: tempfile::TempDir,
}

impl Agent {
    fn start(listen: &str, extra: &[&str]) -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        let sim = tmp.path().join("sim");
        let sim = sim.to_str().unwrap();
        let r = tdx_agent(&["sim", "pki", "--sim-dir", sim]);
        assert_eq!(r.code, 0, "sim pki: {r}");
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
    // With a slow simulated quote the first certificate takes 1.5 s, and the port is bound
    // only after it: a probe before then must find nothing, never SERVING.
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(&addr, &["--sim-quote-delay-ms", "1500"]);
    let early = client(&addr, "health");
    // The listening line is printed before the listener serves, so if it has not come by
    // now, the probe above ran entirely before any TLS handshake could complete.
    assert!(
        agent.listening.try_recv().is_err(),
        "the agent was already listening when the early probe ended: the precondition of \
         this test did not hold (probe: {early})"
    );
    assert_eq!(
        early.code, 3,
        "a probe before the listener exists must fail to connect: {early}"
    );
    assert!(!early.stdout.contains("SERVING"), "{early}");

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
