//! The daemon's life through real processes: the admin socket and the RTMR3 event log, PCCS,
//! quote-provider, GPU and model-server faults, what /readyz and the model routes tell
//! callers about them (the stage and what to check, never the internal error), and systemd's
//! READY=1 when start-up ends with a stage missing. (systemd's protocol itself, probes,
//! challenges and the audit chain are in tests/daemon.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::io::{BufRead as _, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::upstream::{Upstream, agent_fronting_url};
use support::{SimTd, admin_extend, path_str, tdx_agent};
use tdx_core::measure::rtmr3_log::{Event, LogLine, replay};

struct Agent {
    child: Child,
    addr: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &str, extra: &[&str]) -> Result<Agent, String> {
    let mut child = support::command()
        .args([
            "serve",
            "--tee",
            "sim",
            "--sim-dir",
            dir,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.is_empty() {
        let out = child.wait_with_output().unwrap();
        return Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    Ok(Agent { child, addr })
}

fn attest_rtmr3(addr: &str, root: &str) -> String {
    let r = tdx_agent(&[
        "attest",
        &format!("https://{addr}"),
        "--insecure-root",
        root,
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["measurements"]["rtmr3"].as_str().unwrap().to_string()
}

fn log_lines(path: &std::path::Path) -> Vec<LogLine> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn extend_is_logged_applied_and_attested_and_edits_are_refused() {
    let sim = SimTd::new();
    let (d, root) = (sim.dir_str().to_string(), sim.root_str().to_string());
    let socket = format!("{d}/run/admin.sock");
    let log = sim.dir.join("run/rtmr3-events.jsonl");

    let agent = start(&d, &[]).unwrap();
    // Before reporting ready the agent measured its own configuration, and nothing else
    // (no model directory, no command line configured).
    let boot = log_lines(&log);
    assert_eq!(boot.len(), 1);
    assert_eq!(boot[0].event.kind, "agent-config");
    let boot_rtmr3 = hex::encode(replay([&boot[0].event.digest().unwrap()]));
    assert_eq!(attest_rtmr3(&agent.addr, &root), boot_rtmr3);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    for (kind, data) in [
        ("model", r#"{"digest":"ab12","name":"tiny"}"#),
        ("cmdline", r#"{"argv":["vllm","serve"]}"#),
    ] {
        let r = admin_extend(&socket, kind, data);
        assert_eq!(r.code, 0, "{r}");
    }
    // The log replays to the live register, and new handshakes carry it.
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 3);
    let digests: Vec<[u8; 48]> = lines.iter().map(|l| l.event.digest().unwrap()).collect();
    let expected = hex::encode(replay(digests.iter()));
    assert_eq!(attest_rtmr3(&agent.addr, &root), expected);
    assert_eq!(sim.measurements()["rtmr3"], expected);

    // Malformed requests are refused without touching anything.
    let r = tdx_agent(&[
        "admin", "--socket", &socket, "extend", "--type", "x", "--data", "[1.5]",
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert_eq!(log_lines(&log).len(), 3);

    // A restart in the same boot replays the log and does not extend again.
    drop(agent);
    let agent = start(&d, &[]).unwrap();
    assert_eq!(attest_rtmr3(&agent.addr, &root), expected);
    drop(agent);

    // Edited consistently (event and digest): the log no longer explains RTMR3, so the
    // agent refuses to serve, says why, and leaves a record in the audit log.
    let mut lines = log_lines(&log);
    lines[1].event = Event {
        kind: "model".into(),
        data: serde_json::json!({"digest": "ffff", "name": "other"}),
    };
    lines[1].digest = hex::encode(lines[1].event.digest().unwrap());
    let header = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let body: String = lines
        .iter()
        .map(|l| serde_json::to_string(l).unwrap() + "\n")
        .collect();
    std::fs::write(&log, format!("{header}\n{body}")).unwrap();
    let err = start(&d, &[])
        .err()
        .expect("the agent must refuse a log that does not explain RTMR3");
    assert!(
        err.contains("replays to") && err.contains("refusing to serve"),
        "{err}"
    );
    let audit: String = std::fs::read_dir(sim.dir.join("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(audit.contains("startup_measurement_refused"), "{audit}");

    // Edited inconsistently (digest no longer that of the event): refuses to start.
    let text = std::fs::read_to_string(&log)
        .unwrap()
        .replace("other", "third");
    std::fs::write(&log, text).unwrap();
    let err = start(&d, &[])
        .err()
        .expect("the agent must refuse an edited log");
    assert!(err.contains("rtmr3-events.jsonl"), "{err}");

    // `sim reset` is a reboot: registers and the log start over.
    assert_eq!(tdx_agent(&["sim", "reset", "--sim-dir", &d]).code, 0);
    let agent = start(&d, &[]).unwrap();
    // The same configuration measures to the same RTMR3 in the new boot.
    assert_eq!(log_lines(&log).len(), 1);
    assert_eq!(attest_rtmr3(&agent.addr, &root), boot_rtmr3);
}

fn readyz(addr: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sk", &format!("https://{addr}/readyz")])
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn stage_ok(v: &serde_json::Value, stage: &str) -> Option<bool> {
    v["stages"]
        .as_array()?
        .iter()
        .find(|s| s["stage"] == stage)
        .and_then(|s| s["ok"].as_bool())
}

/// PCCS unreachable: the cached collateral serves until its nextUpdate, then the agent is
/// not ready (naming the stage); when the PCCS is back, it recovers.
#[test]
fn pccs_outage_degrades_only_after_next_update_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap().to_string();
    // Long enough that the read just after the PCCS goes cannot meet the expiry (it can only
    // come 20 s after the agent's last fetch), short enough to wait out below.
    assert_eq!(
        tdx_agent(&["sim", "pki", "--sim-dir", &d, "--collateral-lifetime", "20"]).code,
        0
    );
    // A fixed port so the PCCS can come back at the same address.
    let listen = format!("127.0.0.1:{}", support::free_port());
    let pccs = support::SimPccs::start(&d, &listen);
    let pccs_url = format!("http://{listen}");
    let agent = start(&d, &["--pccs", &pccs_url]).unwrap();
    assert_eq!(
        stage_ok(&readyz(&agent.addr), "collateral_fresh"),
        Some(true)
    );
    drop(pccs);

    // Losing the PCCS alone changes nothing: the cached collateral is still valid.
    let v = readyz(&agent.addr);
    assert_eq!(stage_ok(&v, "collateral_fresh"), Some(true), "{v}");
    assert_eq!(v["ready"], true, "{v}");
    // Then, once its nextUpdate has passed, not ready, naming the stage.
    let deadline = Instant::now() + Duration::from_secs(90);
    let v = loop {
        let v = readyz(&agent.addr);
        if stage_ok(&v, "collateral_fresh") == Some(false) || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(stage_ok(&v, "collateral_fresh"), Some(false), "{v}");
    // Only after the nextUpdate it names: read from the same clock after the agent said so.
    let detail = stage_detail(&v, "collateral_fresh");
    let expired_at = detail
        .strip_prefix("collateral expired at ")
        .and_then(|rest| rest.split_once(" and none could be fetched"))
        .map(|(at, _)| tdx_core::verify::time::parse_rfc3339(at).unwrap())
        .unwrap_or_else(|| panic!("{detail}"));
    assert!(
        tdx_core::verify::time::now_unix() >= expired_at,
        "declared stale before its nextUpdate: {detail}"
    );
    // What to check, not the fetch's error: the PCCS's address stays in the agent's log.
    assert!(
        detail.contains("collateral.pccs_url") && !detail.contains(&listen),
        "{detail}"
    );

    // The PCCS is back: fresh collateral, a new certificate, ready again.
    let _pccs = support::SimPccs::start(&d, &listen);
    let deadline = Instant::now() + Duration::from_secs(30);
    let v = loop {
        let v = readyz(&agent.addr);
        if v["ready"] == true || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(v["ready"], true, "{v}");
}

/// The quote provider fails: challenges get a clear 503, a re-issue fails and /readyz names
/// the certificate stage, the previous certificate keeps serving, and the agent recovers when
/// the provider does.
#[test]
fn failing_quote_provider_degrades_and_recovers() {
    let sim = SimTd::new();
    let (d, root) = (sim.dir_str().to_string(), sim.root_str().to_string());
    let socket = format!("{d}/run/admin.sock");
    let agent = start(&d, &[]).unwrap();
    assert_eq!(readyz(&agent.addr)["ready"], true);
    let rtmr3 = attest_rtmr3(&agent.addr, &root);

    // Break the simulated TD: its register state no longer parses, so no quote can be made.
    let state = sim.dir.join("td-state.json");
    let good = std::fs::read(&state).unwrap();
    std::fs::write(&state, b"{ not json").unwrap();

    let out = Command::new("curl")
        .args([
            "-sk",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"nonce":"AAECAw=="}"#,
            &format!("https://{}/attestation/v1/challenge", agent.addr),
        ])
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "503", "{text}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    // What failed, for the client; the TEE's own words (they name its files) stay in the log.
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("could not produce a quote") && msg.contains("see the agent's log"),
        "{body}"
    );
    assert!(!msg.contains("td-state.json"), "{body}");

    let r = tdx_agent(&["admin", "--socket", &socket, "rotate"]);
    assert_eq!(r.code, 2, "{r}");
    // The admin socket (root only) gets the whole error, naming the file...
    assert!(r.stderr.contains("td-state.json"), "{r}");
    let v = readyz(&agent.addr);
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(stage_ok(&v, "certificate_issued"), Some(false), "{v}");
    // ...and /readyz, like the challenge above, what failed and where to look.
    let detail = stage_detail(&v, "certificate_issued");
    assert!(
        detail.contains("re-issue (admin-rotate) failed")
            && detail.contains("did not produce a quote")
            && detail.contains("see the agent's log")
            && detail.contains("previous certificate serves until"),
        "{v}"
    );
    let body = v.to_string();
    assert!(
        !body.contains("td-state.json") && !body.contains(&d),
        "/readyz carries the TEE's error: {v}"
    );
    // The previous certificate still serves and still verifies.
    assert_eq!(attest_rtmr3(&agent.addr, &root), rtmr3);

    // The provider is back: a rotation succeeds and the agent is ready again.
    std::fs::write(&state, good).unwrap();
    let r = tdx_agent(&["admin", "--socket", &socket, "rotate"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(readyz(&agent.addr)["ready"], true);
}

/// RTMR3 cannot be read between re-issues (the simulated TD's register file is gone): after
/// a few failed reads in a row /readyz withdraws `measured`, saying why, rather than going on
/// as if RTMR3 had been checked; once it reads again the agent is ready again.
#[test]
fn unreadable_rtmr3_withdraws_measured_until_it_reads_again() {
    let sim = SimTd::new();
    // Short certificates: the rotation loop, which reads RTMR3, runs every 5 s.
    let config = support::sim_config(
        &sim,
        &sim.dir,
        "",
        "\n[tls]\ncert_lifetime_secs = 100\nrenew_before_secs = 1\n",
    );
    let agent = support::Daemon::start(&["serve", "--config", path_str(&config)], &[], &[]);
    assert_eq!(readyz(&agent.addr)["ready"], true);
    let registers = sim.dir.join(tdx_sim::TD_STATE_JSON);
    let away = sim.dir.join("td-state.away");
    std::fs::rename(&registers, &away).unwrap();

    let v = readyz_until(&agent.addr, |v| stage_ok(v, "measured") == Some(false));
    assert_eq!(stage_ok(&v, "measured"), Some(false), "{v}");
    let detail = stage_detail(&v, "measured");
    assert!(detail.contains("could not be read"), "{v}");
    // The read's error names the simulated TD's files: the log has it, /readyz does not.
    assert!(!v.to_string().contains(sim.dir_str()), "{v}");
    let log = agent.stderr();
    assert!(log.contains("cannot read RTMR3"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("readiness stage does not hold") && l.contains(sim.dir_str())),
        "the withdrawn stage's reason is not in the log:\n{log}"
    );

    std::fs::rename(&away, &registers).unwrap();
    let v = readyz_until(&agent.addr, |v| v["ready"] == true);
    assert_eq!(v["ready"], true, "{v}");
    assert!(
        stage_detail(&v, "measured").contains("matches the event log"),
        "{v}"
    );
}

/// `sim pki --gpus N` then `sim gpu --index 0 --state STATE`: a simulated TD whose one GPU
/// starts in `state`.
fn sim_with_one_gpu(state: &str) -> SimTd {
    let sim = SimTd::with_gpus(1);
    sim.set_gpu_state(0, state);
    sim
}

/// What the agent sends to $NOTIFY_SOCKET, as it arrives.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: String,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        // Ends when the test drops the receiver and the next datagram finds it gone.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        NotifySocket {
            path: path.to_str().unwrap().to_string(),
            _dir: dir,
            rx,
            seen: Vec::new(),
        }
    }

    /// Wait until a message equal to `want` has arrived (true), or `within` passes (false).
    fn wait_for(&mut self, want: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.seen.iter().any(|m| m == want) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Ok(m) = self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                self.seen.push(m);
            }
        }
    }

    fn count(&mut self, want: &str) -> usize {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
        self.seen.iter().filter(|m| *m == want).count()
    }
}

/// A GPU failing at start-up (here CC off; on hardware the CC ready state not set yet, an
/// OCSP outage, a hung NVML call) does not keep READY=1 back: start-up is done, so systemd is
/// told, and under `Type=notify` with `TimeoutStartSec` the agent is not killed and restarted
/// in a loop. /readyz says what is missing; when the GPU recovers the agent is ready, and
/// READY=1 is not sent again.
#[test]
fn ready_is_sent_when_start_up_ends_even_while_a_gpu_fails() {
    let sim = sim_with_one_gpu("cc-off");
    let config = support::sim_config(
        &sim,
        &sim.dir,
        "",
        &format!(
            "\n[gpu]\nrequired = 1\nsource = \"sim\"\nrecheck_secs = 1\ntimeout_secs = 2\ncache_dir = \"{}/gpu-cache\"\n",
            sim.dir_str()
        ),
    );
    let mut notify = NotifySocket::bind();
    let agent = support::Daemon::start(
        &["serve", "--config", path_str(&config)],
        &[("NOTIFY_SOCKET", notify.path.as_str())],
        &["WATCHDOG_USEC", "WATCHDOG_PID"],
    );
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(60)),
        "no READY=1 while a GPU fails; got {:?}\n{}",
        notify.seen,
        agent.stderr()
    );
    // Started, not ready: the GPU stage says which GPU and check, and the model routes (none
    // here) would be refused.
    let v = readyz(&agent.addr);
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(stage_ok(&v, "gpu_attested"), Some(false), "{v}");
    let detail = stage_detail(&v, "gpu_attested");
    assert!(
        detail.starts_with("gpu[0]") && detail.contains("CC mode"),
        "{v}"
    );

    // The GPU recovers: the next re-check re-issues the certificate and the agent is ready.
    sim.set_gpu_state(0, "ok");
    let v = readyz_until(&agent.addr, |v| v["ready"] == true);
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(notify.count("READY=1"), 1, "{:?}", notify.seen);
}

/// What /readyz and the model routes' 503 tell a caller about a stage that does not hold is
/// the stage and what to check; the internal error (the model server's address and the
/// connection's error, the TEE's file) goes to the agent's log.
#[test]
fn readyz_and_model_routes_keep_internal_errors_in_the_log() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut up = rt.block_on(Upstream::start());
    let up_addr = up.addr.to_string();
    let sim = SimTd::new();
    let (agent, dir) = agent_fronting_url(&sim, &up.url(), "health_interval_ms = 100\n", &[]);
    let v = readyz_until(&agent.addr, |v| v["ready"] == true);
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(curl_get(&agent.addr, "/v1/models").0, 200);

    // The model server goes away.
    rt.block_on(up.kill());
    let v = readyz_until(&agent.addr, |v| {
        stage_ok(v, "upstream_healthy") == Some(false)
    });
    assert_eq!(stage_ok(&v, "upstream_healthy"), Some(false), "{v}");
    let detail = stage_detail(&v, "upstream_healthy");
    assert!(detail.contains("model server"), "{v}");
    assert!(
        !v.to_string().contains(&up_addr),
        "/readyz names the model server: {v}"
    );
    let (code, e) = curl_get(&agent.addr, "/v1/models");
    assert_eq!(code, 503, "{e}");
    assert_eq!(e["error"]["type"], "not_ready", "{e}");
    assert_eq!(e["error"]["code"], "upstream_healthy", "{e}");
    assert!(!e.to_string().contains(&up_addr), "{e}");
    assert!(
        agent
            .stderr()
            .lines()
            .any(|l| l.contains("readiness stage does not hold")
                && l.contains("upstream_healthy")
                && l.contains(&up_addr)),
        "the model server's error is not in the log:\n{}",
        agent.stderr()
    );

    // The TEE fails too: a rotation fails, and certificate_issued (before upstream_healthy)
    // is what the model routes name, without the TEE's file.
    let state = sim.dir.join(tdx_sim::TD_STATE_JSON);
    std::fs::write(&state, b"{ not json").unwrap();
    let socket = dir.path().join("run/admin.sock");
    let r = tdx_agent(&["admin", "--socket", path_str(&socket), "rotate"]);
    assert_eq!(r.code, 2, "{r}");
    let (code, e) = curl_get(&agent.addr, "/v1/models");
    assert_eq!(code, 503, "{e}");
    assert_eq!(e["error"]["code"], "certificate_issued", "{e}");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("did not produce a quote") && msg.contains("see the agent's log"),
        "{e}"
    );
    let v = readyz(&agent.addr);
    for body in [e.to_string(), v.to_string()] {
        assert!(
            !body.contains(tdx_sim::TD_STATE_JSON) && !body.contains(sim.dir_str()),
            "{body}"
        );
    }
    let log = agent.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("certificate_issued") && l.contains(tdx_sim::TD_STATE_JSON)),
        "the TEE's error is not in the log:\n{log}"
    );
}

/// GET `path` with curl: (HTTP status, JSON body or Null).
fn curl_get(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "-m",
            "60",
            "-w",
            "\n%{http_code}",
            &format!("https://{addr}{path}"),
        ])
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// /readyz polled until `done` holds, or a minute passes (the last answer either way).
fn readyz_until(addr: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = readyz(addr);
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// POST a challenge with curl: (HTTP status, JSON body). Curl gives up after 60 s (status 0),
/// so a hung agent fails the test instead of hanging it.
fn curl_challenge(addr: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "-m",
            "60",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"nonce":"AAECAw=="}"#,
            &format!("https://{addr}/attestation/v1/challenge"),
        ])
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    (
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn stage_detail(v: &serde_json::Value, stage: &str) -> String {
    v["stages"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["stage"] == stage))
        .and_then(|s| s["detail"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The quote provider hangs (the simulated TD's fault-injection switch, DIR/quote-hang):
/// challenges get a 503 naming the quote timeout instead of hanging, a rotation fails and
/// /readyz names the certificate stage and the timeout, the previous certificate keeps
/// serving, and once the provider answers again everything recovers (the hung quote did not
/// wedge the agent).
#[test]
fn hanging_quote_provider_times_out_keeps_the_old_certificate_and_recovers() {
    let sim = SimTd::new();
    let (d, root) = (sim.dir_str().to_string(), sim.root_str().to_string());
    let socket = format!("{d}/run/admin.sock");
    let config = support::sim_config(&sim, &sim.dir, "quote_timeout_secs = 2", "");
    let agent = support::Daemon::start(&["serve", "--config", path_str(&config)], &[], &[]);
    assert_eq!(readyz(&agent.addr)["ready"], true);
    let rtmr3 = attest_rtmr3(&agent.addr, &root);
    let (code, _) = curl_challenge(&agent.addr);
    assert_eq!(code, 200);

    let switch = sim.dir.join(tdx_sim::QUOTE_HANG);
    std::fs::write(&switch, b"").unwrap();

    // A challenge: a 503 naming the quote timeout (so the timeout fired), not a hang.
    let (code, v) = curl_challenge(&agent.addr);
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"]["type"], "evidence_unavailable", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("quote timeout"), "{v}");
    // Another one while the first quote is still stuck: it queues behind it and times out too.
    let (code, v) = curl_challenge(&agent.addr);
    assert_eq!(code, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("quote timeout"), "{v}");

    // A rotation fails and says why; /readyz names the stage and the timeout.
    let r = tdx_agent(&["admin", "--socket", &socket, "rotate"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("quote timeout"), "{r}");
    let v = readyz(&agent.addr);
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(stage_ok(&v, "certificate_issued"), Some(false), "{v}");
    let detail = stage_detail(&v, "certificate_issued");
    assert!(
        detail.contains("quote timeout") && detail.contains("previous certificate serves"),
        "{v}"
    );
    // The previous certificate still serves and still verifies.
    assert_eq!(attest_rtmr3(&agent.addr, &root), rtmr3);

    // The provider answers again: the stuck quote finishes, a rotation succeeds, the agent is
    // ready, and challenges work.
    std::fs::remove_file(&switch).unwrap();
    let r = tdx_agent(&["admin", "--socket", &socket, "rotate"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(readyz(&agent.addr)["ready"], true);
    for _ in 0..2 {
        let (code, v) = curl_challenge(&agent.addr);
        assert_eq!(code, 200, "{v}");
        assert!(v["quote"].is_string(), "{v}");
    }
    assert_eq!(attest_rtmr3(&agent.addr, &root), rtmr3);
}

/// While a re-issue waits for its quote (here a hung one, after an extend), the evidence the
/// agent serves is the served certificate's: its event log is the one the certificate's quote
/// replays to, not the live log one event ahead, and the request does not wait for the
/// re-issue (it used to queue on the log's lock for the whole quote). gRPC GetEventLog, the
/// live log, does not wait either (it did until the log's text was published apart).
#[test]
fn evidence_during_a_reissue_is_the_served_certificates_and_does_not_wait() {
    let sim = SimTd::new();
    let socket = format!("{}/run/admin.sock", sim.dir_str());
    let log = sim.dir.join("run/rtmr3-events.jsonl");
    let config = support::sim_config(&sim, &sim.dir, "quote_timeout_secs = 30", "");
    let agent = support::Daemon::start(&["serve", "--config", path_str(&config)], &[], &[]);
    assert_eq!(readyz(&agent.addr)["ready"], true);
    let before = evidence(&agent.addr);
    let served_log = before["event_log"].as_str().unwrap().to_string();
    assert_eq!(served_log.lines().count(), log_lines(&log).len());

    let switch = sim.dir.join(tdx_sim::QUOTE_HANG);
    std::fs::write(&switch, b"").unwrap();
    let extend = std::thread::spawn(move || {
        admin_extend(&socket, "model", r#"{"digest":"ab12","name":"tiny"}"#)
    });
    // The event is logged and extended; the re-issue's quote now hangs.
    let started = Instant::now();
    while log_lines(&log).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the extend was not logged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            &format!("https://{}/.well-known/attestation", agent.addr),
        ])
        .output()
        .expect("curl");
    let during: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no evidence within 10 s while a re-issue waits for its quote ({e}): curl exit {:?}",
            out.status.code()
        )
    });
    assert_eq!(during["certificate"], before["certificate"]);
    assert_eq!(
        during["event_log"].as_str(),
        Some(served_log.as_str()),
        "the evidence's log must be the served certificate's, not the live one"
    );
    // gRPC GetEventLog is the live log (the extend's event included), and does not wait for
    // the re-issue either (a third-party client with a 20 s deadline, against 30 s of hang).
    let live = support::grpc_client(&agent.addr, "event-log");
    assert_eq!(live.code, 0, "GetEventLog during a re-issue: {live}");
    let live: serde_json::Value = serde_json::from_str(live.stdout.trim()).unwrap();
    let live = live["jsonl"].as_str().unwrap();
    assert_eq!(
        live.lines().count(),
        served_log.lines().count() + 1,
        "{live}"
    );
    assert!(live.starts_with(&served_log), "{live}");

    std::fs::remove_file(&switch).unwrap();
    let r = extend.join().unwrap();
    assert_eq!(r.code, 0, "{r}");
    let after = evidence(&agent.addr);
    assert_ne!(after["certificate"], before["certificate"]);
    let after_log = after["event_log"].as_str().unwrap();
    assert_eq!(after_log.lines().count(), served_log.lines().count() + 1);
    assert!(after_log.starts_with(&served_log), "{after_log}");
}

/// The certificate's re-issue fails after an admin extend was made (the quote hangs past its
/// timeout): the extend is reported as made, not as failed, since a retry would extend
/// twice: exit 0, `ok` with the event's seq and digest, and a warning (in the JSON and on
/// stderr) not to send it again. RTMR3 and the log agree it was extended once.
#[test]
fn an_extend_whose_reissue_fails_is_reported_measured_with_a_warning() {
    let sim = SimTd::new();
    let socket = format!("{}/run/admin.sock", sim.dir_str());
    let log = sim.dir.join("run/rtmr3-events.jsonl");
    let config = support::sim_config(&sim, &sim.dir, "quote_timeout_secs = 2", "");
    let agent = support::Daemon::start(&["serve", "--config", path_str(&config)], &[], &[]);
    assert_eq!(readyz(&agent.addr)["ready"], true);

    let switch = sim.dir.join(tdx_sim::QUOTE_HANG);
    std::fs::write(&switch, b"").unwrap();
    let r = admin_extend(&socket, "model", r#"{"digest":"ab12","name":"tiny"}"#);
    std::fs::remove_file(&switch).unwrap();
    assert_eq!(r.code, 0, "{r}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["seq"], 2, "{v}");
    let warning = v["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("event #2 IS measured")
            && warning.contains("do not send it again")
            && warning.contains("quote timeout"),
        "{v}"
    );
    assert!(r.stderr.contains("warning: event #2 IS measured"), "{r}");

    // Extended once: the log holds it once and replays to the register.
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 2);
    assert_eq!(v["digest"], lines[1].digest);
    let digests: Vec<[u8; 48]> = lines.iter().map(|l| l.event.digest().unwrap()).collect();
    let expected = hex::encode(replay(digests.iter()));
    assert_eq!(sim.measurements()["rtmr3"], expected);
    // What the warning says to do brings the certificate up to date.
    let r = tdx_agent(&["admin", "--socket", &socket, "rotate"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(attest_rtmr3(&agent.addr, sim.root_str()), expected);
}

/// The audit log cannot be written when an admin event comes: the event is logged but RTMR3
/// is not extended with it (no extend is ever made without its audit record), the caller is
/// told so, a retry is refused, and the restart after the audit log is writable again records
/// the event and then extends it, once.
#[test]
fn an_extend_the_audit_log_cannot_record_is_not_made_until_a_restart_records_it() {
    let sim = SimTd::new();
    let socket = format!("{}/run/admin.sock", sim.dir_str());
    let log = sim.dir.join("run/rtmr3-events.jsonl");
    let config = support::sim_config(&sim, &sim.dir, "", "max_bytes = 4096\n");
    let audit_dir = sim.dir.join("audit");
    let mut agent = support::Daemon::start(&["serve", "--config", path_str(&config)], &[], &[]);
    assert_eq!(readyz(&agent.addr)["ready"], true);

    // Take the name the next audit file would get (see the test below), then fill the active
    // file with challenge records until one no longer fits.
    let (_, obstacle) = block_the_next_audit_file(&audit_dir);
    let mut challenges = 0;
    while curl_challenge(&agent.addr).0 == 200 {
        challenges += 1;
        assert!(
            challenges < 40,
            "40 challenges fitted into a 4096-byte file"
        );
    }

    let before = sim.measurements()["rtmr3"].clone();
    let extend = || admin_extend(&socket, "model", r#"{"digest":"ab12","name":"tiny"}"#);
    let r = extend();
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("NOT extended") && r.stderr.contains("do not send it again"),
        "{r}"
    );
    assert_eq!(
        sim.measurements()["rtmr3"],
        before,
        "RTMR3 was extended without an audit record"
    );
    assert_eq!(log_lines(&log).len(), 2, "the event is logged, pending");
    assert_eq!(stage_ok(&readyz(&agent.addr), "measured"), Some(false));
    // Sent again: refused before anything is logged or extended.
    let r = extend();
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("event #2"), "{r}");
    assert_eq!(log_lines(&log).len(), 2);
    assert_eq!(sim.measurements()["rtmr3"], before);

    // The audit log is writable again; the restart records the event, then extends it.
    std::fs::remove_dir(&obstacle).unwrap();
    agent.stop();
    let mut agent = support::Daemon::start(&["serve", "--config", path_str(&config)], &[], &[]);
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 2);
    let digests: Vec<[u8; 48]> = lines.iter().map(|l| l.event.digest().unwrap()).collect();
    let expected = hex::encode(replay(digests.iter()));
    assert_eq!(sim.measurements()["rtmr3"], expected);
    assert_eq!(attest_rtmr3(&agent.addr, sim.root_str()), expected);
    assert_eq!(readyz(&agent.addr)["ready"], true);
    agent.stop();
    let files = tdx_daemon::audit::list_files(&audit_dir).unwrap();
    let text: String = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let record = format!(
        r#""type":"rtmr_extended","rtmr":3,"digest":"{}","event_type":"model","log_seq":2"#,
        lines[1].digest
    );
    assert_eq!(text.matches(&record).count(), 1, "{text}");
    let mut args = vec!["audit".to_string(), "verify".to_string()];
    args.extend(files.iter().map(|p| p.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = tdx_agent(&args);
    assert_eq!(r.code, 0, "{r}");
}

/// Take the name the audit log's next rotation will create (rotation opens with create_new,
/// so it refuses to append to anything already there) with a directory, which nothing could
/// write: the active file, and the obstacle.
fn block_the_next_audit_file(
    audit_dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let files = tdx_daemon::audit::list_files(audit_dir).unwrap();
    let active = files.last().unwrap().clone();
    let index: u64 = active.file_name().unwrap().to_str().unwrap()[6..14]
        .parse()
        .unwrap();
    let obstacle = audit_dir.join(format!("audit-{:08}.log", index + 1));
    std::fs::create_dir(&obstacle).unwrap();
    (active, obstacle)
}

/// The audit log cannot be written (its next file name is taken, so the size-based rotation
/// fails): from then on challenges are refused with 503 and no quote leaves the agent
/// unlogged; once the obstacle is gone challenges work again and the chain over all files
/// verifies.
#[test]
fn audit_log_write_failure_refuses_challenges_until_it_is_writable() {
    let sim = SimTd::new();
    let config = support::sim_config(&sim, &sim.dir, "", "max_bytes = 4096\n");
    let audit_dir = sim.dir.join("audit");
    let mut agent = support::Daemon::start(&["serve", "--config", path_str(&config)], &[], &[]);
    assert_eq!(readyz(&agent.addr)["ready"], true);

    let (active, obstacle) = block_the_next_audit_file(&audit_dir);
    let next_name = obstacle.file_name().unwrap().to_str().unwrap().to_string();
    let before = std::fs::metadata(&active).unwrap().len();

    // Challenges succeed until their record no longer fits the active file.
    let mut logged = Vec::new();
    let refused = loop {
        let (code, v) = curl_challenge(&agent.addr);
        if code != 200 {
            break (code, v);
        }
        logged.push(v["report_data"].as_str().unwrap().to_string());
        assert!(
            logged.len() < 40,
            "40 challenges fitted into a 4096-byte file that held {before} bytes"
        );
    };
    println!(
        "{} challenges fitted after the {before} bytes written at start; then: {}",
        logged.len(),
        refused.1
    );
    let (code, v) = refused;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"]["type"], "evidence_unavailable", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("audit log") && msg.contains("unlogged") && !msg.contains(&next_name),
        "{v}"
    );
    // The file that could not be written is named in the agent's log, not to clients.
    assert!(agent.stderr().contains(&next_name), "{}", agent.stderr());
    assert!(v.get("quote").is_none(), "{v}");
    // And it stays that way: no quote is handed out while nothing can be logged.
    for _ in 0..3 {
        let (code, v) = curl_challenge(&agent.addr);
        assert_eq!(code, 503, "{v}");
        assert!(v.get("quote").is_none(), "{v}");
    }
    // The certificate's evidence keeps being served: it is not new evidence. Its quote was
    // recorded in the audit log when the certificate was issued (before it was ever served),
    // so serving it again issues nothing unlogged.
    let ev = evidence(&agent.addr);
    let quote = tdx_core::encoding::from_b64(ev["quote"].as_str().unwrap()).unwrap();
    let (_, body) = tdx_core::quote::parse_head_only(&quote).unwrap();
    let cert_report_data = hex::encode(body.report_data);
    let audit_text = || -> String {
        tdx_daemon::audit::list_files(&audit_dir)
            .unwrap()
            .iter()
            .filter(|p| p.is_file())
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    let text = audit_text();
    assert!(
        text.contains(&format!(
            "\"purpose\":\"certificate\",\"report_data\":\"{cert_report_data}\""
        )),
        "the served certificate's quote is not in the audit log:\n{text}"
    );

    // The log is writable again: challenges succeed (into the next file).
    std::fs::remove_dir(&obstacle).unwrap();
    let (code, v) = curl_challenge(&agent.addr);
    assert_eq!(code, 200, "{v}");
    logged.push(v["report_data"].as_str().unwrap().to_string());
    assert!(audit_dir.join(&next_name).is_file());
    agent.stop();

    // Every quote that was handed out is in the log, and the chain holds over all files.
    let text = audit_text();
    for rd in &logged {
        assert!(
            text.contains(&format!(
                "\"purpose\":\"challenge\",\"report_data\":\"{rd}\""
            )),
            "challenge quote {rd} was handed out unlogged"
        );
    }
    let files = tdx_daemon::audit::list_files(&audit_dir).unwrap();
    let mut args = vec!["audit".to_string(), "verify".to_string()];
    args.extend(files.iter().map(|p| p.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = tdx_agent(&args);
    assert_eq!(r.code, 0, "{r}");
}

/// Fetch `/.well-known/attestation` with curl (the agent's certificate is self-signed).
fn evidence(addr: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sk", &format!("https://{addr}/.well-known/attestation")])
        .output()
        .expect("curl is needed for this test (apt-get install curl)");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn model_policy(dir: &std::path::Path, name: &str, digest: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[[rtmr3_events.pin]]\ntype = \"model\"\nallowed = [{{ manifest_sha256 = \"{digest}\" }}]\n\
             [[rtmr3_events.pin]]\ntype = \"agent-config\"\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// The model directory is measured before ready; clients (online and offline) appraise the
/// model event against a pinned digest; a changed model in the same boot is refused.
#[test]
fn the_model_is_measured_pinned_and_a_changed_model_needs_a_reboot() {
    let sim = SimTd::new();
    let (d, root) = (sim.dir_str().to_string(), sim.root_str().to_string());
    let model = sim.dir.join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::write(model.join("config.json"), b"{\"layers\": 2}\n").unwrap();
    std::fs::write(model.join("sub/weights.bin"), vec![7u8; 100_000]).unwrap();
    let model_str = model.to_str().unwrap();

    let m = tdx_agent(&["measure-model", model_str, "--json"]);
    assert_eq!(m.code, 0, "{m}");
    let digest = serde_json::from_str::<serde_json::Value>(&m.stdout).unwrap()["manifest_sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let agent = start(&d, &["--model-dir", model_str]).unwrap();
    let log = log_lines(&sim.dir.join("run/rtmr3-events.jsonl"));
    let kinds: Vec<_> = log.iter().map(|l| l.event.kind.as_str()).collect();
    assert_eq!(kinds, ["agent-config", "model"]);
    assert_eq!(log[1].event.data["manifest_sha256"], digest);
    assert_eq!(log[1].event.data["files"], 2);

    // Online: attest with a policy pinning this model passes; another digest fails naming
    // the event.
    let good = model_policy(&sim.dir, "good.toml", &digest);
    let bad = model_policy(&sim.dir, "bad.toml", &"00".repeat(32));
    let url = format!("https://{}", agent.addr);
    let r = tdx_agent(&["attest", &url, "--insecure-root", &root, "--policy", &good]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("RTMR3 event \"model\""), "{r}");
    let r = tdx_agent(&["attest", &url, "--insecure-root", &root, "--policy", &bad]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("RTMR3 event \"model\""), "{r}");

    // Offline: the served evidence, verified with --event-log.
    let ev = evidence(&agent.addr);
    let quote = tdx_core::encoding::from_b64(ev["quote"].as_str().unwrap()).unwrap();
    std::fs::write(sim.dir.join("q.bin"), quote).unwrap();
    std::fs::write(sim.dir.join("c.json"), ev["collateral"].to_string()).unwrap();
    std::fs::write(sim.dir.join("log.jsonl"), ev["event_log"].as_str().unwrap()).unwrap();
    let offline = |policy: &str, log: &str| {
        tdx_agent(&[
            "verify",
            &format!("{d}/q.bin"),
            "--collateral",
            &format!("{d}/c.json"),
            "--insecure-root",
            &root,
            "--policy",
            policy,
            "--event-log",
            log,
        ])
    };
    let r = offline(&good, &format!("{d}/log.jsonl"));
    assert_eq!(r.code, 0, "{r}");
    let r = offline(&bad, &format!("{d}/log.jsonl"));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("RTMR3 event \"model\""), "{r}");
    // A log with the model event left out no longer replays to RTMR3.
    let first_line = ev["event_log"].as_str().unwrap().lines().next().unwrap();
    std::fs::write(sim.dir.join("short.jsonl"), format!("{first_line}\n")).unwrap();
    let r = offline(&good, &format!("{d}/short.jsonl"));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("RTMR3 event log"), "{r}");
    drop(agent);

    // The model changes on disk: this boot already measured the old one.
    std::fs::write(model.join("config.json"), b"{\"layers\": 3}\n").unwrap();
    let err = start(&d, &["--model-dir", model_str])
        .err()
        .expect("a changed model in the same boot must be refused");
    assert!(err.contains("\"model\"") && err.contains("reboot"), "{err}");
    // After a (simulated) reboot the new model is measured.
    assert_eq!(tdx_agent(&["sim", "reset", "--sim-dir", &d]).code, 0);
    let agent = start(&d, &["--model-dir", model_str]).unwrap();
    let r = tdx_agent(&[
        "attest",
        &format!("https://{}", agent.addr),
        "--insecure-root",
        &root,
        "--policy",
        &good,
    ]);
    assert_eq!(r.code, 1, "the old pin must not match the new model: {r}");
}

/// A stand-in for the agent's admin socket at `path`: for each of `answers`, accept one
/// connection, read its request line, write the answer (nothing, for "") and close, as an
/// agent stopped after an extend but before its answer does. Returns the request lines.
fn fake_admin_socket(
    path: &std::path::Path,
    answers: Vec<&'static str>,
) -> std::thread::JoinHandle<Vec<String>> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut requests = Vec::new();
        for answer in answers {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            requests.push(line);
            std::io::Write::write_all(reader.get_mut(), answer.as_bytes()).unwrap();
        }
        requests
    })
}

/// An extend that was sent and got no answer (or one that says nothing) may have been made:
/// it must not exit 2, which tells a script "not extended, send it again", but 3, saying how
/// to find out. Nothing sent (no agent, a stale socket) is exit 2; so is a rotate without an
/// answer, since a rotate is harmless to repeat.
#[test]
fn admin_extend_without_an_answer_is_unknown_and_nothing_sent_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let server = fake_admin_socket(
        &socket,
        vec![
            "",
            "{\"ok\":tr",
            "",
            "{\"ok\":false,\"error\":\"refused by the test\"}",
        ],
    );
    let extend =
        |socket: &std::path::Path| admin_extend(path_str(socket), "model", r#"{"name":"tiny"}"#);
    let unknown = |r: &support::Run| {
        assert_eq!(r.code, 3, "{r}");
        assert!(
            r.stderr.contains("UNKNOWN whether RTMR3 was extended"),
            "{r}"
        );
        assert!(
            r.stderr.contains("Do not send it again before you know"),
            "{r}"
        );
        let log = format!("{}/rtmr3-events.jsonl", dir.path().display());
        assert!(
            r.stderr.contains(&log),
            "the message names the event log: {r}"
        );
        assert!(r.stderr.contains("rtmr_extended"), "{r}");
        assert!(r.stdout.is_empty(), "{r}");
    };

    // The connection closes with no answer at all.
    let r = extend(&socket);
    unknown(&r);
    assert!(r.stderr.contains("closed without an answer"), "{r}");
    // Half an answer (the agent killed while writing it) is no answer either.
    let r = extend(&socket);
    unknown(&r);
    assert!(r.stderr.contains("not JSON"), "{r}");
    // A rotate without an answer: harmless to repeat, so an ordinary error.
    let r = tdx_agent(&["admin", "--socket", path_str(&socket), "rotate"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("may be sent again"), "{r}");
    // An answer that says it was not extended stays exit 2.
    let r = extend(&socket);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("refused by the test"), "{r}");

    // The agent got every request whole.
    let requests = server.join().unwrap();
    assert_eq!(requests.len(), 4);
    for (i, line) in requests.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let want = if i == 2 { "rotate" } else { "extend" };
        assert_eq!(v["op"], want, "{line}");
    }

    // Nothing listens: the stale socket an agent leaves when killed, and no socket at all.
    // Nothing was sent, so exit 2 (a retry is safe).
    for path in [socket, dir.path().join("absent.sock")] {
        let r = extend(&path);
        assert_eq!(r.code, 2, "{r}");
        assert!(r.stderr.contains("nothing was sent"), "{r}");
    }
}
