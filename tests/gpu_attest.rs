//! GPUs attested with the TD, end to end through real processes (docs/gpu.md): `serve` on the
//! simulated TD with simulated GPUs, `attest` and `connect` checking them by policy, every
//! GPU failure keeping the agent not ready and the model unreached, the binding of GPU
//! evidence to one certificate of one TD, and the RTMR3 `gpu` events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::upstream::Upstream;
use support::{
    ConnectProc, Daemon, Https, SimTd, http_get, metric, path_str, sim_config, tdx_agent,
    tdx_agent_within,
};
use tdx_core::gpu::{GpuCollateral, GpuEvidenceSet, GpuPolicy, GpuRoots, GpuVerifier};
use tdx_core::verify::Report;
use tdx_core::verify::gpus::{CHECK_GPU_BINDING, GpuInputs, appraise_gpus};

const WELL_KNOWN: &str = "/.well-known/attestation";

fn gpu_roots(sim: &SimTd) -> String {
    path_str(&sim.dir.join("gpu-roots.pem")).to_string()
}

/// A serve config with `[gpu] required = n` over the simulated GPUs, checked every second
/// and a 2 s NVML timeout, fronting `upstream` when given.
fn gpu_config(sim: &SimTd, dir: &Path, required: u32, upstream: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let upstream = upstream
        .map(|u| {
            format!(
                "[model]\ninsecure_unmeasured = true\n[upstream]\nurl = \"{u}\"\nhealth_interval_ms = 100\n"
            )
        })
        .unwrap_or_default();
    sim_config(
        sim,
        dir,
        "",
        &format!(
            "{upstream}\n[gpu]\nrequired = {required}\nsource = \"sim\"\nrecheck_secs = 1\ntimeout_secs = 2\ncache_dir = \"{}/gpu-cache\"\n",
            path_str(dir)
        ),
    )
}

fn start(config: &Path) -> Daemon {
    Daemon::start(&["serve", "--config", path_str(config)], &[], &[])
}

/// A policy pinning the simulated TD's image (MRTD, RTMR0-2) and requiring `count` GPUs.
fn policy(sim: &SimTd, count: u32) -> PathBuf {
    let p = sim.tmp.path().join(format!("gpus-{count}.toml"));
    std::fs::write(
        &p,
        format!("{}\n[gpu]\ncount = {count}\n", sim.image_pins()),
    )
    .unwrap();
    p
}

/// GET `path` on a new connection: the agent closes older connections when a GPU event
/// changes RTMR3.
async fn get(d: &Daemon, sim: &SimTd, path: &str) -> support::Resp {
    Https::connect(&d.addr, sim.root_der())
        .await
        .unwrap()
        .get(path)
        .await
}

/// Poll /readyz until `ready` is `want`, returning the gpu_attested stage's detail.
async fn wait_gpu_ready(d: &Daemon, sim: &SimTd, want: bool, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let r = get(d, sim, "/readyz").await.json();
        let detail = r["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["stage"] == "gpu_attested"))
            .map(|s| s["detail"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        if r["ready"] == want {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed ready={} ({r}), wanted {want}",
            r["ready"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn attest(d: &Daemon, sim: &SimTd, policy: &Path, gpu_roots: bool) -> support::Run {
    let url = d.url();
    let roots = self::gpu_roots(sim);
    let mut args = vec![
        "attest",
        url.as_str(),
        "--nonce",
        "--insecure-root",
        sim.root_str(),
        "--policy",
        path_str(policy),
    ];
    if gpu_roots {
        args.extend(["--insecure-gpu-roots", roots.as_str()]);
    }
    tdx_agent_within(&args, Duration::from_secs(60))
}

fn gpu_events(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"]["type"] == "gpu")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gpus_are_attested_and_any_failing_one_keeps_the_model_unreached() {
    let sim = SimTd::with_gpus(2);
    let up = Upstream::start().await;
    let config = gpu_config(&sim, &sim.tmp.path().join("agent"), 2, Some(&up.url()));
    let d = start(&config);
    assert_eq!(
        wait_gpu_ready(&d, &sim, true, Duration::from_secs(60)).await,
        "2 GPUs attested"
    );
    let two = policy(&sim, 2);
    let gpu_ok = |text: &str, i: u32| metric(text, &format!("tdx_agent_gpu_ok{{index=\"{i}\"}}"));
    let metrics = get(&d, &sim, "/metrics").await.text();
    assert_eq!(gpu_ok(&metrics, 0), Some(1.0), "{metrics}");
    assert_eq!(gpu_ok(&metrics, 1), Some(1.0), "{metrics}");

    // Both GPUs' checks are listed, by GPU.
    let r = attest(&d, &sim, &two, true);
    assert_eq!(r.code, 0, "{r}");
    for gpu in [0, 1] {
        for check in ["measurements", "nonce", "device chain", "CC state"] {
            assert!(
                r.stdout.contains(&format!("[pass] gpu[{gpu}] {check}")),
                "gpu[{gpu}] {check}:\n{r}"
            );
        }
    }
    // Three required: refused, naming the count.
    let r = attest(&d, &sim, &policy(&sim, 3), true);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("[FAIL] GPU count"), "{r}");
    // Simulated GPUs against NVIDIA's roots: refused.
    let r = attest(&d, &sim, &two, false);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("[FAIL] gpu[0] device chain"), "{r}");

    // While every GPU passes, the model is reached through connect.
    let roots = gpu_roots(&sim);
    let connect_args = [
        "--insecure-root",
        sim.root_str(),
        "--policy",
        path_str(&two),
        "--insecure-gpu-roots",
        roots.as_str(),
    ];
    let c = ConnectProc::start(&d.url(), &connect_args);
    let ok = http_get(&c.addr, "/v1/models").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    drop(c);
    assert_eq!(up.script.model_requests.load(Ordering::SeqCst), 1);

    // /readyz names the GPU and the check that failed; why, in the agent's log.
    for (state, readyz, client_check) in [
        ("devtools", "CC mode", "[FAIL] gpu[1] CC state"),
        ("cc-off", "CC mode", "[FAIL] GPU count"),
        (
            "bad-measurement",
            "measurements",
            "[FAIL] gpu[1] measurements",
        ),
        ("hang", "collection", "[FAIL] GPU evidence binding"),
    ] {
        sim.set_gpu_state(1, state);
        let detail = wait_gpu_ready(&d, &sim, false, Duration::from_secs(60)).await;
        assert!(detail.starts_with("gpu[1]"), "{state}: {detail}");
        assert!(detail.contains(readyz), "{state}: {detail}");
        let metrics = get(&d, &sim, "/metrics").await.text();
        assert_eq!(gpu_ok(&metrics, 1), Some(0.0), "{state}: {metrics}");
        // The agent refuses the model routes itself...
        let before = up.script.model_requests.load(Ordering::SeqCst);
        let refused = get(&d, &sim, "/v1/models").await;
        assert_eq!(refused.status, 503, "{state}: {}", refused.text());
        // ...and a client checking GPUs refuses the server, once its new certificate
        // (committing to the failing GPU's evidence, or to its absence) is served.
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = loop {
            let r = attest(&d, &sim, &two, true);
            if r.code == 1 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(r.code, 1, "{state}: {r}");
        assert!(r.stdout.contains(client_check), "{state}: {r}");
        let c = ConnectProc::start(&d.url(), &connect_args);
        let through = http_get(&c.addr, "/v1/models").await;
        assert_eq!(through.status, 502, "{state}: {}", through.text());
        drop(c);
        assert_eq!(
            up.script.model_requests.load(Ordering::SeqCst),
            before,
            "{state}: a request reached the model"
        );

        sim.set_gpu_state(1, "ok");
        wait_gpu_ready(&d, &sim, true, Duration::from_secs(60)).await;
    }
}

#[test]
fn gpus_the_config_says_nothing_about_stop_the_agent() {
    let sim = SimTd::with_gpus(1);
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--tee", "sim", "--sim-dir", sim.dir_str()];
        args.extend(["--listen", "127.0.0.1:0"]);
        args.extend_from_slice(extra);
        tdx_agent_within(&args, Duration::from_secs(60))
    };
    let r = serve(&[]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("[gpu]"), "{r}");
    // A --gpus value that is neither a number nor "all" is refused before anything starts.
    let r = serve(&["--gpus", "nine"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("--gpus"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_required_gpu_missing_is_named_and_all_means_every_gpu_found() {
    let sim = SimTd::with_gpus(1);
    let d = Daemon::sim(&sim, &["--gpus", "2"]);
    let detail = wait_gpu_ready(&d, &sim, false, Duration::from_secs(60)).await;
    assert!(
        detail.contains("a required GPU is missing: 1 found, 2 required"),
        "{detail}"
    );
    drop(d);
    // Another configuration needs another boot.
    let r = tdx_agent(&["sim", "reset", "--sim-dir", sim.dir_str()]);
    assert_eq!(r.code, 0, "{r}");
    let d = Daemon::sim(&sim, &["--gpus", "all"]);
    assert_eq!(
        wait_gpu_ready(&d, &sim, true, Duration::from_secs(60)).await,
        "1 GPUs attested"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_events_replay_and_a_restart_in_the_same_boot_does_not_extend_them_again() {
    let sim = SimTd::with_gpus(2);
    let config = gpu_config(&sim, &sim.tmp.path().join("agent"), 2, None);
    let mut d = start(&config);
    wait_gpu_ready(&d, &sim, true, Duration::from_secs(60)).await;
    let first = get(&d, &sim, WELL_KNOWN).await.json();
    let events = gpu_events(first["event_log"].as_str().unwrap());
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["event"]["data"]["cc_mode"], "on");
    let rtmr3 = sim.measurements()["rtmr3"].clone();
    d.stop();

    let d = start(&config);
    wait_gpu_ready(&d, &sim, true, Duration::from_secs(60)).await;
    let again = get(&d, &sim, WELL_KNOWN).await.json();
    assert_eq!(again["event_log"], first["event_log"]);
    assert_eq!(
        sim.measurements()["rtmr3"],
        rtmr3,
        "RTMR3 was extended again"
    );
    // The log replays to RTMR3 in the quote (the client's event log check).
    let r = attest(&d, &sim, &policy(&sim, 2), true);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("[pass] RTMR3 event log"), "{r}");
}

/// The TD report of an agent's served certificate, as a client makes it, with its claims.
fn td_report(sim: &SimTd, evidence: &serde_json::Value) -> (Report, tdx_core::ratls::Claims) {
    let cert = tdx_core::encoding::from_b64(evidence["certificate"].as_str().unwrap()).unwrap();
    let claims = tdx_core::ratls::certificate_claims(&cert).unwrap();
    let quote = tdx_core::encoding::from_b64(evidence["quote"].as_str().unwrap()).unwrap();
    let collateral = tdx_core::verify::Collateral::from_bundle_json(
        &evidence["collateral"].to_string(),
        "served",
    )
    .unwrap()
    .prepare()
    .unwrap();
    let mut report = tdx_core::verify::Verifier::with_insecure_root(sim.root_der()).appraise(
        &quote,
        &collateral,
        tdx_core::verify::time::now_unix(),
        &tdx_core::verify::Policy::default(),
        &tdx_core::verify::Expectations::default(),
    );
    let log = claims
        .event_log
        .as_deref()
        .map(|l| String::from_utf8(l.to_vec()).unwrap());
    tdx_core::verify::events::appraise_events(&mut report, log.as_deref(), &Default::default());
    (report, claims)
}

/// Appraise `gpus` (served evidence JSON) as the GPUs of `cert_evidence`'s certificate, with
/// the nonce derived from `nonce_spki`.
fn appraise_as(
    sim: &SimTd,
    cert_evidence: &serde_json::Value,
    gpus: &serde_json::Value,
    nonce_spki: &str,
) -> Report {
    let (mut report, claims) = td_report(sim, cert_evidence);
    let set = GpuEvidenceSet::from_json_value(gpus["gpu_evidence"].clone()).unwrap();
    let collateral =
        GpuCollateral::from_bundle_json(gpus["gpu_collateral"].to_string().as_bytes(), "served")
            .unwrap();
    let roots = GpuRoots::insecure_from_pem(&std::fs::read(gpu_roots(sim)).unwrap()).unwrap();
    let spki = tdx_core::encoding::hex_array::<32>(nonce_spki).unwrap();
    let log = claims
        .event_log
        .as_deref()
        .map(|l| String::from_utf8(l.to_vec()).unwrap());
    appraise_gpus(
        &mut report,
        &GpuVerifier::new(),
        &GpuPolicy {
            count: 2,
            ..GpuPolicy::default()
        },
        GpuInputs {
            claimed_digest: claims.gpu_evidence_sha256,
            evidence: Ok(&set),
            collateral: &collateral,
            nonce: tdx_core::gpu::nonce_for_certificate(&spki),
            event_log: log.as_deref(),
            roots: &roots,
            at: tdx_core::verify::time::now_unix(),
        },
    );
    report
}

fn failed(report: &Report) -> Vec<String> {
    report.failures().map(|c| c.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_evidence_is_bound_to_one_certificate_of_one_td() {
    let sim = SimTd::with_gpus(2);
    let config = gpu_config(&sim, &sim.tmp.path().join("agent"), 2, None);
    let d = start(&config);
    wait_gpu_ready(&d, &sim, true, Duration::from_secs(60)).await;
    let first = get(&d, &sim, WELL_KNOWN).await.json();
    let spki1 = first["spki_sha256"].as_str().unwrap().to_string();

    // The served evidence, as served: accepted.
    let ok = appraise_as(&sim, &first, &first, &spki1);
    assert!(ok.accepted(), "{}", ok.summary());

    // Another certificate of the same TD commits to other GPU evidence.
    let socket = sim.tmp.path().join("agent/run/admin.sock");
    let r = tdx_agent(&["admin", "--socket", path_str(&socket), "rotate"]);
    assert_eq!(r.code, 0, "{r}");
    let second = get(&d, &sim, WELL_KNOWN).await.json();
    let spki2 = second["spki_sha256"].as_str().unwrap().to_string();
    assert_ne!(spki1, spki2);
    let r = appraise_as(&sim, &second, &first, &spki2);
    assert_eq!(failed(&r), [CHECK_GPU_BINDING], "{}", r.summary());

    // Offline, from saved documents, as an auditor would: the served one passes, the same
    // certificate with the other certificate's GPU evidence does not.
    let roots = gpu_roots(&sim);
    let verify_doc = |doc: &serde_json::Value, name: &str| {
        let path = sim.tmp.path().join(name);
        std::fs::write(&path, doc.to_string()).unwrap();
        tdx_agent(&[
            "verify-evidence",
            path_str(&path),
            "--policy",
            path_str(&policy(&sim, 2)),
            "--insecure-root",
            sim.root_str(),
            "--insecure-gpu-roots",
            &roots,
        ])
    };
    let r = verify_doc(&second, "second.json");
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("[pass] gpu[1] CC state"), "{r}");
    let mut swapped = second.clone();
    swapped["gpu_evidence"] = first["gpu_evidence"].clone();
    let r = verify_doc(&swapped, "swapped.json");
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("[FAIL] GPU evidence binding"), "{r}");

    // Reports whose nonce is not the one derived from the certificate's key.
    let r = appraise_as(&sim, &second, &second, &spki1);
    assert_eq!(
        failed(&r),
        ["gpu[0] nonce", "gpu[1] nonce"],
        "{}",
        r.summary()
    );

    // Another TD's GPU evidence, served beside this TD's certificate.
    let other = SimTd::with_gpus(2);
    let config = gpu_config(&other, &other.tmp.path().join("agent"), 2, None);
    let d2 = start(&config);
    wait_gpu_ready(&d2, &other, true, Duration::from_secs(60)).await;
    let theirs = get(&d2, &other, WELL_KNOWN).await.json();
    let r = appraise_as(&sim, &second, &theirs, &spki2);
    assert_eq!(failed(&r), [CHECK_GPU_BINDING], "{}", r.summary());
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_challenge_batch_gets_one_report_per_gpu_bound_to_its_root() {
    let sim = SimTd::with_gpus(2);
    let config = gpu_config(&sim, &sim.tmp.path().join("agent"), 2, None);
    let d = start(&config);
    wait_gpu_ready(&d, &sim, true, Duration::from_secs(60)).await;
    let c = Https::connect(&d.addr, sim.root_der()).await.unwrap();
    let metrics = |text: &str| {
        (
            support::metric(text, "tdx_agent_gpu_reports_total{purpose=\"challenge\"}")
                .unwrap_or(0.0),
            support::metric(text, "tdx_agent_challenge_batch_size_count").unwrap_or(0.0),
        )
    };
    let (reports0, batches0) = metrics(&c.get("/metrics").await.text());
    // Concurrent challengers share batches; each batch costs one report per GPU.
    let mut answers = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40u8 {
        let c = c.clone();
        tasks.spawn(async move {
            let nonce = [i; 32];
            let body = serde_json::json!({ "nonce": tdx_core::encoding::b64(&nonce) });
            (
                nonce,
                c.post("/attestation/v1/challenge", body.to_string()).await,
            )
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (nonce, r) = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        answers.push((nonce, r.json()));
    }
    let (reports1, batches1) = metrics(&c.get("/metrics").await.text());
    let batches = batches1 - batches0;
    assert!(
        (1.0..40.0).contains(&batches),
        "{batches} batches for 40 challenges"
    );
    assert_eq!(reports1 - reports0, 2.0 * batches, "reports per batch");

    // Every answer verifies with its own batch's GPU evidence, and none with another's.
    let spki = c.spki_sha256();
    let parts = |a: &serde_json::Value| {
        let rd = tdx_core::encoding::hex_array::<64>(a["report_data"].as_str().unwrap()).unwrap();
        let proof: tdx_core::challenge::ProofJson =
            serde_json::from_value(a["proof"].clone()).unwrap();
        let set = GpuEvidenceSet::from_json_value(a["gpu_evidence"].clone()).unwrap();
        assert_eq!(set.gpus().len(), 2);
        (
            rd,
            tdx_core::challenge::Proof::try_from(proof).unwrap(),
            set.digest(),
        )
    };
    let (first_nonce, first) = &answers[0];
    let (rd, proof, digest) = parts(first);
    tdx_core::challenge::verify_challenge_bound(first_nonce, &spki, &rd, &proof, Some(&digest))
        .unwrap();
    let other = answers
        .iter()
        .find(|(_, a)| a["root"] != first["root"])
        .map(|(_, a)| parts(a).2);
    if let Some(other_digest) = other {
        assert_eq!(
            tdx_core::challenge::verify_challenge_bound(
                first_nonce,
                &spki,
                &rd,
                &proof,
                Some(&other_digest)
            ),
            Err(tdx_core::challenge::ChallengeError::RootMismatch)
        );
    }
    // A later batch's evidence under this answer's quote: refused too.
    let body = serde_json::json!({ "nonce": tdx_core::encoding::b64(&[99u8; 32]) });
    let later = c
        .post("/attestation/v1/challenge", body.to_string())
        .await
        .json();
    let (_, _, later_digest) = parts(&later);
    assert_ne!(later_digest, digest);
    assert_eq!(
        tdx_core::challenge::verify_challenge_bound(
            first_nonce,
            &spki,
            &rd,
            &proof,
            Some(&later_digest)
        ),
        Err(tdx_core::challenge::ChallengeError::RootMismatch)
    );

    // attest --nonce checks the batch's GPUs by name.
    let r = attest(&d, &sim, &policy(&sim, 2), true);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("[pass] challenge GPUs"), "{r}");
    assert!(r.stdout.contains("[pass] challenge proof"), "{r}");
}

/// `watch` archives GPU evidence (the certificate's and each challenge batch's) and `evidence
/// reverify` re-runs the GPU checks offline: the records from before and after a GPU left
/// CC mode agree with their recorded verdicts under the roots they were made with, and not
/// under NVIDIA's.
#[tokio::test(flavor = "multi_thread")]
async fn watch_archives_gpu_evidence_and_reverify_rechecks_it() {
    let sim = SimTd::with_gpus(2);
    let dir = sim.tmp.path().join("agent");
    let config = gpu_config(&sim, &dir, 2, None);
    let agent = start(&config);
    wait_gpu_ready(&agent, &sim, true, Duration::from_secs(60)).await;
    let db = sim.tmp.path().join("watch.db");
    let watch_config = sim.tmp.path().join("watch.toml");
    std::fs::write(
        &watch_config,
        format!(
            "archive = \"{}\"\nlisten = \"127.0.0.1:0\"\n[[target]]\nname = \"gpus\"\nurl = \"{}\"\npolicy = \"{}\"\ninsecure_root = \"{}\"\ninsecure_gpu_roots = \"{}\"\ninterval_secs = 1\n",
            path_str(&db),
            agent.url(),
            path_str(&policy(&sim, 2)),
            sim.root_str(),
            gpu_roots(&sim),
        ),
    )
    .unwrap();
    let mut watch = support::spawn_watch(&watch_config);
    let wait = |ok: &'static (dyn Fn(&str) -> bool + Sync)| {
        let addr = watch.addr.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let text = http_get(&addr, "/metrics").await.text();
                if ok(&text) {
                    return;
                }
                assert!(Instant::now() < deadline, "{text}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait(&|t| metric(t, "tdx_watch_last_result{target=\"gpus\"}") == Some(1.0)).await;
    sim.set_gpu_state(1, "devtools");
    // Recorded as a GPU failure (before that, RTMR3 moving with the new `gpu` event may
    // fail an appraisal on `challenge from the same TD` until the certificate follows).
    wait(&|t| {
        t.lines().any(|l| {
            l.starts_with("tdx_watch_failures_total{target=\"gpus\",check=\"gpu[1]")
                || l.starts_with("tdx_watch_failures_total{target=\"gpus\",check=\"GPU")
        })
    })
    .await;
    watch.stop();
    let r = tdx_agent(&["evidence", "export", path_str(&db)]);
    let gpu_failures = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| {
            v["verdict"] == "rejected"
                && v["failed_check"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("gpu[1]") || c.starts_with("GPU"))
        })
        .count();
    assert!(gpu_failures > 0, "no record of GPU 1 leaving CC mode: {r}");

    let reverify = |gpu_roots: Option<&str>| {
        let mut args = vec![
            "evidence",
            "reverify",
            path_str(&db),
            "--insecure-root",
            sim.root_str(),
        ];
        if let Some(r) = gpu_roots {
            args.extend(["--insecure-gpu-roots", r]);
        }
        tdx_agent(&args)
    };
    // The passing records and the GPU failures alike agree when re-appraised offline.
    let roots = gpu_roots(&sim);
    let r = reverify(Some(&roots));
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains(", 0 disagree"), "{r}");
    // Under NVIDIA's roots instead of the simulation's, every GPU check fails: the records
    // that passed now disagree, naming a GPU check.
    let r = reverify(None);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("recorded accepted, now rejected (gpu["),
        "{r}"
    );
}

/// Simulated GPUs whose collateral comes through the fetching path NVML's GPUs use: the
/// RIMs from a RIM service and the OCSP answers from a responder, here the simulation's as
/// `sim pccs` serves them, cached on disk; the client accepts both GPUs.
#[tokio::test(flavor = "multi_thread")]
async fn simulated_gpus_collateral_can_come_from_the_services_sim_pccs_serves() {
    let sim = SimTd::with_gpus(2);
    let pccs = support::SimPccs::start(sim.dir_str(), "127.0.0.1:0");
    let dir = sim.tmp.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("gpu-cache");
    let config = sim_config(
        &sim,
        &dir,
        "",
        &format!(
            "\n[gpu]\nrequired = 2\nsource = \"sim\"\ntimeout_secs = 2\ncache_dir = \"{}\"\nrim_service = \"{}\"\nocsp_responder = \"{}/ocsp\"\n",
            path_str(&cache),
            pccs.url,
            pccs.url
        ),
    );
    let agent = start(&config);
    wait_gpu_ready(&agent, &sim, true, Duration::from_secs(60)).await;
    let r = attest(&agent, &sim, &policy(&sim, 2), true);
    assert_eq!(r.code, 0, "{r}");
    // Fetched and cached: both RIMs and OCSP answers are on disk under the cache.
    let files = |kind: &str| {
        std::fs::read_dir(cache.join("gpu").join(kind))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(
        files("rim"),
        2,
        "the RIMs were not fetched from the service"
    );
    assert!(files("ocsp") > 0, "no OCSP answer was fetched");
}

/// `gpu-collateral` gathers a GPU's RIMs and fresh OCSP answers from the services (here the
/// simulation's, as `sim pccs` serves them) into one bundle, with which `verify-gpu` appraises
/// the evidence offline; without it the same evidence has no reference values to pass.
#[tokio::test(flavor = "multi_thread")]
async fn gpu_collateral_gathers_a_bundle_verify_gpu_accepts() {
    let sim = SimTd::with_gpus(1);
    let pccs = support::SimPccs::start(sim.dir_str(), "127.0.0.1:0");
    let agent = start(&gpu_config(&sim, &sim.tmp.path().join("agent"), 1, None));
    wait_gpu_ready(&agent, &sim, true, Duration::from_secs(60)).await;
    // One GPU's evidence as the agent serves it, and the nonce it answers.
    let doc = get(&agent, &sim, WELL_KNOWN).await.json();
    let set = GpuEvidenceSet::from_json_value(doc["gpu_evidence"].clone()).unwrap();
    let gpu = &set.gpus()[0];
    let spki = tdx_core::encoding::hex_array::<32>(doc["spki_sha256"].as_str().unwrap()).unwrap();
    let nonce = tdx_core::encoding::hex(&tdx_core::gpu::nonce_for_certificate(&spki));
    let dir = sim.tmp.path();
    let (report, chain, bundle) = (
        dir.join("report.bin"),
        dir.join("chain.pem"),
        dir.join("bundle.json"),
    );
    std::fs::write(&report, &gpu.report).unwrap();
    std::fs::write(&chain, &gpu.chain_pem).unwrap();
    let roots = gpu_roots(&sim);
    let ocsp = format!("{}/ocsp", pccs.url);
    let r = tdx_agent(&[
        "gpu-collateral",
        "--report",
        path_str(&report),
        "--chain",
        path_str(&chain),
        "--rim-service",
        &pccs.url,
        "--ocsp-responder",
        &ocsp,
        "--insecure-gpu-roots",
        &roots,
        "--out",
        path_str(&bundle),
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stderr.contains("2 RIMs"), "{r}");
    let verify = |collateral: Option<&Path>| {
        let mut args = vec![
            "verify-gpu",
            "--report",
            path_str(&report),
            "--chain",
            path_str(&chain),
            "--expect-nonce",
            &nonce,
            "--insecure-gpu-roots",
            &roots,
        ];
        if let Some(c) = collateral {
            args.extend(["--collateral", path_str(c)]);
        }
        tdx_agent(&args)
    };
    let r = verify(Some(&bundle));
    assert_eq!(r.code, 0, "{r}");
    let r = verify(None);
    assert_eq!(r.code, 1, "{r}");
    // Usage: one chain per report.
    let r = tdx_agent(&[
        "gpu-collateral",
        "--report",
        path_str(&report),
        "--chain",
        path_str(&chain),
        "--chain",
        path_str(&chain),
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("one chain per report"), "{r}");
}
