//! `tdx-agent connect` end to end through real processes: `serve` on the simulated TD and
//! `connect` in front of it. Requests are forwarded only to a server that passed the policy
//! and a fresh challenge; failed checks and unreachable servers get 502s in OpenAI's error
//! shape; connect recovers when the server comes back and challenges every new connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{
    ConnectProc, Daemon, Https, SimTd, http_get, http_request, metric, path_str, tdx_agent,
    tdx_agent_within,
};

const WELL_KNOWN: &str = "/.well-known/attestation";
const CHALLENGE: &str = "/attestation/v1/challenge";
const CHALLENGES_OK: &str = "tdx_agent_challenges_total{result=\"ok\"}";

fn write_policy(sim: &SimTd, name: &str, text: &str) -> PathBuf {
    let p = sim.tmp.path().join(name);
    std::fs::write(&p, text).expect("writing a policy");
    p
}

/// The `[measurements]` table pinning the simulated TD's image (MRTD, RTMR0-2), with MRTD
/// replaced by `mrtd` when given.
fn image_pins(sim: &SimTd, mrtd: Option<&str>) -> String {
    let pins = sim.image_pins();
    match mrtd {
        None => pins,
        Some(other) => {
            let real = sim.measurements()["mrtd"]
                .as_str()
                .expect("mrtd")
                .to_string();
            assert!(pins.contains(&real), "{pins}");
            pins.replace(&real, other)
        }
    }
}

/// A policy pinning the simulated TD's MRTD and RTMR0-2.
fn accepting_policy(sim: &SimTd) -> PathBuf {
    write_policy(sim, "accept.toml", &image_pins(sim, None))
}

/// `connect` in front of `d`, trusting the simulated root, with `policy`.
fn connect(d: &Daemon, sim: &SimTd, policy: &std::path::Path, extra: &[&str]) -> ConnectProc {
    let url = d.url();
    let mut args = vec![
        "--insecure-root",
        sim.root_str(),
        "--policy",
        path_str(policy),
    ];
    args.extend_from_slice(extra);
    ConnectProc::start(&url, &args)
}

fn challenge_body() -> String {
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    serde_json::json!({ "nonce": tdx_core::encoding::b64(&nonce) }).to_string()
}

/// The error object of an OpenAI-shaped error answer.
fn openai_error(r: &support::Resp) -> serde_json::Value {
    let j = r.json();
    let e = j["error"].clone();
    assert!(e.is_object(), "not an OpenAI error: {j}");
    for key in ["message", "type", "param", "code"] {
        assert!(e.get(key).is_some(), "{key} missing in {j}");
    }
    e
}

async fn challenges_ok(direct: &Https) -> f64 {
    metric(&direct.get("/metrics").await.text(), CHALLENGES_OK).unwrap_or(0.0)
}

// (a) ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_server_gets_requests_forwarded_and_healthz_is_200() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let policy = accepting_policy(&sim);
    let mut c = connect(&d, &sim, &policy, &[]);
    let direct = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("direct RA-TLS connection");

    let h = http_get(&c.addr, "/healthz").await;
    assert_eq!(h.status, 200, "{}\n{}", h.text(), c.stderr());
    let h = h.json();
    assert_eq!(h["verified"], true, "{h}");
    assert_eq!(h["server"], d.url(), "{h}");
    let last = h["last_challenge"].as_str().expect("last_challenge");
    assert!(
        time::OffsetDateTime::parse(last, &time::format_description::well_known::Rfc3339).is_ok(),
        "{last} is not RFC 3339"
    );
    assert!(
        h["report_summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("accepted")),
        "{h}"
    );
    assert_eq!(h["spki_sha256"], hex::encode(direct.spki_sha256()), "{h}");

    // The server's own answers come back unchanged.
    let ready = http_get(&c.addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["ready"], true);
    let ev = http_get(&c.addr, WELL_KNOWN).await;
    assert_eq!(ev.status, 200, "{}", ev.text());
    assert_eq!(
        ev.json()["certificate"],
        direct.get(WELL_KNOWN).await.json()["certificate"]
    );
    // A request body crosses too: a challenge through connect answers for the server's key.
    let ch = http_request(
        &c.addr,
        "POST",
        CHALLENGE,
        &[("content-type", "application/json")],
        challenge_body(),
    )
    .await
    .expect("challenge through connect");
    assert_eq!(ch.status, 200, "{}", ch.text());
    assert_eq!(ch.json()["spki_sha256"], hex::encode(direct.spki_sha256()));
    // The server's errors are the server's: a route it does not have, with a query string.
    let missing = http_get(&c.addr, "/v1/models?limit=1").await;
    assert_eq!(
        missing.status,
        direct.get("/v1/models?limit=1").await.status,
        "{}",
        missing.text()
    );
    // HTTP/1.1 hop-by-hop headers from the local client do not break forwarding.
    let r = http_request(
        &c.addr,
        "GET",
        "/livez",
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
        ],
        bytes::Bytes::new(),
    )
    .await
    .expect("livez");
    assert_eq!(r.status, 200, "{}", r.text());

    let stderr = c.stderr();
    assert!(
        stderr.contains("verified"),
        "no verification logged:\n{stderr}"
    );
    let st = c.sigterm_and_wait(Duration::from_secs(15));
    assert!(
        st.is_some_and(|s| s.success()),
        "connect did not exit cleanly after SIGTERM: {st:?}\n{}",
        c.stderr()
    );
}

// (b) ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_server_failing_the_policy_gets_nothing_forwarded() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let direct = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("direct RA-TLS connection");
    let mrtd = sim.measurements()["mrtd"]
        .as_str()
        .expect("mrtd")
        .to_string();
    let other_mrtd = format!(
        "{}{}",
        if mrtd.starts_with('0') { "1" } else { "0" },
        &mrtd[1..]
    );
    let cases = [
        (
            "wrong-mrtd.toml",
            image_pins(&sim, Some(&other_mrtd)),
            "MRTD",
        ),
        (
            "model-pin.toml",
            format!(
                "{}[[rtmr3_events.pin]]\ntype = \"model\"\n",
                image_pins(&sim, None)
            ),
            "RTMR3 event \"model\"",
        ),
    ];
    for (name, text, check) in cases {
        let policy = write_policy(&sim, name, &text);
        let c = connect(&d, &sim, &policy, &[]);
        for (method, path, body) in [
            ("GET", "/readyz", ""),
            ("GET", WELL_KNOWN, ""),
            (
                "POST",
                "/v1/chat/completions",
                "{\"model\":\"m\",\"messages\":[]}",
            ),
            ("GET", "/readyz", ""),
        ] {
            let r = http_request(
                &c.addr,
                method,
                path,
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.status, 502, "{name} {method} {path}: {}", r.text());
            let e = openai_error(&r);
            assert_eq!(e["type"], "attestation_failed", "{name}: {e}");
            assert_eq!(e["code"], check, "{name}: {e}");
            let msg = e["message"].as_str().expect("message");
            assert!(msg.contains(&d.url()), "{name}: {msg}");
            assert!(msg.contains(check), "{name}: {msg}");
            assert!(msg.contains("expected"), "{name}: {msg}");
        }
        let h = http_get(&c.addr, "/healthz").await;
        assert_eq!(h.status, 503, "{name}: {}", h.text());
        let h = h.json();
        assert_eq!(h["verified"], false, "{h}");
        assert_eq!(h["check"], check, "{h}");
        assert!(
            c.stderr().contains("verification failed"),
            "{name}: failure not logged:\n{}",
            c.stderr()
        );
    }
    // The handshake refused the server each time: it was never even challenged.
    assert_eq!(challenges_ok(&direct).await, 0.0);
}

// (c) ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connect_needs_a_policy_or_an_explicit_insecure_flag() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let url = d.url();
    let limit = Duration::from_secs(30);
    // `connect URL --listen 127.0.0.1:0 EXTRA...` refused at start (exit 2, never listening).
    let refused = |extra: &[&str]| {
        let mut args = vec!["connect", url.as_str(), "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let r = tdx_agent_within(&args, limit);
        assert_eq!(r.code, 2, "{extra:?}: {r}");
        assert!(!r.stdout.contains("listening"), "{extra:?}: {r}");
        r
    };

    let r = refused(&["--insecure-root", sim.root_str()]);
    assert!(r.stderr.contains("--policy"), "{r}");
    assert!(r.stderr.contains("--insecure-no-policy"), "{r}");

    let policy = accepting_policy(&sim);
    let r = refused(&["--policy", path_str(&policy), "--insecure-no-policy"]);
    assert!(r.stderr.contains("which pins the TD image"), "{r}");

    // A policy that does not pin the image is refused like no policy: one with GPU settings
    // only, and one pinning only what any image can reproduce (RTMR3 events and register,
    // the owner registers; the shape of a model-only policy)...
    let replayable = format!(
        "[measurements]\nrtmr3 = [\"{h}\"]\nmrowner = [\"{h}\"]\n[[rtmr3_events.pin]]\ntype = \"model\"\n",
        h = "ab".repeat(48)
    );
    for (name, text, open) in [
        (
            "replayable",
            replayable.as_str(),
            "MRTD, RTMR0, RTMR1, RTMR2 have",
        ),
        (
            "unpinned",
            "[gpu]\ncount = 0\n",
            "MRTD, RTMR0, RTMR1, RTMR2 have",
        ),
    ] {
        let policy = write_policy(&sim, &format!("{name}-policy.toml"), text);
        let r = refused(&[
            "--insecure-root",
            sim.root_str(),
            "--policy",
            path_str(&policy),
        ]);
        assert!(
            r.stderr
                .contains(&format!("does not pin the TD image: {open}")),
            "{name}: {r}"
        );
        assert!(r.stderr.contains("--insecure-no-policy"), "{name}: {r}");
    }
    let unpinned = sim.tmp.path().join("unpinned-policy.toml");
    // ...and runs, with the warning, once the flag says so.
    let c = ConnectProc::start(
        &url,
        &[
            "--insecure-root",
            sim.root_str(),
            "--policy",
            path_str(&unpinned),
            "--insecure-no-policy",
        ],
    );
    assert!(
        c.stderr().contains("WARNING: --insecure-no-policy"),
        "{}",
        c.stderr()
    );
    drop(c);

    let r = tdx_agent_within(
        &[
            "connect",
            &format!("http://{}", d.addr),
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-policy",
        ],
        limit,
    );
    assert_eq!(r.code, 2, "plain http upstream: {r}");

    // Explicitly without a policy: it runs, forwards, and says loudly what that means.
    let c = ConnectProc::start(
        &url,
        &["--insecure-root", sim.root_str(), "--insecure-no-policy"],
    );
    assert!(
        c.stderr().contains("WARNING: --insecure-no-policy"),
        "{}",
        c.stderr()
    );
    let r = http_get(&c.addr, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A non-loopback listener is refused unless the flag says so, then runs with a warning;
    // oversized bodies get 413.
    let r = tdx_agent_within(
        &[
            "connect",
            &url,
            "--listen",
            "0.0.0.0:0",
            "--insecure-root",
            sim.root_str(),
            "--policy",
            path_str(&policy),
        ],
        limit,
    );
    assert_eq!(r.code, 2, "non-loopback listen: {r}");
    assert!(
        r.stderr.contains("not a loopback address")
            && r.stderr.contains("--insecure-listen-non-loopback"),
        "{r}"
    );
    assert!(!r.stdout.contains("listening"), "{r}");
    let c = ConnectProc::start_args(&[
        "connect",
        &url,
        "--listen",
        "0.0.0.0:0",
        "--insecure-listen-non-loopback",
        "--insecure-root",
        sim.root_str(),
        "--policy",
        path_str(&policy),
        "--max-request-bytes",
        "100",
    ]);
    assert!(
        c.stderr().contains("not a loopback address"),
        "{}",
        c.stderr()
    );
    let port = c.addr.rsplit(':').next().expect("port");
    let local = format!("127.0.0.1:{port}");
    let r = http_request(&local, "POST", CHALLENGE, &[], "x".repeat(101))
        .await
        .expect("oversized request");
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(openai_error(&r)["code"], "request_too_large");
    let r = http_request(
        &local,
        "POST",
        CHALLENGE,
        &[("content-type", "application/json")],
        challenge_body(),
    )
    .await
    .expect("small request");
    assert_eq!(r.status, 200, "{}", r.text());
}

// (d) ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn the_production_root_rejects_the_simulated_td() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let policy = accepting_policy(&sim);
    let c = ConnectProc::start(&d.url(), &["--policy", path_str(&policy)]);
    let r = http_get(&c.addr, "/readyz").await;
    assert_eq!(r.status, 502, "{}", r.text());
    let e = openai_error(&r);
    assert_eq!(e["type"], "attestation_failed", "{e}");
    assert_eq!(e["code"], tdx_core::verify::CHECK_EMBEDDED_ROOT, "{e}");
    let h = http_get(&c.addr, "/healthz").await;
    assert_eq!(h.status, 503, "{}", h.text());
}

// (e) ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connect_survives_the_server_going_away_and_verifies_it_again_when_back() {
    let sim = SimTd::new();
    // The restart must use the same configuration (the listen address is part of it, and
    // this boot already measured it into RTMR3), so bind a fixed port both times.
    let addr = format!("127.0.0.1:{}", support::free_port());
    let serve_args = [
        "serve",
        "--tee",
        "sim",
        "--sim-dir",
        sim.dir_str(),
        "--listen",
        addr.as_str(),
    ];
    let mut d = Daemon::start(&serve_args, &[], &[]);
    let policy = accepting_policy(&sim);
    let mut c = connect(&d, &sim, &policy, &[]);
    let r = http_get(&c.addr, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first_key = http_get(&c.addr, "/healthz").await.json()["spki_sha256"].clone();

    d.child.kill().expect("killing serve");
    d.child.wait().expect("reaping serve");
    for path in ["/readyz", "/v1/models", "/readyz"] {
        let r = http_get(&c.addr, path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        let e = openai_error(&r);
        assert_eq!(e["type"], "upstream_unavailable", "{e}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains(&d.url())),
            "{e}"
        );
    }
    let h = http_get(&c.addr, "/healthz").await;
    assert_eq!(h.status, 503, "{}", h.text());
    assert_eq!(h.json()["type"], "upstream_unavailable");
    assert!(c.exited().is_none(), "connect died:\n{}", c.stderr());

    // The same TD comes back on the same port with a new key.
    let d2 = Daemon::start(&serve_args, &[], &[]);
    let r = http_get(&c.addr, "/readyz").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), c.stderr());
    let h = http_get(&c.addr, "/healthz").await;
    assert_eq!(h.status, 200, "{}", h.text());
    assert_ne!(
        h.json()["spki_sha256"],
        first_key,
        "the old connection was reused"
    );
    // The new connection was challenged before use: exactly once.
    let direct = Https::connect(&d2.addr, sim.root_der())
        .await
        .expect("direct RA-TLS connection");
    assert_eq!(challenges_ok(&direct).await, 1.0);
}

// (f) ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_new_connection_is_challenged_and_old_challenges_are_renewed() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let policy = accepting_policy(&sim);
    let direct = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("direct RA-TLS connection");
    assert_eq!(challenges_ok(&direct).await, 0.0);

    // One connection, one challenge, however many requests (concurrent ones included).
    let c1 = connect(&d, &sim, &policy, &[]);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = c1.addr.clone();
        tasks.spawn(async move { http_get(&addr, "/readyz").await.status });
    }
    while let Some(s) = tasks.join_next().await {
        assert_eq!(s.expect("task"), 200);
    }
    assert_eq!(challenges_ok(&direct).await, 1.0);

    // A second client process is a second connection: challenged on its own.
    let c2 = connect(&d, &sim, &policy, &[]);
    for _ in 0..5 {
        assert_eq!(http_get(&c2.addr, "/readyz").await.status, 200);
    }
    assert_eq!(challenges_ok(&direct).await, 2.0);

    // With a 1 s period the next request after a second re-challenges first, on the same
    // connection.
    let c3 = connect(&d, &sim, &policy, &["--rechallenge-secs", "1"]);
    let key = |h: support::Resp| h.json()["spki_sha256"].clone();
    let before = http_get(&c3.addr, "/healthz").await;
    assert_eq!(before.status, 200, "{}", before.text());
    let before_time = before.json()["last_challenge"].clone();
    let before_key = key(before);
    assert_eq!(challenges_ok(&direct).await, 3.0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(http_get(&c3.addr, "/readyz").await.status, 200);
    assert_eq!(challenges_ok(&direct).await, 4.0);
    let after = http_get(&c3.addr, "/healthz").await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_ne!(after.json()["last_challenge"], before_time);
    assert_eq!(key(after), before_key);
    assert!(
        c3.stderr().contains("re-challenge passed"),
        "{}",
        c3.stderr()
    );
    drop((c1, c2, c3));

    // "Before every request": 20 requests at once are each forwarded after a challenge sent
    // after they arrived, but those that waited while one was made share it (before, each
    // waited for a challenge of its own: 20).
    let c4 = connect(&d, &sim, &policy, &["--rechallenge-secs", "0"]);
    let before = challenges_ok(&direct).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = c4.addr.clone();
        tasks.spawn(async move { http_get(&addr, "/readyz").await.status });
    }
    while let Some(s) = tasks.join_next().await {
        assert_eq!(s.expect("task"), 200);
    }
    let made = challenges_ok(&direct).await - before;
    assert!(
        (1.0..20.0).contains(&made),
        "{made} challenges for 20 requests"
    );
    assert_eq!(http_get(&c4.addr, "/readyz").await.status, 200);
    assert_eq!(challenges_ok(&direct).await - before, made + 1.0);
}

// (g) ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_server_key_moves_connect_to_a_new_verified_connection() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let policy = accepting_policy(&sim);
    let c = connect(&d, &sim, &policy, &["--rechallenge-secs", "1"]);
    let before = http_get(&c.addr, "/healthz").await;
    assert_eq!(before.status, 200, "{}", before.text());
    rotate_and_see_connect_move(&d, &sim, &c, before.json()["spki_sha256"].clone()).await;
}

/// The agent re-issues its certificate (`admin rotate`); the old connection stays open with
/// the old key, so connect's next challenge on it (`--rechallenge-secs 1`) is answered for a
/// key this connection does not have. Connect must take that for a rotation and move to a new
/// verified connection on the agent's new key, saying why.
async fn rotate_and_see_connect_move(
    d: &Daemon,
    sim: &SimTd,
    c: &ConnectProc,
    before: serde_json::Value,
) {
    let socket = sim.dir.join("run").join("admin.sock");
    let r = tdx_agent(&["admin", "--socket", path_str(&socket), "rotate"]);
    assert_eq!(r.code, 0, "{r}");
    // The last challenge must be older than --rechallenge-secs for the next request to send one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = http_get(&c.addr, "/readyz").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), c.stderr());
    let after = http_get(&c.addr, "/healthz").await;
    assert_eq!(after.status, 200, "{}", after.text());
    let after = after.json()["spki_sha256"].clone();
    assert_ne!(after, before, "still on the old connection");
    let direct = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("direct RA-TLS connection");
    assert_eq!(after, hex::encode(direct.spki_sha256()));
    let stderr = c.stderr();
    assert!(
        stderr.contains("key changed since this connection opened"),
        "{stderr}"
    );
    assert!(!stderr.contains("re-challenge failed"), "{stderr}");
}

/// Under a policy requiring GPUs a re-issued certificate is recognised too: the agent's GPUs
/// answer over the nonce derived from the root under its new key, and connect checks them
/// under that key. A stream in flight on the old connection finishes whole while new requests
/// go over a new verified connection.
#[tokio::test(flavor = "multi_thread")]
async fn under_a_gpu_policy_a_rotated_key_lets_a_stream_in_flight_finish() {
    let sim = SimTd::with_gpus(2);
    let up = support::upstream::Upstream::start().await;
    let d = Daemon::sim(
        &sim,
        &[
            "--gpus",
            "2",
            "--upstream",
            &up.url(),
            "--insecure-unmeasured-model",
        ],
    );
    // Ready once both GPUs are attested and measured (a new connection each time: the agent
    // closes older ones when a GPU event changes RTMR3).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let direct = Https::connect(&d.addr, sim.root_der())
            .await
            .expect("direct RA-TLS connection");
        let r = direct.get("/readyz").await;
        if r.json()["ready"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accept = std::fs::read_to_string(accepting_policy(&sim)).expect("the policy");
    let policy = write_policy(&sim, "gpus.toml", &format!("{accept}\n[gpu]\ncount = 2\n"));
    let roots = sim.dir.join("gpu-roots.pem");
    let c = connect(
        &d,
        &sim,
        &policy,
        &[
            "--insecure-gpu-roots",
            path_str(&roots),
            "--rechallenge-secs",
            "1",
        ],
    );
    let before = http_get(&c.addr, "/healthz").await;
    assert_eq!(before.status, 200, "{}\n{}", before.text(), c.stderr());
    let before = before.json()["spki_sha256"].clone();

    // 40 events 100 ms apart: in flight across the re-issue and the re-challenge after it.
    let resp = support::upstream::plain_open(&c.addr, "GET", "/v1/count/40/100").await;
    assert_eq!(resp.status(), 200, "{}", c.stderr());
    let mut body = resp.into_body();
    assert!(
        support::upstream::read_until(&mut body, "\"seq\":1}", Duration::from_secs(15))
            .await
            .is_some(),
        "{}",
        c.stderr()
    );
    // The next request re-challenges the old connection, which the agent now answers for its
    // new key: a rotation, so it goes out on a new verified connection.
    rotate_and_see_connect_move(&d, &sim, &c, before).await;
    // The stream on the old connection was left to finish: every event, then [DONE].
    let rest = support::upstream::read_until(&mut body, "[DONE]", Duration::from_secs(20)).await;
    let rest = rest.unwrap_or_else(|| panic!("the stream was cut\n{}", c.stderr()));
    assert!(rest.contains("\"seq\":39}"), "{rest}");
    let stderr = c.stderr();
    assert!(!stderr.contains("re-challenge failed"), "{stderr}");
}

/// A TLS server whose certificate is a plain self-signed one (no RA-TLS evidence), as anyone
/// could stand up in the agent's place; its address.
/// The verified server's redirects keep the client on connect: one to the server itself comes
/// back as a path, one anywhere else is refused with 502 and never reaches the client.
#[tokio::test(flavor = "multi_thread")]
async fn redirects_elsewhere_are_refused_and_to_the_server_come_back_as_paths() {
    let sim = SimTd::new();
    let up = support::upstream::Upstream::start().await;
    let d = Daemon::sim(
        &sim,
        &["--upstream", &up.url(), "--insecure-unmeasured-model"],
    );
    let policy = accepting_policy(&sim);
    let c = connect(&d, &sim, &policy, &[]);
    let redirect = |to: &str| format!("/v1/redirect/{}", hex::encode(to));

    let r = http_get(&c.addr, &redirect(&format!("{}/v1/models?x=1", d.url()))).await;
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(r.headers["location"], "/v1/models?x=1");
    let r = http_get(&c.addr, &redirect("/v1/models")).await;
    assert_eq!(r.status, 307, "{}", r.text());
    assert_eq!(r.headers["location"], "/v1/models");
    for elsewhere in [
        "https://evil.example/v1/chat/completions",
        "//evil.example/v1",
    ] {
        let r = http_get(&c.addr, &redirect(elsewhere)).await;
        assert_eq!(r.status, 502, "{elsewhere}: {}", r.text());
        assert!(!r.headers.contains_key("location"), "{elsewhere}");
        let e = openai_error(&r);
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not verify")),
            "{e}"
        );
    }
}

async fn plain_tls_server() -> String {
    use std::sync::Arc;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_ratls_evidence_is_a_rejection_naming_the_check() {
    let sim = SimTd::new();
    let addr = plain_tls_server().await;
    let url = format!("https://{addr}");
    let r = tdx_agent_within(
        &["attest", &url, "--insecure-root", sim.root_str()],
        Duration::from_secs(30),
    );
    // Evidence that cannot be read as evidence is a rejection (1), not a network error (2).
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("RA-TLS certificate check failed"), "{r}");
    assert!(r.stderr.contains("evidence"), "{r}");
    // connect answers with the check's name.
    let policy = accepting_policy(&sim);
    let c = ConnectProc::start(
        &url,
        &[
            "--insecure-root",
            sim.root_str(),
            "--policy",
            path_str(&policy),
        ],
    );
    let resp = http_get(&c.addr, "/v1/models").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    let e = openai_error(&resp);
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("RA-TLS certificate"),
        "{e}"
    );
}

/// A session closed with `abort` (what connect does to a connection whose re-challenge failed
/// a check) takes no more requests: one sent after it, or queued for it, is refused, never
/// sent. (A stream already in flight, forwarded while the connection was verified, is left
/// to finish: hyper drives the HTTP/2 connection in a task of its own.)
#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_session_sends_nothing_more() {
    use http_body_util::BodyExt as _;
    let sim = SimTd::new();
    let up = support::upstream::Upstream::start().await;
    let d = Daemon::sim(
        &sim,
        &["--upstream", &up.url(), "--insecure-unmeasured-model"],
    );
    let client = tdx_client::Client::new(
        tdx_core::verify::Verifier::with_insecure_root(sim.root_der().to_vec()),
        tdx_core::verify::Policy::default(),
    )
    .unwrap();
    let target = tdx_client::Target::parse(&d.url()).unwrap();
    let session = tdx_client::Session::open(
        &client,
        &target,
        tdx_client::Alpn::Http2,
        tdx_client::Timeouts::default(),
    )
    .await
    .unwrap();
    let mut h2 = session.sender.http2().unwrap();
    let get = |path: &str| {
        hyper::Request::get(format!("https://{}{path}", target.authority))
            .body(
                http_body_util::Empty::<bytes::Bytes>::new()
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap()
    };
    let before = h2.send_request(get("/v1/models")).await.unwrap();
    assert_eq!(before.status(), 200);
    session.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !session.sender.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the session stayed open after abort"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = h2.send_request(get("/v1/models")).await;
    assert!(after.is_err(), "a request went out after the abort");
}

/// A request body the local client breaks off (a malformed chunk) is a 400 naming the body,
/// not a 502 blaming the server, and connect stays verified for the next request.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_local_request_body_is_a_400_and_the_server_stays_verified() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let policy = accepting_policy(&sim);
    let c = connect(&d, &sim, &policy, &[]);
    let h = http_get(&c.addr, "/healthz").await;
    assert_eq!(h.status, 200, "{}\n{}", h.text(), c.stderr());

    let mut s = tokio::net::TcpStream::connect(&c.addr).await.unwrap();
    s.write_all(
        format!(
            "POST {CHALLENGE} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n5\r\n{{\"non\r\nzz\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_string(&mut answer))
        .await
        .expect("connect answered a broken body and closed")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "{answer}\n{}",
        c.stderr()
    );
    assert!(answer.contains("invalid_request_error"), "{answer}");
    assert!(answer.contains("request body"), "{answer}");

    let h = http_get(&c.addr, "/healthz").await;
    assert_eq!(h.status, 200, "{}\n{}", h.text(), c.stderr());
    assert_eq!(h.json()["verified"], true);
}
