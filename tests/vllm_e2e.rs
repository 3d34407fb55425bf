//! The whole chain with real third-party parts: real vLLM (CPU build, scripts/vllm.sh) serving
//! the tiny model, `serve` on the simulated TD fronting it with the model directory measured,
//! `connect` in front with a policy pinning the model digest, and the official `openai` Python
//! SDK as the client. Then the failures a client must see: a policy pinning another model,
//! vLLM killed mid-stream (and back), and the server's RTMR3 changing under `connect`.
//!
//! vLLM takes about 70 s to start on 2 cores and its install about 6 GiB (cached by
//! scripts/vllm.sh; `.ci/run` installs it before the tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{ConnectProc, Daemon, SimTd, admin_extend, metric_sum, tdx_agent};

fn vllm_sh(arg: &str) -> String {
    let out = Command::new(support::repo().join("scripts/vllm.sh"))
        .arg(arg)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/vllm.sh");
    assert!(out.status.success(), "scripts/vllm.sh {arg} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// vLLM in its own process group, so killing it takes its engine worker along.
struct Vllm {
    child: Child,
    port: u16,
}

impl Vllm {
    fn start(port: u16) -> Self {
        use std::os::unix::process::CommandExt as _;
        let log = std::fs::File::create(std::env::temp_dir().join(format!("vllm-{port}.log")))
            .expect("vLLM log file");
        let child = Command::new(support::repo().join("scripts/vllm.sh"))
            .args(["serve", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("starting vLLM");
        Vllm { child, port }
    }

    fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let url = format!("http://127.0.0.1:{}/health", self.port);
        loop {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &url])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "vLLM exited ({status}) before it was healthy; see {}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "vLLM not healthy within {within:?}; see {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn log(&self) -> String {
        std::env::temp_dir()
            .join(format!("vllm-{}.log", self.port))
            .display()
            .to_string()
    }

    fn kill(&mut self) {
        // `--`: without it kill(1) reads "-PGID" as a signal option and kills nothing.
        let pgid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Vllm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tdx-agent connect` in front of `server` with `policy`, on the simulated root.
fn start_connect(server: &str, policy: &str, root: &str) -> ConnectProc {
    ConnectProc::start(server, &["--policy", policy, "--insecure-root", root])
}

fn base_url(c: &ConnectProc) -> String {
    format!("http://{}/v1", c.addr)
}

fn openai(python: &str, base_url: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(python)
        .arg(support::repo().join("tests/python/openai_chain.py"))
        .arg(base_url)
        .args(extra)
        .output()
        .expect("running the openai client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let v = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "openai client printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn curl_json(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

fn wait_readyz(agent: &str, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = curl_json(&format!("https://{agent}/readyz"));
        if code == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {code} ({body}), wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Model requests that reached vLLM: every outcome but the agent's own refusals (`*-agent`).
fn upstream_requests(agent: &str) -> f64 {
    let (_, text) = curl_json(&format!("https://{agent}/metrics"));
    text.lines()
        .filter(|l| l.starts_with("tdx_agent_model_requests_total{") && !l.contains("-agent\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn model_requests(agent: &str) -> f64 {
    let (_, text) = curl_json(&format!("https://{agent}/metrics"));
    metric_sum(&text, "tdx_agent_model_requests_total")
}

/// A policy pinning `sim`'s image (MRTD, RTMR0-2), the agent's configuration and the model
/// whose manifest digest is `manifest`.
fn policy(dir: &Path, sim: &SimTd, name: &str, manifest: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "{}[[rtmr3_events.pin]]\ntype = \"model\"\nallowed = [{{ manifest_sha256 = \"{manifest}\" }}]\n\
             [[rtmr3_events.pin]]\ntype = \"agent-config\"\n",
            sim.image_pins()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn openai_sdk_through_connect_and_serve_to_real_vllm() {
    let python = vllm_sh("python");
    let model = vllm_sh("model");
    let sim = SimTd::new();
    let tmp = tempfile::tempdir().unwrap();

    let m = tdx_agent(&["measure-model", &model, "--json"]);
    assert_eq!(m.code, 0, "{m}");
    let manifest = serde_json::from_str::<serde_json::Value>(&m.stdout).unwrap()["manifest_sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let port = support::free_port();
    let mut vllm = Vllm::start(port);
    let upstream = format!("http://127.0.0.1:{port}");
    let agent = Daemon::sim(&sim, &["--upstream", &upstream, "--model-dir", &model]);
    vllm.wait_healthy(Duration::from_secs(600));
    wait_readyz(&agent.addr, 200, Duration::from_secs(30));

    // The happy path: models.list, chat, streamed chat (several chunks), completion.
    let good = policy(tmp.path(), &sim, "good.toml", &manifest);
    let connect = start_connect(&agent.url(), &good, sim.root_str());
    let (code, v) = openai(&python, &base_url(&connect), &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["models"], serde_json::json!(["tiny"]));
    assert!(v["stream_chunks"].as_u64().unwrap() > 1, "{v}");
    assert!(v["completion"]["id"].is_string(), "{v}");

    // The same SDK in process through the Python package's verified transport (no connect):
    // the happy path, then a policy pinning another model raises before anything is sent.
    let bad = policy(tmp.path(), &sim, "bad.toml", &"00".repeat(32));
    let before = model_requests(&agent.addr);
    let r = support::run(
        Command::new(support::python())
            .arg(support::repo().join("tests/python/openai_inprocess.py"))
            .args([&agent.url(), sim.root_str(), &good, &bad]),
    );
    assert_eq!(r.code, 0, "{r}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["models"], serde_json::json!(["tiny"]), "{v}");
    assert!(v["stream_chunks"].as_u64().unwrap() > 1, "{v}");
    assert!(v["completion_id"].is_string(), "{v}");
    assert_eq!(v["refused_check"], "RTMR3 event \"model\"", "{v}");
    // models.list, chat, streamed chat, completion; the refused request is not among them.
    assert_eq!(model_requests(&agent.addr), before + 4.0, "{v}");

    // Paths that leave /v1/ once decoded and normalized are refused by the agent (400) and
    // never reach vLLM (curl --path-as-is: curl would otherwise normalize them itself).
    let reached = upstream_requests(&agent.addr);
    for path in ["/v1/../metrics", "/v1/%2e%2e/metrics", "/v1/..%2fmetrics"] {
        let out = Command::new("curl")
            .args([
                "-sk",
                "--path-as-is",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("https://{}{path}", agent.addr))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "400", "{path}");
    }
    assert_eq!(
        upstream_requests(&agent.addr),
        reached,
        "a refused path reached vLLM"
    );

    // A policy pinning another model: connect refuses, the SDK sees the check, and nothing
    // reached the model server.
    let bad = policy(tmp.path(), &sim, "bad.toml", &"00".repeat(32));
    let refusing = start_connect(&agent.url(), &bad, sim.root_str());
    let before = model_requests(&agent.addr);
    let (code, v) = openai(&python, &base_url(&refusing), &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["error"]["status"], 502, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RTMR3 event \"model\""),
        "{v}"
    );
    assert_eq!(model_requests(&agent.addr), before, "a request got through");
    drop(refusing);

    // vLLM dies mid-stream: the client's stream ends with an error, the agent stays up and
    // says the upstream is down, and everything recovers once vLLM is back.
    let mut client = Command::new(&python)
        .arg(support::repo().join("tests/python/openai_chain.py"))
        .args([&base_url(&connect), "--stream-until-error"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("first-chunk"), "{line}");
    vllm.kill();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(client.wait().unwrap().code() == Some(1), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(
        v["error"]["type"].is_string(),
        "the stream ended cleanly: {v}"
    );
    let body = wait_readyz(&agent.addr, 503, Duration::from_secs(15));
    // Which stage and what failed; the model server's address stays in the agent's log.
    assert!(
        body.contains("upstream_healthy")
            && body.contains("does not answer its health check")
            && !body.contains(&upstream[7..]),
        "{body}"
    );
    let (code, _) = curl_json(&format!("https://{}/livez", agent.addr));
    assert_eq!(code, 200);
    let mut vllm = Vllm::start(port);
    vllm.wait_healthy(Duration::from_secs(600));
    wait_readyz(&agent.addr, 200, Duration::from_secs(30));
    let (code, v) = openai(&python, &base_url(&connect), &[]);
    assert_eq!(code, 0, "{v}");

    // RTMR3 changes on the server (another model event) and its certificate is re-issued:
    // the next request through connect fails against the old policy.
    let socket = format!("{}/run/admin.sock", sim.dir_str());
    let r = admin_extend(&socket, "model", r#"{"manifest_sha256":"ffff"}"#);
    assert_eq!(r.code, 0, "{r}");
    let before = model_requests(&agent.addr);
    let (code, v) = openai(&python, &base_url(&connect), &[]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RTMR3 event \"model\""),
        "{v}"
    );
    assert_eq!(model_requests(&agent.addr), before, "a request got through");
    drop(vllm);
}
