//! The daemon end to end through real processes: `serve` on the simulated TD, `attest`, the
//! served certificate read by openssl, probes and metrics, systemd notify, fresh challenges
//! and the audit chain they sign, challenge batching under load, and hostile clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use support::upstream::{self, ChanBody, Upstream};
use support::{
    Daemon, H2_GOAWAY, HEAD_TIMEOUT, Https, SimTd, TLS_TIMEOUT, assert_closed_for, listener_log,
    metric, metric_sum, open_fds, path_str, proc_kib, raise_nofile_limit, tdx_agent,
};
use tdx_core::challenge::{Proof, ProofJson, verify_challenge};
use tdx_core::encoding::{b64, from_b64, hex_array};
use tdx_core::verify::{self as v, Collateral, Expectations, Policy, Verifier};

const CHALLENGE: &str = "/attestation/v1/challenge";
const WELL_KNOWN: &str = "/.well-known/attestation";

fn random_nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut n);
    n
}

fn challenge_body(nonce: &[u8]) -> String {
    serde_json::json!({ "nonce": b64(nonce) }).to_string()
}

/// Checks every appraisal of the simulated TD's evidence must name (default policy).
const APPRAISAL_CHECKS: &[&str] = &[
    v::CHECK_STRUCTURE,
    v::CHECK_QE_VENDOR,
    v::CHECK_EMBEDDED_ROOT,
    v::CHECK_WINDOW,
    v::CHECK_CRLS,
    v::CHECK_TCB_INFO,
    v::CHECK_QE_IDENTITY_SIG,
    v::CHECK_PCK_CHAIN,
    v::CHECK_QE_REPORT_SIG,
    v::CHECK_AK_BINDING,
    v::CHECK_QE_IDENTITY,
    v::CHECK_QUOTE_SIG,
    v::CHECK_TCB_LEVEL,
    v::CHECK_MODULE_IDENTITY,
    v::CHECK_TD_ATTRIBUTES,
    v::CHECK_TCB_STATUS,
    v::CHECK_DEBUG,
    v::CHECK_SEPT,
    v::CHECK_SERVICETD,
    v::CHECK_REPORT_DATA,
];

const CHALLENGE_CHECKS: &[&str] = &[
    "challenge key",
    "challenge proof",
    "challenge quote",
    "challenge from the same TD",
];

fn checks(report: &serde_json::Value) -> Vec<(String, bool)> {
    report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("check name").to_string(),
                c["ok"].as_bool().expect("check ok"),
            )
        })
        .collect()
}

fn attest(d: &Daemon, extra: &[&str]) -> support::Run {
    let url = d.url();
    let mut args = vec!["attest", url.as_str()];
    args.extend_from_slice(extra);
    tdx_agent(&args)
}

/// `attest ... --nonce`.
fn attest_nonce(d: &Daemon, extra: &[&str]) -> support::Run {
    let mut args = extra.to_vec();
    args.push("--nonce");
    attest(d, &args)
}

// 1 ------------------------------------------------------------------------------------------

#[test]
fn attest_accepts_the_simulated_td_and_names_every_check() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);

    let r = attest(&d, &["--insecure-root", sim.root_str(), "--json"]);
    assert_eq!(r.code, 0, "{r}");
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("report JSON");
    assert_eq!(report["verdict"], "accepted", "{r}");
    assert_eq!(report["root"]["kind"], "insecure");
    let got = checks(&report);
    for name in APPRAISAL_CHECKS {
        assert!(
            got.iter().any(|(n, ok)| n == name && *ok),
            "check {name:?} missing or failed in {got:?}"
        );
    }
    for name in CHALLENGE_CHECKS {
        assert!(
            !got.iter().any(|(n, _)| n == name),
            "{name:?} without --nonce"
        );
    }
    assert!(got.iter().all(|(_, ok)| *ok), "{got:?}");

    let r = attest_nonce(&d, &["--insecure-root", sim.root_str(), "--json"]);
    assert_eq!(r.code, 0, "{r}");
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("report JSON");
    assert_eq!(report["verdict"], "accepted", "{r}");
    let got = checks(&report);
    for name in APPRAISAL_CHECKS.iter().chain(CHALLENGE_CHECKS) {
        assert!(
            got.iter().any(|(n, ok)| n == name && *ok),
            "check {name:?} missing or failed in {got:?}"
        );
    }

    // The agent measures its insecure switches (a simulated TD here): every report says so,
    // and a policy pinning none refuses it.
    assert!(
        report["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("insecure settings: tee.kind=sim")))),
        "{report}"
    );
    let none = sim.tmp.path().join("no-insecure.toml");
    std::fs::write(
        &none,
        "[[rtmr3_events.pin]]\ntype = \"agent-config\"\nallowed = [{ insecure = [] }]\n",
    )
    .unwrap();
    let r = attest(
        &d,
        &[
            "--insecure-root",
            sim.root_str(),
            "--policy",
            none.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, 1, "{r}");
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("report JSON");
    assert!(
        checks(&report).contains(&("RTMR3 event \"agent-config\"".to_string(), false)),
        "{report}"
    );
}

#[test]
fn attest_nonce_never_loses_the_http1_readiness_race() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    for i in 0..40 {
        let r = attest(&d, &["--insecure-root", sim.root_str(), "--nonce"]);
        assert_eq!(r.code, 0, "run {i}: {r}");
    }
}

// 2 ------------------------------------------------------------------------------------------

#[test]
fn policy_pins_decide_the_verdict() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let m = sim.measurements();
    let reg = |k: &str| m[k].as_str().expect(k).to_string();
    let other = |hex: &str| {
        // Same length, one nibble different.
        let mut s = hex.to_string();
        let c = if s.starts_with('0') { "1" } else { "0" };
        s.replace_range(0..1, c);
        s
    };

    let write = |name: &str, text: String| {
        let p = sim.tmp.path().join(name);
        std::fs::write(&p, text).expect("writing a policy");
        p
    };
    let run = |policy: &std::path::Path| {
        attest(
            &d,
            &[
                "--insecure-root",
                sim.root_str(),
                "--policy",
                path_str(policy),
                "--json",
            ],
        )
    };

    let p = write(
        "wrong-mrtd.toml",
        format!("[measurements]\nmrtd = [\"{}\"]\n", other(&reg("mrtd"))),
    );
    let r = run(&p);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("MRTD"), "{r}");
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("report JSON");
    assert!(
        checks(&report).contains(&("MRTD".to_string(), false)),
        "{r}"
    );

    let p = write(
        "wrong-rtmr2.toml",
        format!("[measurements]\nrtmr2 = [\"{}\"]\n", other(&reg("rtmr2"))),
    );
    let r = run(&p);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("RTMR2"), "{r}");
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("report JSON");
    assert!(
        checks(&report).contains(&("RTMR2".to_string(), false)),
        "{r}"
    );

    let p = write(
        "right.toml",
        format!(
            "[measurements]\nmrtd = [\"{}\"]\nrtmr0 = [\"{}\"]\nrtmr1 = [\"{}\"]\nrtmr2 = [\"{}\"]\nrtmr3 = [\"{}\"]\n",
            reg("mrtd"),
            reg("rtmr0"),
            reg("rtmr1"),
            reg("rtmr2"),
            reg("rtmr3"),
        ),
    );
    let r = run(&p);
    assert_eq!(r.code, 0, "{r}");
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("report JSON");
    for name in ["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"] {
        assert!(
            checks(&report).contains(&(name.to_string(), true)),
            "{name} not checked: {r}"
        );
    }
}

// 3 ------------------------------------------------------------------------------------------

#[test]
fn the_production_root_refuses_simulated_evidence() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let r = attest(&d, &["--json"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains(v::CHECK_EMBEDDED_ROOT), "{r}");
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("report JSON");
    assert_eq!(report["verdict"], "rejected");
    assert_eq!(report["root"]["kind"], "production");
    assert!(
        checks(&report).contains(&(v::CHECK_EMBEDDED_ROOT.to_string(), false)),
        "{r}"
    );
}

// 4 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn openssl_reads_both_ratls_extensions_from_the_served_certificate() {
    let openssl = std::process::Command::new("openssl")
        .arg("version")
        .output();
    assert!(
        openssl.is_ok_and(|o| o.status.success()),
        "openssl is needed for this test (apt-get install openssl)"
    );
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let c = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("connect");
    let ev = c.get(WELL_KNOWN).await;
    assert_eq!(ev.status, 200, "{}", ev.text());
    let ev = ev.json();
    let der = from_b64(ev["certificate"].as_str().expect("certificate")).expect("base64");
    // The evidence document describes the certificate this very connection was served.
    assert_eq!(der, c.peer_cert);

    let path = sim.tmp.path().join("served.der");
    std::fs::write(&path, &der).expect("writing the certificate");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-inform", "der", "-noout", "-text", "-in"])
        .arg(&path)
        .output()
        .expect("running openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2.23.133.5.4.9"), "{text}");
    assert!(text.contains("2.23.133.5.4.2"), "{text}");
    assert!(text.contains("ecdsa-with-SHA256"), "{text}");
}

/// A zlib certificate decompressor that counts what it inflates.
#[derive(Debug)]
struct CountingZlib;

static INFLATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl rustls::compress::CertDecompressor for CountingZlib {
    fn decompress(
        &self,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<(), rustls::compress::DecompressionFailed> {
        INFLATED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        rustls::compress::ZLIB_DECOMPRESSOR.decompress(input, output)
    }

    fn algorithm(&self) -> rustls::CertificateCompressionAlgorithm {
        rustls::CertificateCompressionAlgorithm::Zlib
    }
}

/// The RA-TLS certificate (about 13.6 KB: quote and collateral stapled) goes out compressed
/// (RFC 8879) to a client that offers zlib, which is what keeps full handshakes near a plain
/// server's rate (docs/benchmarks.md); the RA-TLS verifier checks the inflated certificate
/// as usual. Clients that offer nothing (openssl above) get it as it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_is_sent_compressed_to_clients_that_offer_it() {
    static COUNTING: CountingZlib = CountingZlib;
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let mut config = support::ratls_client_config(sim.root_der(), &[b"h2"]);
    config.cert_decompressors = vec![&COUNTING];
    let before = INFLATED.load(std::sync::atomic::Ordering::SeqCst);
    let c = Https::connect_with(&d.addr, Arc::new(config))
        .await
        .expect("a verified connection over a compressed certificate");
    assert_eq!(
        INFLATED.load(std::sync::atomic::Ordering::SeqCst) - before,
        1,
        "the server did not compress its certificate"
    );
    assert!(c.peer_cert.len() > 4096, "{} bytes", c.peer_cert.len());
    assert_eq!(c.get("/readyz").await.status, 200);
}

// 5 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn probes_and_metrics_never_make_quotes() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let c = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("connect");

    let live = c.get("/livez").await;
    assert_eq!(live.status, 200, "{}", live.text());
    let ready = c.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let ready = ready.json();
    assert_eq!(ready["ready"], true, "{ready}");
    for stage in ["measured", "collateral_fresh", "certificate_issued"] {
        let s = ready["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .find(|s| s["stage"] == stage)
            .unwrap_or_else(|| panic!("stage {stage} missing: {ready}"));
        assert_eq!(s["ok"], true, "{stage}: {ready}");
    }

    // One challenge so the per-purpose and batch families have samples.
    let ch = c.post(CHALLENGE, challenge_body(&random_nonce())).await;
    assert_eq!(ch.status, 200, "{}", ch.text());

    let text = c.get("/metrics").await.text();
    // Every family docs/operations.md lists is exported (the table and the code agree), but
    support::assert_families_exported(
        &text,
        &support::documented_metrics(
            "docs/operations.md",
            "## Metrics (`GET /metrics`)",
            "tdx_agent_",
        ),
        // Those of failed quotes and of GPUs: this agent has none.
        &[
            "tdx_agent_quote_failures_total",
            "tdx_agent_gpu_verifications_total",
            "tdx_agent_gpu_reports_total",
            "tdx_agent_gpu_ok",
        ],
    );
    for name in [
        "tdx_agent_quote_duration_seconds_bucket",
        "tdx_agent_quote_duration_seconds_count",
        "tdx_agent_quotes_total{purpose=\"certificate\"}",
        "tdx_agent_quotes_total{purpose=\"challenge\"}",
        "tdx_agent_challenge_batch_size_bucket",
        "tdx_agent_verifications_total{result=\"accepted\"}",
        "tdx_agent_certificate_rotations_total{reason=\"startup\"}",
        "tdx_agent_tcb_status{status=\"UpToDate\"}",
        "tdx_agent_collateral_next_update_timestamp_seconds",
        "tdx_agent_certificate_not_after_timestamp_seconds",
        "tdx_agent_uptime_seconds",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert_eq!(
        metric(&text, "tdx_agent_tcb_status{status=\"UpToDate\"}"),
        Some(1.0)
    );
    let now = tdx_core::verify::time::now_unix() as f64;
    for gauge in [
        "tdx_agent_collateral_next_update_timestamp_seconds",
        "tdx_agent_certificate_not_after_timestamp_seconds",
    ] {
        let t = metric(&text, gauge).unwrap_or_else(|| panic!("{gauge} in\n{text}"));
        assert!(t > now, "{gauge} {t} is not in the future (now {now})");
    }

    let before = metric_sum(&text, "tdx_agent_quotes_total");
    assert!(before >= 2.0, "{text}");
    for _ in 0..50 {
        assert_eq!(c.get("/metrics").await.status, 200);
        assert_eq!(c.get("/readyz").await.status, 200);
        assert_eq!(c.get("/livez").await.status, 200);
    }
    let text = c.get("/metrics").await.text();
    assert_eq!(
        metric_sum(&text, "tdx_agent_quotes_total"),
        before,
        "probes made quotes:\n{text}"
    );
}

// 6 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn systemd_ready_after_the_certificate_then_watchdog_and_clean_stop() {
    let sim = SimTd::new();
    let sock_path = sim.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("binding the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    // Collect every datagram with its arrival time on a thread, which also reads the audit
    // log the moment READY=1 arrives: what the agent had logged by then is what it had done.
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let (audit_tx, audit_rx) = std::sync::mpsc::channel::<String>();
    let audit_dir = sim.dir.join("audit");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if m == "READY=1" {
                    let files = tdx_daemon::audit::list_files(&audit_dir).unwrap_or_default();
                    let text = files
                        .iter()
                        .filter_map(|p| std::fs::read_to_string(p).ok())
                        .collect();
                    let _ = audit_tx.send(text);
                }
                let _ = tx.send((Instant::now(), m));
            }
        }
    });

    let mut d = Daemon::sim_with_env(
        &sim,
        &["--sim-quote-delay-ms", "1500"],
        &[
            ("NOTIFY_SOCKET", path_str(&sock_path)),
            ("WATCHDOG_USEC", "200000"),
        ],
        &["WATCHDOG_PID"],
    );
    let recv_until = |what: &str, deadline: Duration| -> Vec<(Instant, String)> {
        let end = Instant::now() + deadline;
        let mut got = Vec::new();
        while Instant::now() < end {
            if let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
                let done = m.1 == what;
                got.push(m);
                if done {
                    break;
                }
            }
        }
        got
    };

    let msgs = recv_until("READY=1", Duration::from_secs(30));
    assert!(
        msgs.iter().any(|(_, m)| m == "READY=1"),
        "no READY=1; got {msgs:?}\n{}",
        d.stderr()
    );
    let audit_at_ready = audit_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the audit log as READY=1 arrived");
    // Ready means certified: a verified RA-TLS handshake works right now, and the certificate
    // it presents had been issued and logged before READY=1 was sent (with the 1.5 s quote, a
    // READY=1 sent early finds no such record).
    let c = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("RA-TLS connect right after READY=1");
    assert_eq!(c.get("/livez").await.status, 200);
    let spki = hex::encode(c.spki_sha256());
    assert!(
        audit_at_ready
            .lines()
            .any(|l| l.contains("\"certificate_rotated\"")
                && l.contains(&format!("\"spki_sha256\":\"{spki}\""))),
        "READY=1 came before the served certificate ({spki}) was logged; the audit log then:\n{audit_at_ready}"
    );

    // The watchdog keeps pinging: two pings, however long a loaded machine takes to send them.
    let mut later = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while later.iter().filter(|(_, m)| m == "WATCHDOG=1").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "fewer than two watchdog pings in 30 s: {later:?}"
        );
        later.extend(recv_until("WATCHDOG=1", Duration::from_millis(200)));
    }

    d.sigterm();
    let st = d.wait_exit(Duration::from_secs(12));
    let tail = recv_until("STOPPING=1", Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    assert!(
        st.is_some_and(|s| s.code() == Some(0)),
        "exit after SIGTERM: {st:?}\n{}",
        d.stderr()
    );
    assert!(
        tail.iter().any(|(_, m)| m == "STOPPING=1"),
        "no STOPPING=1: {tail:?}"
    );
    let unknown: Vec<_> = msgs
        .iter()
        .chain(&later)
        .chain(&tail)
        .filter(|(_, m)| !["READY=1", "WATCHDOG=1", "STOPPING=1"].contains(&m.as_str()))
        .collect();
    assert!(unknown.is_empty(), "unexpected notifications {unknown:?}");
}

// 7 ------------------------------------------------------------------------------------------

struct Challenged {
    report_data: [u8; 64],
    head: String,
}

/// One challenge over HTTPS, checked the way a client must: the proof for our nonce and the
/// connection's key, the quote against the simulated root and the served collateral.
async fn challenge_and_verify(c: &Https, root: &[u8]) -> Challenged {
    let ev = c.get(WELL_KNOWN).await;
    assert_eq!(ev.status, 200, "{}", ev.text());
    let ev = ev.json();
    let collateral = Collateral::from_bundle_json(&ev["collateral"].to_string(), "evidence")
        .and_then(Collateral::prepare)
        .expect("served collateral");

    let nonce = random_nonce();
    let r = c.post(CHALLENGE, challenge_body(&nonce)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    let spki = c.spki_sha256();
    assert_eq!(r["spki_sha256"], hex::encode(spki));
    let report_data: [u8; 64] =
        hex_array(r["report_data"].as_str().expect("report_data")).expect("64 bytes hex");
    let proof: ProofJson = serde_json::from_value(r["proof"].clone()).expect("proof JSON");
    let proof = Proof::try_from(proof).expect("proof");
    verify_challenge(&nonce, &spki, &report_data, &proof).expect("proof for our nonce");
    // A different nonce is not under that root.
    assert!(verify_challenge(&[1; 32], &spki, &report_data, &proof).is_err());

    let quote = from_b64(r["quote"].as_str().expect("quote")).expect("base64");
    let report = Verifier::with_insecure_root(root.to_vec()).appraise(
        &quote,
        &collateral,
        tdx_core::verify::time::now_unix(),
        &Policy::default(),
        &Expectations {
            report_data: Some(report_data),
        },
    );
    assert!(report.accepted(), "{}", report.summary());
    assert!(report.check(v::CHECK_REPORT_DATA).is_some_and(|c| c.ok));

    let head = r["audit_head"].as_str().expect("audit_head").to_string();
    assert_eq!(hex::encode(&report_data[32..]), head);
    assert_eq!(hex::encode(&report_data[..32]), r["root"]);
    Challenged { report_data, head }
}

#[tokio::test(flavor = "multi_thread")]
async fn challenges_sign_the_audit_head_and_expose_a_deleted_tail() {
    let sim = SimTd::new();
    let mut d = Daemon::sim(&sim, &[]);
    let root = sim.root_der();
    let c = Https::connect(&d.addr, root.clone())
        .await
        .expect("connect");
    let first = challenge_and_verify(&c, &root).await;
    let second = challenge_and_verify(&c, &root).await;
    assert_ne!(first.report_data, second.report_data);
    assert_ne!(
        first.head, second.head,
        "the first challenge was not logged"
    );
    drop(c);
    d.stop();

    let files = sim.audit_files();
    assert!(!files.is_empty(), "no audit files in {:?}", sim.dir);
    let names: Vec<&str> = files.iter().map(|p| path_str(p)).collect();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify"];
        args.extend_from_slice(&names);
        args.extend_from_slice(extra);
        tdx_agent(&args)
    };
    let r = verify(&[]);
    assert_eq!(r.code, 0, "{r}");
    for head in [&first.head, &second.head] {
        let r = verify(&["--head", head]);
        assert_eq!(r.code, 0, "--head {head}: {r}");
    }

    // Delete the tail from the record the second challenge's head names onwards: what is
    // left is a valid chain, but no longer contains the head the hardware signed.
    let last = files.last().expect("a file");
    let text = std::fs::read_to_string(last).expect("reading the audit log");
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines
        .iter()
        .position(|l| {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(l.as_bytes())) == second.head
        })
        .expect("the second head is a line of the last file");
    assert!(cut > 0, "{text}");
    let kept: String = lines[..cut].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(last, kept).expect("truncating the audit log");

    let r = verify(&[]);
    assert_eq!(r.code, 0, "a truncated chain is still a chain: {r}");
    let r = verify(&["--head", &second.head]);
    assert_eq!(r.code, 1, "the deleted tail went unnoticed: {r}");
    assert!(r.stderr.contains(&second.head), "{r}");
    let r = verify(&["--head", &first.head]);
    assert_eq!(r.code, 0, "the first head is still in the kept part: {r}");
}

// 8 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_concurrent_challenges_share_a_few_quotes() {
    const CONNECTIONS: usize = 20;
    const PER_CONNECTION: usize = 100;
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &["--sim-quote-delay-ms", "1000"]);
    let root = sim.root_der();
    let config = Arc::new(support::ratls_client_config(root.clone(), &[b"h2"]));
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        conns.push(
            Https::connect_with(&d.addr, Arc::clone(&config))
                .await
                .expect("connect"),
        );
    }
    let spki = conns[0].spki_sha256();
    let before = {
        let t = conns[0].get("/metrics").await.text();
        metric(&t, "tdx_agent_quotes_total{purpose=\"challenge\"}").unwrap_or(0.0)
    };

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in &conns {
        for _ in 0..PER_CONNECTION {
            let c = c.clone();
            tasks.spawn(async move {
                let nonce = random_nonce();
                let r = c.request("POST", CHALLENGE, challenge_body(&nonce)).await?;
                if r.status != 200 {
                    return Err(format!("HTTP {}: {}", r.status, r.text()));
                }
                Ok::<_, String>((nonce, r.json()))
            });
        }
    }
    let mut answers = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = tasks.join_next().await {
            answers.push(r.expect("task").expect("challenge"));
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        all.is_ok(),
        "only {} of 2000 answered in 30 s",
        answers.len()
    );
    let n = answers.len();
    assert_eq!(n, CONNECTIONS * PER_CONNECTION);
    println!(
        "{n} challenges in {:.2} s: {:.0} challenges/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );

    let mut quotes = std::collections::HashMap::new();
    for (nonce, r) in &answers {
        assert_eq!(r["spki_sha256"], hex::encode(spki));
        let rd: [u8; 64] = hex_array(r["report_data"].as_str().expect("report_data")).unwrap();
        let proof: ProofJson = serde_json::from_value(r["proof"].clone()).expect("proof");
        let proof = Proof::try_from(proof).expect("proof");
        verify_challenge(nonce, &spki, &rd, &proof)
            .unwrap_or_else(|e| panic!("proof for nonce {}: {e}", hex::encode(nonce)));
        quotes
            .entry(rd)
            .or_insert_with(|| r["quote"].as_str().expect("quote").to_string());
    }
    // Each distinct quote verifies and carries the root its proofs end at.
    let ev = conns[0].get(WELL_KNOWN).await.json();
    let collateral = Collateral::from_bundle_json(&ev["collateral"].to_string(), "evidence")
        .and_then(Collateral::prepare)
        .expect("served collateral");
    let verifier = Verifier::with_insecure_root(root);
    for (rd, q) in &quotes {
        let report = verifier.appraise(
            &from_b64(q).expect("base64"),
            &collateral,
            tdx_core::verify::time::now_unix(),
            &Policy::default(),
            &Expectations {
                report_data: Some(*rd),
            },
        );
        assert!(report.accepted(), "{}", report.summary());
    }

    let text = conns[0].get("/metrics").await.text();
    let made =
        metric(&text, "tdx_agent_quotes_total{purpose=\"challenge\"}").unwrap_or(0.0) - before;
    println!(
        "{} distinct quotes, {made} challenge quotes made",
        quotes.len()
    );
    assert!(
        (1.0..=5.0).contains(&made),
        "{made} challenge quotes:\n{text}"
    );
    assert!(quotes.len() as f64 <= made);
}

// 9 ------------------------------------------------------------------------------------------

/// A daemon started from a configuration file only, with a 1 s header timeout.
fn daemon_from_config(sim: &SimTd) -> Daemon {
    daemon_with_limits(sim, "header_read_timeout_secs = 1\n")
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// [`daemon_from_config`] (header timeout 1 s) and one RA-TLS connection to it speaking
/// `alpn`, its handshake done.
async fn agent_and_connection(alpn: &[u8]) -> (SimTd, Daemon, Tls) {
    let sim = SimTd::new();
    let d = daemon_from_config(&sim);
    let config = Arc::new(support::ratls_client_config(sim.root_der(), &[alpn]));
    let tls = support::ratls_connect(&d.addr, config)
        .await
        .expect("RA-TLS");
    (sim, d, tls)
}

/// A daemon started from a configuration file only, with these `[limits]` lines, logging
/// why its listener closes each connection (`listener_log`).
fn daemon_with_limits(sim: &SimTd, limits: &str) -> Daemon {
    let config = support::sim_config(sim, sim.tmp.path(), "", &format!("[limits]\n{limits}"));
    Daemon::start(
        &["serve", "--config", path_str(&config)],
        &support::LISTENER_DEBUG_ENV,
        &[],
    )
}

/// The client's address of an RA-TLS connection, as the agent's log names it.
fn peer_of(tls: &Tls) -> std::net::SocketAddr {
    tls.get_ref().0.local_addr().expect("local address")
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors_and_the_daemon_stays_up() {
    let sim = SimTd::new();
    let mut d = daemon_from_config(&sim);
    assert!(
        sim.tmp
            .path()
            .join("audit")
            .join("audit-00000001.log")
            .exists(),
        "the configured audit dir is not used"
    );
    let c = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("connect");

    let big = format!("{{\"nonce\":\"{}\"}}", "A".repeat(1 << 20));
    let cases: Vec<(&str, String)> = vec![
        ("malformed JSON", "{\"nonce\": ".into()),
        ("not JSON at all", "nonce=abc".into()),
        (
            "unknown field",
            format!("{{\"nonce\":\"{}\",\"extra\":1}}", b64(&[7; 16])),
        ),
        ("missing nonce", "{}".into()),
        ("oversized nonce", challenge_body(&[7; 65])),
        ("empty nonce", challenge_body(&[])),
        ("nonce not base64", "{\"nonce\":\"***\"}".into()),
        ("1 MiB body", big),
    ];
    for (what, body) in cases {
        let r = c.request("POST", CHALLENGE, body).await;
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            (400..500).contains(&r.status),
            "{what}: HTTP {} {}",
            r.status,
            r.text()
        );
        let j: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{what}: HTTP {}: not JSON ({e}): {}", r.status, r.text()));
        let msg = j["error"]["message"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{what}: {j}");
        if what.contains("nonce") && what != "missing nonce" {
            assert!(msg.contains("nonce"), "{what}: {msg}");
        }
    }
    // A body over `limits.max_request_body_bytes` is 413, as docs/api.md says.
    let r = c
        .post(
            CHALLENGE,
            format!("{{\"nonce\":\"{}\"}}", "A".repeat(1 << 20)),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "request_too_large",
        "{}",
        r.text()
    );
    // A route asked with a method it does not take: an OpenAI-shaped 405 naming the method
    // and path, with the methods it takes in Allow (axum's own 405 has an empty body).
    for (method, path, allow) in [
        ("GET", CHALLENGE, "POST"),
        ("POST", "/readyz", "GET,HEAD"),
        ("DELETE", WELL_KNOWN, "GET,HEAD"),
    ] {
        let r = c.request(method, path, "").await.unwrap();
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        let j: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.text()));
        assert_eq!(j["error"]["code"], "method_not_allowed", "{j}");
        assert!(
            j["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(method) && m.contains(path)),
            "{j}"
        );
        let allowed = r.headers.get("allow").and_then(|v| v.to_str().ok());
        assert_eq!(allowed, Some(allow), "{method} {path}");
    }
    // Paths no route serves are OpenAI-shaped 404s too, whatever the method.
    for (method, path) in [
        ("GET", "/foo"),
        ("POST", "/attestation/v2/challenge"),
        ("GET", "/"),
    ] {
        let r = c.request(method, path, "").await.unwrap();
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        let j: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.text()));
        assert_eq!(j["error"]["type"], "not_found", "{j}");
        assert!(
            j["error"]["message"].as_str().unwrap().contains(path),
            "{j}"
        );
    }
    // A 64-byte nonce is the largest accepted.
    let ok = c.post(CHALLENGE, challenge_body(&[7; 64])).await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    assert!(d.exited().is_none(), "serve died:\n{}", d.stderr());
    let c = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("reconnect");
    assert_eq!(c.get("/livez").await.status, 200);
}

/// Read until EOF or error; the time it took, or None if still open at `limit`.
async fn closed_within(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt as _;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let r = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.ok().map(|_| started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_clients_are_dropped_after_the_header_timeout() {
    let sim = SimTd::new();
    let d = daemon_from_config(&sim);

    // TCP only: no TLS ClientHello.
    let mut tcp = tokio::net::TcpStream::connect(&d.addr)
        .await
        .expect("connect");
    let peer = tcp.local_addr().expect("local address");
    let t = closed_within(&mut tcp, Duration::from_secs(5)).await;
    let t = t.expect("a silent TCP client was not dropped within 5 s (timeout is 1 s)");
    assert_closed_for(&d, peer, &[TLS_TIMEOUT]).await;
    println!("silent TCP client dropped after {t:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_silent_after_the_tls_handshake_are_dropped_after_the_header_timeout() {
    let sim = SimTd::new();
    let d = daemon_from_config(&sim);
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let config = Arc::new(support::ratls_client_config(sim.root_der(), &[alpn]));
        let mut tls = support::ratls_connect(&d.addr, config)
            .await
            .expect("RA-TLS");
        let peer = peer_of(&tls);
        let t = closed_within(&mut tls, Duration::from_secs(5)).await;
        let reason = if alpn == b"h2" {
            H2_GOAWAY
        } else {
            HEAD_TIMEOUT
        };
        let alpn = String::from_utf8_lossy(alpn);
        let t = t.unwrap_or_else(|| {
            panic!("a client silent after the handshake (ALPN {alpn}) was still connected after 5 s (timeout 1 s)")
        });
        assert_closed_for(&d, peer, &[reason]).await;
        println!("silent TLS client (ALPN {alpn}) dropped after {t:?}");
    }
}

/// HTTP/2 has no header timeout of its own and hyper's keep-alive pings start only after its
/// handshake: a preface that stops half-way, and a client that finishes the handshake, answers
/// pings and never asks anything, must each be let go after the header timeout too.
#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_that_ask_nothing_are_let_go_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let sim = SimTd::new();
    let mut d = daemon_from_config(&sim);
    let config = Arc::new(support::ratls_client_config(sim.root_der(), &[b"h2"]));

    let mut tls = support::ratls_connect(&d.addr, Arc::clone(&config))
        .await
        .expect("RA-TLS");
    tls.write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("half a preface");
    tls.flush().await.expect("flush");
    let peer = peer_of(&tls);
    let t = closed_within(&mut tls, Duration::from_secs(5)).await;
    let t = t.expect("a half-sent HTTP/2 preface held its connection for 5 s (timeout 1 s)");
    assert_closed_for(&d, peer, &[H2_GOAWAY]).await;
    println!("half an HTTP/2 preface: dropped after {t:?}");

    // A real HTTP/2 client: its connection task ends when the server says GOAWAY and closes.
    let tls = support::ratls_connect(&d.addr, config)
        .await
        .expect("RA-TLS");
    let peer = peer_of(&tls);
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake::<_, http_body_util::Empty<Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    // One request first: the time runs again from its end.
    let req = hyper::Request::get("https://agent/livez")
        .body(http_body_util::Empty::new())
        .expect("request");
    let answer = send.send_request(req).await.expect("/livez over HTTP/2");
    assert_eq!(answer.status(), 200);
    drop(answer);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    let ended = ended.expect("an idle HTTP/2 connection was still open after 5 s (timeout 1 s)");
    let t = started.elapsed();
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the server should close with GOAWAY, not an error: {ended:?}"
    );
    assert_closed_for(&d, peer, &[H2_GOAWAY]).await;
    println!("idle HTTP/2 client: GOAWAY after {t:?}");
    assert!(d.exited().is_none(), "serve died:\n{}", d.stderr());
}

/// The header timer stops while a request is in flight (a model may think for minutes), so
/// a request body that never comes must be cut on its own: a challenge announcing 64 bytes
/// and sending none is answered 408 (a timeout on the client's side, which clients retry;
/// not a malformed request) once its body has moved no byte for the timeout, not held forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_challenge_whose_body_never_comes_is_cut_after_the_header_timeout() {
    let (t, text) = challenge_body_cut(None).await;
    // The answer names the cut: the body's own idle limit (the header timeout, 1 s).
    assert!(
        text.starts_with("HTTP/1.1 408")
            && text.contains("no data for 1s: the body was cut")
            && text.contains("request_timeout"),
        "a body that never came was answered with: {text}"
    );
    println!(
        "a challenge without its body: cut after {t:?} ({})",
        text.lines().next().unwrap_or("closed")
    );
}

/// A challenge body that trickles in, a byte just inside the idle timeout each time, must still
/// be whole within twice the header timeout (the router's bodies are 64 KiB at most):
/// otherwise one client holds a connection slot for days per 64 KiB announced.
#[tokio::test(flavor = "multi_thread")]
async fn a_challenge_body_trickling_in_is_cut_at_the_header_timeout() {
    // A byte every 400 ms: never idle for the 1 s timeout, and 64 bytes would take 25 s.
    let (t, text) = challenge_body_cut(Some(Duration::from_millis(400))).await;
    assert!(
        text.starts_with("HTTP/1.1 408")
            && text.contains("not received whole within 2s")
            && text.contains("request_timeout"),
        "a trickling body was answered with: {text}"
    );
    println!(
        "a trickling challenge body: cut after {t:?} ({})",
        text.lines().next().unwrap_or("closed")
    );
}

/// A challenge announcing a 64-byte body, sent a byte every `trickle` (or never), to an agent
/// with a 1 s header timeout: how long until the agent ended the connection, and what it said.
async fn challenge_body_cut(trickle: Option<Duration>) -> (Duration, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_sim, _d, tls) = agent_and_connection(b"http/1.1").await;
    let (mut rx, mut tx) = tokio::io::split(tls);
    let head = format!(
        "POST {CHALLENGE} HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n"
    );
    tx.write_all(head.as_bytes()).await.expect("head");
    tx.flush().await.expect("flush");
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let Some(every) = trickle else {
            // Keep the writing half open, sending nothing.
            return std::future::pending::<()>().await;
        };
        for _ in 0..64 {
            if tx.write_all(b" ").await.is_err() || tx.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), rx.read_to_end(&mut got)).await;
    let t = started.elapsed();
    sender.abort();
    assert!(
        read.is_ok(),
        "a challenge body sent every {trickle:?} held the connection for 15 s (timeout 1 s)"
    );
    (t, String::from_utf8_lossy(&got).into_owned())
}

/// The agent's own answers are whole in memory, and a gRPC health `Watch` never ends: an
/// HTTP/2 client that opens such streams and never takes their bodies (a flow-control window
/// of 0) must not keep its connection, and the bodies, past the header timeout and the limit
/// on how long an answer may be taken (`tdx_net::head_timer::DRAIN_TIMEOUTS`).
#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_whose_bodies_are_never_taken_do_not_hold_the_connection() {
    let sim = SimTd::new();
    let mut d = daemon_from_config(&sim);
    let config = Arc::new(support::ratls_client_config(sim.root_der(), &[b"h2"]));
    let tls = support::ratls_connect(&d.addr, config)
        .await
        .expect("RA-TLS");
    let peer = peer_of(&tls);
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(0)
            .handshake::<_, http_body_util::Full<Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let mut answers = Vec::new();
    for _ in 0..8 {
        let req = hyper::Request::get(format!("https://agent{WELL_KNOWN}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("request");
        let answer = send.send_request(req).await.expect("evidence head");
        assert_eq!(answer.status(), 200);
        answers.push(answer);
    }
    // gRPC health Watch of the whole server: an empty HealthCheckRequest, length-prefixed.
    let watch = hyper::Request::post("https://agent/grpc.health.v1.Health/Watch")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .expect("request");
    let watch = send.send_request(watch).await.expect("Watch head");
    assert_eq!(watch.status(), 200);
    answers.push(watch);
    let started = Instant::now();
    // The answers are held, unread: only the server can end this connection, once they have
    // drained for as long as one may (six timeouts), the GOAWAY and its grace: some 7 s.
    let ended = tokio::time::timeout(Duration::from_secs(20), conn).await;
    assert!(
        ended.is_ok(),
        "streams whose bodies were never taken held the connection for 20 s (timeout 1 s)"
    );
    println!(
        "HTTP/2 streams never read: connection closed after {:?}",
        started.elapsed()
    );
    assert_closed_for(&d, peer, &[H2_GOAWAY]).await;
    drop(answers);
    assert!(d.exited().is_none(), "serve died:\n{}", d.stderr());
}

/// An HTTP/2 client taking a large answer of the agent's slowly (a small window, released as
/// it reads) gets all of it, though that takes several header timeouts: the answer's body
/// keeps the connection while it is being taken (up to a limit), where the GOAWAY that
/// follows a timeout with nothing in flight would otherwise cut it mid-body.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_http2_download_of_the_evidence_is_not_cut_mid_body() {
    let sim = SimTd::new();
    let d = daemon_from_config(&sim);
    let config = Arc::new(support::ratls_client_config(sim.root_der(), &[b"h2"]));
    let tls = support::ratls_connect(&d.addr, config)
        .await
        .expect("RA-TLS");
    let peer = peer_of(&tls);
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(1024)
            .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let evidence = || {
        hyper::Request::get(format!("https://agent{WELL_KNOWN}"))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // Taken at once first, for its length and to compare with.
    let whole = send
        .send_request(evidence())
        .await
        .expect("evidence head")
        .into_body()
        .collect()
        .await
        .expect("the evidence document")
        .to_bytes();
    // The agent hands hyper its answers in 4 KiB pieces; the last is let out by the GOAWAY's
    // grace, so only a document of several pieces tells the fix from its absence.
    assert!(
        whole.len() > 16 * 1024,
        "the evidence document has {} bytes: too small to tell",
        whole.len()
    );
    let answer = send.send_request(evidence()).await.expect("evidence head");
    assert_eq!(answer.status(), 200);
    // Paced by bytes, not by frames (their size is the client library's choice): the whole
    // document over four header timeouts (1 s), well past the GOAWAY and its grace (two)
    // and well within the limit on how long one answer may drain (six).
    let pace = Duration::from_secs(4);
    let started = Instant::now();
    let mut body = answer.into_body();
    let mut got = Vec::with_capacity(whole.len());
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| {
            panic!(
                "the evidence was cut after {} of {} bytes, {:?} in: {e}; the agent said {:?}",
                got.len(),
                whole.len(),
                started.elapsed(),
                listener_log(&d.stderr()).remove(&peer.to_string())
            )
        });
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
        let due = pace.mul_f64(got.len() as f64 / whole.len() as f64);
        tokio::time::sleep_until((started + due).into()).await;
    }
    println!(
        "{} bytes of evidence taken over HTTP/2 in {:?} (header timeout 1 s)",
        got.len(),
        started.elapsed()
    );
    assert!(got == whole, "the slow download differs from the document");
    drop(send);
    // The connection still ends once nothing is left: a hang guard, not a timing.
    let ended = tokio::time::timeout(Duration::from_secs(20), conn).await;
    assert!(ended.is_ok(), "the connection outlived its answers by 20 s");
}

/// A request head that trickles in, a header line at a time and never finished, is cut at the
/// header timeout like a silent one: bytes arriving do not restart the time.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_trickling_in_is_cut_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (_sim, d, mut tls) = agent_and_connection(b"http/1.1").await;
    let peer = peer_of(&tls);
    let started = Instant::now();
    let mut line: &[u8] = b"GET /readyz HTTP/1.1\r\n";
    let mut buf = [0u8; 1024];
    let cut = loop {
        if tls.write_all(line).await.is_err() || tls.flush().await.is_err() {
            break started.elapsed();
        }
        line = b"x-slow: a\r\n";
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            Ok(Ok(n)) => panic!(
                "answered an unfinished head: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) if started.elapsed() > Duration::from_secs(10) => {
                panic!("a trickling head was still read after 10 s (timeout 1 s)")
            }
            Err(_) => {}
        }
    };
    println!("a head trickling in was cut after {cut:?}");
    assert_closed_for(&d, peer, &[HEAD_TIMEOUT]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_do_not_lock_out_a_new_client() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let mut idle = Vec::new();
    for i in 0..500 {
        idle.push(
            tokio::net::TcpStream::connect(&d.addr)
                .await
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}")),
        );
    }
    let started = Instant::now();
    // Blocking is fine here: nothing in this test needs the runtime meanwhile.
    let r = attest_nonce(&d, &["--insecure-root", sim.root_str()]);
    assert_eq!(r.code, 0, "{r}");
    println!(
        "attest with 500 idle connections open: {:?}",
        started.elapsed()
    );
    drop(idle);
    let c = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("connect");
    assert_eq!(c.get("/livez").await.status, 200);
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The agent's open descriptors once the count has stopped moving (the same on ten reads in a
/// row, 20 ms apart): connections a test closed are then released on the agent's side too.
async fn settled_fds(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut same) = (open_fds(pid), 0);
    while same < 10 {
        assert!(
            Instant::now() < deadline,
            "the agent's descriptor count never settled (last {last})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = open_fds(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Probe /readyz on a fresh RA-TLS connection every 200 ms until `stop`; each probe's
/// (status, latency). A probe that fails to connect or answer is recorded as status 0.
fn readyz_prober(
    addr: String,
    config: Arc<rustls::ClientConfig>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u16, Duration)>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let started = Instant::now();
            let status = tokio::time::timeout(Duration::from_secs(20), async {
                let c = Https::connect_with(&addr, Arc::clone(&config)).await?;
                c.request("GET", "/readyz", bytes::Bytes::new())
                    .await
                    .map(|r| r.status)
            })
            .await;
            seen.push((
                matches!(status, Ok(Ok(200))).then_some(200).unwrap_or(0),
                started.elapsed(),
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    })
}

/// How an idle connection behaves: connects and says nothing, completes the TLS handshake
/// and says nothing, or sends part of a request's headers and stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idle {
    Tcp,
    Tls,
    HalfRequest,
}

/// An idle connection (as a readable stream), when it was opened and its client's address.
type IdleConn = (
    Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    Instant,
    std::net::SocketAddr,
);

/// One idle connection of `kind`.
async fn open_idle(
    addr: &str,
    kind: Idle,
    config: Arc<rustls::ClientConfig>,
) -> Result<IdleConn, String> {
    use tokio::io::AsyncWriteExt as _;
    let opened = Instant::now();
    match kind {
        Idle::Tcp => {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let peer = tcp
                .local_addr()
                .map_err(|e| format!("local address: {e}"))?;
            Ok((Box::new(tcp), opened, peer))
        }
        Idle::Tls | Idle::HalfRequest => {
            let mut tls = support::ratls_connect(addr, config).await?;
            let opened = Instant::now();
            let peer = peer_of(&tls);
            if kind == Idle::HalfRequest {
                tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                    .await
                    .map_err(|e| format!("half request: {e}"))?;
                tls.flush().await.map_err(|e| format!("flush: {e}"))?;
            }
            Ok((Box::new(tls), opened, peer))
        }
    }
}

/// Thousands of idle connections (TCP only, TLS then silence, half a request): the agent's
/// memory stays bounded, each is closed after the header timeout, /readyz answers throughout,
/// and nothing panics.
#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_idle_connections_use_bounded_memory_and_are_closed() {
    const WANT: usize = 3000;
    let limit = raise_nofile_limit(WANT as u64 + 1000);
    // Leave room for the agent's own files and this process's other descriptors.
    let total = WANT.min(
        usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(500),
    );
    assert!(
        total >= 1000,
        "open-file limit {limit} leaves room for only {total} connections; raise `ulimit -n`"
    );
    if total < WANT {
        println!("open-file limit {limit}: opening {total} connections instead of {WANT}");
    }
    let sim = SimTd::new();
    let mut d = daemon_with_limits(&sim, "header_read_timeout_secs = 2\n");
    let pid = d.pid();
    let config = Arc::new(support::ratls_client_config(sim.root_der(), &[b"http/1.1"]));
    let h2 = Arc::new(support::ratls_client_config(sim.root_der(), &[b"h2"]));
    // Warm up (one verified connection), then the baseline.
    let c = Https::connect_with(&d.addr, Arc::clone(&h2))
        .await
        .expect("connect");
    assert_eq!(c.get("/readyz").await.status, 200);
    drop(c);
    let fds_before = settled_fds(pid).await;
    let rss_before = proc_kib(pid, "VmRSS");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = readyz_prober(d.addr.clone(), Arc::clone(&h2), Arc::clone(&stop));

    // A quarter complete TLS and go silent, a sixth also send half a request's headers, the
    // rest only connect. TLS first (slower to open), a bounded number of handshakes at once.
    let (n_tls, n_half) = (total / 4, total / 6);
    let kinds: Vec<Idle> = (0..total)
        .map(|i| match i {
            i if i < n_tls => Idle::Tls,
            i if i < n_tls + n_half => Idle::HalfRequest,
            _ => Idle::Tcp,
        })
        .collect();
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut opening = tokio::task::JoinSet::new();
    for (i, kind) in kinds.iter().copied().enumerate() {
        let (addr, config, gate) = (d.addr.clone(), Arc::clone(&config), Arc::clone(&gate));
        opening.spawn(async move {
            let _slot = gate.acquire_owned().await.expect("semaphore");
            let (stream, opened, peer) = open_idle(&addr, kind, config)
                .await
                .unwrap_or_else(|e| panic!("idle connection {i} ({kind:?}): {e}"));
            (kind, stream, opened, peer)
        });
    }
    let mut conns = Vec::new();
    while let Some(r) = opening.join_next().await {
        conns.push(r.expect("opening task"));
    }
    let opening_took = started.elapsed();
    let (rss_open, fds_open) = (proc_kib(pid, "VmRSS"), open_fds(pid));

    // Each must be closed by the agent: EOF (or a reset) within a generous bound.
    let mut closing = tokio::task::JoinSet::new();
    for (kind, mut stream, opened, peer) in conns {
        closing.spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = [0u8; 4096];
            let r = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            (kind, r.ok().map(|_| opened.elapsed()), peer)
        });
    }
    let mut lifetimes: Vec<(Idle, Duration, std::net::SocketAddr)> = Vec::new();
    while let Some(r) = closing.join_next().await {
        let (kind, t, peer) = r.expect("closing task");
        let t = t.unwrap_or_else(|| panic!("a {kind:?} idle connection was open after 30 s"));
        lifetimes.push((kind, t, peer));
    }
    let all_closed = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = prober.await.expect("prober");
    let fds_after = settled_fds(pid).await;
    let (rss_after, rss_peak) = (proc_kib(pid, "VmRSS"), proc_kib(pid, "VmHWM"));

    println!(
        "{total} idle connections ({n_tls} TLS, {n_half} half a request, {} TCP) opened in {opening_took:.2?}; \
         agent fds {fds_before} -> {fds_open} -> {fds_after}; all closed {all_closed:.2?} after the first was opened",
        total - n_tls - n_half
    );
    println!(
        "agent RSS: {:.1} MiB before, {:.1} MiB with the connections open, {:.1} MiB after, peak {:.1} MiB",
        mib(rss_before),
        mib(rss_open),
        mib(rss_after),
        mib(rss_peak)
    );
    for kind in [Idle::Tcp, Idle::Tls, Idle::HalfRequest] {
        let mut t: Vec<Duration> = lifetimes
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, t, _)| *t)
            .collect();
        t.sort();
        println!(
            "{kind:?}: closed after {:.2?} .. {:.2?} (median {:.2?})",
            t[0],
            t[t.len() - 1],
            t[t.len() / 2]
        );
    }
    // Each was closed by the header timeout, as the agent logs it for that client: during the
    // TLS handshake for the silent TCP ones, waiting for a request head for the others.
    let log = listener_log(&d.stderr());
    for (kind, _, peer) in &lifetimes {
        let want = if *kind == Idle::Tcp {
            TLS_TIMEOUT
        } else {
            HEAD_TIMEOUT
        };
        let said = log.get(&peer.to_string());
        assert!(
            said.is_some_and(|m| m.iter().any(|m| m == want)),
            "the {kind:?} connection from {peer} was not closed by the header timeout: {said:?}"
        );
    }
    let slowest = probes.iter().map(|p| p.1).max().unwrap_or_default();
    println!(
        "/readyz probed {} times meanwhile, slowest {slowest:.2?}",
        probes.len()
    );
    assert!(probes.len() >= 3, "{probes:?}");
    assert!(
        probes.iter().all(|(status, _)| *status == 200),
        "/readyz failed while connections were idle: {probes:?}"
    );
    assert!(
        rss_peak < 150 * 1024,
        "agent RSS peaked at {:.1} MiB with {total} idle connections",
        mib(rss_peak)
    );
    assert!(
        fds_after <= fds_before + 16,
        "the agent still holds {fds_after} descriptors (had {fds_before} before)"
    );
    assert!(d.exited().is_none(), "serve died:\n{}", d.stderr());
    assert!(!d.stderr().contains("panicked"), "{}", d.stderr());
    let c = Https::connect_with(&d.addr, h2).await.expect("connect");
    assert_eq!(c.get("/readyz").await.status, 200);
}

/// With more connections than `limits.max_connections`, the excess waits in the kernel's
/// accept queue (costing the agent nothing) and is served as soon as slots free up.
#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_max_connections_wait_in_the_backlog_and_are_served() {
    const SLOTS: usize = 200;
    const EXCESS: usize = 100;
    let sim = SimTd::new();
    let mut d = daemon_with_limits(
        &sim,
        &format!("header_read_timeout_secs = 2\nmax_connections = {SLOTS}\n"),
    );
    let h2 = Arc::new(support::ratls_client_config(sim.root_der(), &[b"h2"]));
    let c = Https::connect_with(&d.addr, Arc::clone(&h2))
        .await
        .expect("connect");
    assert_eq!(c.get("/readyz").await.status, 200);
    drop(c);
    // Its slot is free again once the agent has closed its side.
    settled_fds(d.pid()).await;

    // Fill every slot, and queue more behind them; the kernel completes their TCP handshakes.
    let mut idle = Vec::new();
    for i in 0..SLOTS + EXCESS {
        let tcp = tokio::net::TcpStream::connect(&d.addr)
            .await
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        let peer = tcp.local_addr().expect("local address");
        idle.push((tcp, Instant::now(), peer));
    }
    // A real client behind them all: it waits for a slot, then gets its answer.
    let started = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(30), async {
        let c = Https::connect_with(&d.addr, Arc::clone(&h2)).await?;
        c.request("GET", "/readyz", bytes::Bytes::new()).await
    })
    .await;
    let waited = started.elapsed();
    // Every slot was taken, so it can only have been served once the agent let an idle one go
    // (it logs that before the slot is free).
    let closed_before = listener_log(&d.stderr())
        .values()
        .filter(|m| m.iter().any(|m| m == TLS_TIMEOUT))
        .count();
    let r = served
        .unwrap_or_else(|_| panic!("a queued client was not served within 30 s"))
        .unwrap_or_else(|e| panic!("queued client: {e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    println!(
        "a client queued behind {} idle connections ({SLOTS} slots) was served after {waited:.2?}, \
         {closed_before} of them closed by then",
        SLOTS + EXCESS
    );
    assert!(
        closed_before >= 1,
        "served while every slot was held: it did not wait for one"
    );

    // The queued idle connections got slots too, and were closed by the header timeout.
    let mut closed = Vec::new();
    for (mut tcp, opened, peer) in idle {
        let t = closed_within(&mut tcp, Duration::from_secs(20))
            .await
            .map(|_| opened.elapsed());
        closed.push(t.expect("an idle connection still open after 20 s"));
        assert_closed_for(&d, peer, &[TLS_TIMEOUT]).await;
    }
    closed.sort();
    println!(
        "idle connections closed after {:.2?} .. {:.2?}",
        closed[0],
        closed[closed.len() - 1]
    );
    assert!(d.exited().is_none(), "serve died:\n{}", d.stderr());
    let c = Https::connect_with(&d.addr, h2).await.expect("connect");
    assert_eq!(c.get("/readyz").await.status, 200);
}

/// Malformed gRPC: garbage framing and a frame that is not a protobuf message each get a
/// gRPC error status, never a crash; the daemon keeps answering.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_grpc_bodies_get_error_statuses() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let c = Https::connect(&d.addr, sim.root_der())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let path = "/tdx_agent.v1.Attestation/GetEvidence";
    // A length-prefixed frame of bytes that do not decode as GetEvidenceRequest (field 1 is
    // declared as a 2-GiB length-delimited value), and a frame cut short.
    let not_protobuf: &[u8] = &[0, 0, 0, 0, 6, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x07];
    let truncated: &[u8] = &[0, 0, 0, 0, 50, 0x0a, 0x02];
    for body in [not_protobuf, truncated, b"hello".as_slice()] {
        let r = c
            .request_typed(
                "POST",
                path,
                "application/grpc",
                bytes::Bytes::copy_from_slice(body),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = r
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert!(
            matches!(status.as_deref(), Some(s) if s != "0"),
            "body {body:?}: HTTP {} grpc-status {status:?}",
            r.status
        );
    }
    let live = c.get("/livez").await;
    assert_eq!(live.status, 200);
}

/// Listening with a socket per connection thread (`SO_REUSEPORT`) must not let a second agent
/// share the port: it fails to start, naming the address, and the first keeps every
/// connection.
#[test]
fn a_second_agent_on_the_same_port_is_refused() {
    let first_td = SimTd::new();
    let first = Daemon::sim(&first_td, &[]);
    let second_td = SimTd::new();
    let r = support::tdx_agent_within(
        &[
            "serve",
            "--tee",
            "sim",
            "--sim-dir",
            second_td.dir_str(),
            "--listen",
            &first.addr,
        ],
        Duration::from_secs(60),
    );
    assert_ne!(r.code, 0, "{r}");
    assert!(
        r.stderr.contains(first.addr.as_str()) && r.stderr.to_lowercase().contains("in use"),
        "{r}"
    );
}

/// A second agent given the same state and audit directories (the same configuration, here on
/// another port) stops before it touches them, naming the lock and the agent that holds it:
/// the first keeps its admin socket and an unbroken audit chain.
#[test]
fn a_second_agent_on_the_same_directories_is_refused_before_touching_them() {
    let sim = SimTd::new();
    let mut first = Daemon::sim(&sim, &[]);
    let r = support::tdx_agent_within(
        &[
            "serve",
            "--tee",
            "sim",
            "--sim-dir",
            sim.dir_str(),
            "--listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(60),
    );
    assert_ne!(r.code, 0, "{r}");
    let lock = sim
        .dir
        .join("run")
        .join(tdx_daemon::server::instance::LOCK_FILE);
    assert!(
        r.stderr.contains(path_str(&lock))
            && r.stderr.contains("another `tdx-agent serve`")
            && r.stderr.contains(&format!("pid {}", first.pid())),
        "{r}"
    );
    assert!(!r.stdout.contains("listening"), "{r}");

    // The first agent's admin socket is still its own, and what it logs continues its chain.
    let socket = sim.dir.join("run").join("admin.sock");
    let r = tdx_agent(&["admin", "--socket", path_str(&socket), "rotate"]);
    assert_eq!(r.code, 0, "{r}");
    first.stop();
    let files = sim.audit_files();
    let mut args = vec!["audit", "verify"];
    args.extend(files.iter().map(|p| path_str(p)));
    let r = tdx_agent(&args);
    assert_eq!(r.code, 0, "{r}");
    let text: String = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(
        text.matches("\"agent_started\"").count(),
        1,
        "the second agent wrote to the audit log: {text}"
    );
}

/// The evidence document is made once per certificate and shared: after a rotation the next
/// request gets the new certificate's document, never the old one's.
#[tokio::test(flavor = "multi_thread")]
async fn the_evidence_document_follows_a_rotated_certificate() {
    let sim = SimTd::new();
    let d = Daemon::sim(&sim, &[]);
    let served = |c: &Https| {
        let c = c.clone();
        async move {
            let ev = c.get(WELL_KNOWN).await;
            assert_eq!(ev.status, 200, "{}", ev.text());
            assert_eq!(
                ev.headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/json")
            );
            let ev = ev.json();
            from_b64(ev["certificate"].as_str().expect("certificate")).expect("base64")
        }
    };
    let before = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("connect");
    let first = served(&before).await;
    assert_eq!(first, before.peer_cert);
    // Asked twice, the same document.
    assert_eq!(served(&before).await, first);
    let socket = sim.dir.join("run").join("admin.sock");
    let r = tdx_agent(&["admin", "--socket", path_str(&socket), "rotate"]);
    assert_eq!(r.code, 0, "{r}");
    let after = Https::connect(&d.addr, sim.root_der())
        .await
        .expect("connect");
    assert_ne!(
        after.peer_cert, before.peer_cert,
        "rotate issued no new certificate"
    );
    assert_eq!(served(&after).await, after.peer_cert);
}

/// An agent in front of the scripted model server, `upstream` lines added to `[upstream]`
/// (further sections may follow), ready.
async fn fronting(sim: &SimTd, up: &Upstream, upstream: &str) -> (Daemon, tempfile::TempDir) {
    let (d, dir) = upstream::agent_fronting(sim, up, upstream);
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.get("/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "the agent never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (d, dir)
}

fn echo_request<B>(body: B, length: Option<usize>) -> hyper::Request<B> {
    let mut req = hyper::Request::post("/v1/echo").header("host", "agent");
    if let Some(n) = length {
        req = req.header("content-length", n);
    }
    req.body(body).unwrap()
}

/// A client that declares a small body and never sends it is answered 408 once the body has
/// moved no byte for `idle_timeout_secs`, and meanwhile holds none of the
/// `max_concurrent_requests` slots: the only one here stays free for a client that sends its
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_that_never_comes_gets_408_and_holds_no_model_slot() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (d, _dir) = fronting(
        &sim,
        &up,
        "max_concurrent_requests = 1\nidle_timeout_secs = 2\n",
    )
    .await;

    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    let before = support::heads_taken(&c).await;

    let mut slow = upstream::http1::<ChanBody>(&d.addr, sim.root_der()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let slow_answer = tokio::spawn(async move {
        slow.send_request(echo_request(ChanBody(rx), Some(100)))
            .await
    });
    // The agent has the slow client's head before the next request comes: that is what used
    // to take the only slot.
    support::wait_one_more_head(&c, before, "the slow client's request head").await;

    assert_eq!(
        quick_echo(&d, &sim).await,
        200,
        "the slow client held the only slot"
    );

    request_timeout(slow_answer, "an answer to the slow client").await;
    drop(tx);
}

/// A small body sent steadily but slowly, taking longer than `limits.header_read_timeout_secs`
/// (1 s here), gets through: it is read before admission, so it holds no model slot, and only
/// a stall (`idle_timeout_secs`) or `request_body_timeout_secs` cuts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_trickled_steadily_gets_through() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (d, _dir) = fronting(
        &sim,
        &up,
        "idle_timeout_secs = 5\n[limits]\nheader_read_timeout_secs = 1\n",
    )
    .await;

    // Declared small: read before admission, steadily, past the header timeout.
    trickled_through(&d, &sim, 100, Some(6 * 100)).await;
}

/// A large body (streamed, so it holds a `max_concurrent_requests` slot while it uploads)
/// trickled in, never idle for long, is cut with 408 once `request_body_timeout_secs` has
/// passed, and the only slot is free again for the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_trickled_past_the_body_timeout_gets_408_and_frees_its_slot() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (d, _dir) = fronting(
        &sim,
        &up,
        "max_concurrent_requests = 1\nidle_timeout_secs = 30\nrequest_body_timeout_secs = 2\n",
    )
    .await;

    let mut slow = upstream::http1::<ChanBody>(&d.addr, sim.root_der()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let declared = 1 << 20;
    let slow_answer = tokio::spawn(async move {
        slow.send_request(echo_request(ChanBody(rx), Some(declared)))
            .await
    });
    // A KiB every 200 ms, far from the 30 s idle limit, until the agent stops reading; a
    // MiB at that pace would take minutes.
    let trickle = tokio::spawn(async move {
        loop {
            if tx.send(Bytes::from(vec![b'x'; 1024])).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let v = request_timeout(slow_answer, "the trickled upload was never cut").await;
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("request_body_timeout_secs"), "{v}");
    trickle.abort();

    assert_eq!(
        quick_echo(&d, &sim).await,
        200,
        "the cut upload still holds the only slot"
    );
}

/// A body uploaded for longer than `response_header_timeout_secs` (1 s here) is not the model
/// server's delay: the wait for its answer starts once the request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_does_not_count_against_the_model_servers_answer_time() {
    let sim = SimTd::new();
    let up = Upstream::start().await;
    let (d, _dir) = fronting(&sim, &up, "response_header_timeout_secs = 1\n").await;

    // No length: the body streams to the model server as it comes.
    trickled_through(&d, &sim, 1024, None).await;
}

/// A small request to the echo route on a connection of its own: its status.
async fn quick_echo(d: &Daemon, sim: &SimTd) -> hyper::StatusCode {
    let mut quick = upstream::http1::<Full<Bytes>>(&d.addr, sim.root_der()).await;
    let body = Bytes::from_static(b"{\"prompt\":\"hi\"}");
    quick
        .send_request(echo_request(Full::new(body.clone()), Some(body.len())))
        .await
        .unwrap()
        .status()
}

/// The slow client's answer, which must come (else `never`) as 408 `request_timeout`: its
/// error JSON.
async fn request_timeout(
    answer: tokio::task::JoinHandle<hyper::Result<hyper::Response<hyper::body::Incoming>>>,
    never: &str,
) -> serde_json::Value {
    let r = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect(never)
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 408);
    let v: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    v
}

/// Six pieces of `piece` bytes, 400 ms apart, to the echo route (declaring `length`, if
/// given): the whole body must reach the model server and its answer come back with 200.
async fn trickled_through(d: &Daemon, sim: &SimTd, piece: usize, length: Option<usize>) {
    let mut sender = upstream::http1::<ChanBody>(&d.addr, sim.root_der()).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let answer = tokio::spawn(async move {
        sender
            .send_request(echo_request(ChanBody(rx), length))
            .await
    });
    for _ in 0..6 {
        // A closed body: the agent has answered already (a cut, as it used to be).
        if tx.send(Bytes::from(vec![b'x'; piece])).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    drop(tx);
    let r = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("an answer")
        .unwrap()
        .unwrap();
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["body_len"], 6 * piece, "{echo}");
}
