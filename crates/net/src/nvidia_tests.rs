//! The GPU collateral fetcher against the simulated RIM service and OCSP responder: what it
//! gathers verifies with revocation checked, the disk cache serves it again with the services
//! gone, a local RIM directory is used before any network, and failures name the RIM. Also
//! what a round must survive: answers that do not parse (never cached), shared collateral
//! (fetched once), a responder that hangs (asked once, then the cache), the round's deadline,
//! one GPU's bad evidence (blamed on it alone), and files that are not small regular files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tdx_core::gpu::{
    Architecture, GpuEvidenceRef, GpuPolicy, GpuRoots, SpdmReport, rim_ids, verify_gpu,
};
use tdx_sim::gpu::{SIM_RIM_NOT_AFTER, SimGpu, SimGpuPki, SimRimKind};
use tdx_sim::gpu_services::SimGpuServices;

use super::nvidia::*;

/// What the services do with the next requests of one kind: what the simulation answers,
/// a fixed answer, or nothing ever (a responder that drops packets).
#[derive(Clone)]
enum Mode {
    Sim,
    Fixed(u16, Vec<u8>),
    Hang,
}

/// The test's hold on the services: what each kind answers and how many requests came.
struct Control {
    rim: Mutex<Mode>,
    ocsp: Mutex<Mode>,
    rim_requests: AtomicUsize,
    ocsp_requests: AtomicUsize,
}

impl Control {
    fn set(&self, rim: Option<Mode>, ocsp: Option<Mode>) {
        if let Some(m) = rim {
            *self.rim.lock().unwrap() = m;
        }
        if let Some(m) = ocsp {
            *self.ocsp.lock().unwrap() = m;
        }
    }

    /// (RIM requests, OCSP requests) since the last call.
    fn take_counts(&self) -> (usize, usize) {
        (
            self.rim_requests.swap(0, Ordering::SeqCst),
            self.ocsp_requests.swap(0, Ordering::SeqCst),
        )
    }
}

async fn intercept(State(c): State<Arc<Control>>, request: Request, next: Next) -> Response {
    let (counter, mode) = if request.uri().path().starts_with("/v1/rim/") {
        (&c.rim_requests, c.rim.lock().unwrap().clone())
    } else {
        (&c.ocsp_requests, c.ocsp.lock().unwrap().clone())
    };
    counter.fetch_add(1, Ordering::SeqCst);
    match mode {
        Mode::Sim => next.run(request).await,
        Mode::Fixed(status, body) => {
            (axum::http::StatusCode::from_u16(status).unwrap(), body).into_response()
        }
        Mode::Hang => std::future::pending().await,
    }
}

struct Fixture {
    report: Vec<u8>,
    chain: Vec<u8>,
    nonce: [u8; 32],
    roots: GpuRoots,
    rims: HashMap<String, Vec<u8>>,
    driver_id: String,
    base: String,
    control: Arc<Control>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Fixture {
    fn services(&self, cache: Option<&std::path::Path>) -> NvidiaServices {
        NvidiaServices::new(
            &self.base,
            &format!("{}/ocsp", self.base),
            cache.map(std::path::Path::to_path_buf),
            None,
        )
        .unwrap()
    }

    fn evidence(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![(self.report.clone(), self.chain.clone())]
    }
}

async fn fixture(serve_rims: bool) -> Fixture {
    let arch = Architecture::Hopper;
    let pki = SimGpuPki::generate(arch, SIM_RIM_NOT_AFTER).unwrap();
    let gpu = SimGpu::typical(arch, "fetch");
    let nonce = [5u8; 32];
    let report = pki.report(&gpu, &nonce).unwrap();
    let (driver_id, vbios_id) = rim_ids(&SpdmReport::parse(&report).unwrap(), Some(arch));
    let driver_id = driver_id.unwrap();
    let mut rims = HashMap::new();
    rims.insert(
        driver_id.clone(),
        pki.sign_rim(&gpu.rim(SimRimKind::Driver, arch)).unwrap(),
    );
    rims.insert(
        vbios_id.unwrap(),
        pki.sign_rim(&gpu.rim(SimRimKind::Vbios, arch)).unwrap(),
    );
    let roots = GpuRoots::insecure_from_pem(pki.roots_pem().as_bytes()).unwrap();
    let chain = pki.chain_pem().into_bytes();
    let services = Arc::new(SimGpuServices {
        pki,
        rims: if serve_rims {
            rims.clone()
        } else {
            HashMap::new()
        },
    });
    let control = Arc::new(Control {
        rim: Mutex::new(Mode::Sim),
        ocsp: Mutex::new(Mode::Sim),
        rim_requests: AtomicUsize::new(0),
        ocsp_requests: AtomicUsize::new(0),
    });
    let router = tdx_sim::gpu_services::router(services).layer(
        axum::middleware::from_fn_with_state(Arc::clone(&control), intercept),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Fixture {
        report,
        chain,
        nonce,
        roots,
        rims,
        driver_id,
        base,
        control,
        stop,
        server,
    }
}

fn appraise(f: &Fixture, c: &tdx_core::gpu::GpuCollateral) -> tdx_core::gpu::GpuReport {
    verify_gpu(
        GpuEvidenceRef {
            report: &f.report,
            chain_pem: &f.chain,
        },
        &f.nonce,
        c,
        &GpuPolicy::default(),
        &f.roots,
        tdx_core::verify::time::now_unix(),
    )
}

#[tokio::test]
async fn fetched_collateral_verifies_with_revocation_and_is_served_from_the_cache_later() {
    let f = fixture(true).await;
    let cache = tempfile::tempdir().unwrap();
    let services = NvidiaServices::new(
        &f.base,
        &format!("{}/ocsp", f.base),
        Some(cache.path().to_path_buf()),
        None,
    )
    .unwrap();
    let now = tdx_core::verify::time::now_unix();
    let evidence = vec![(f.report.clone(), f.chain.clone())];
    let c = services
        .collateral_for(&evidence, &f.roots, now, 3600)
        .await
        .unwrap();
    assert_eq!(c.rims.len(), 2);
    assert_eq!(
        c.ocsp.len(),
        6,
        "device chain 1..3 and RIM chains 0..2 (shared by both RIMs)"
    );
    let r = appraise(&f, &c);
    assert!(r.accepted(), "{}", r.render_text());
    assert!(r.check_named("GPU device chain revocation").unwrap().ok);
    assert!(r.skipped().is_empty());

    // The bundle round-trips through its JSON form.
    let again =
        tdx_core::gpu::GpuCollateral::from_bundle_json(c.to_bundle_json().as_bytes(), "b").unwrap();
    assert_eq!(again, c);

    // With the services gone, the cache still has everything (answers are fresh enough).
    let _ = f.stop.send(());
    f.server.await.unwrap().unwrap();
    let cached = services
        .collateral_for(&evidence, &f.roots, now, 3600)
        .await
        .unwrap();
    assert_eq!(cached, c);
}

#[tokio::test]
async fn a_local_rim_directory_comes_before_the_service_and_a_missing_rim_is_named() {
    let f = fixture(false).await;
    let services = NvidiaServices::new(&f.base, &format!("{}/ocsp", f.base), None, None).unwrap();
    let now = tdx_core::verify::time::now_unix();
    let evidence = vec![(f.report.clone(), f.chain.clone())];
    let err = services
        .collateral_for(&evidence, &f.roots, now, 3600)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("NV_GPU_DRIVER_GH100_595.71.05"), "{msg}");
    assert!(msg.contains("no such RIM"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    for (id, xml) in &f.rims {
        std::fs::write(dir.path().join(format!("{id}.xml")), xml).unwrap();
    }
    let services = NvidiaServices::new(
        &f.base,
        &format!("{}/ocsp", f.base),
        None,
        Some(dir.path().to_path_buf()),
    )
    .unwrap();
    let c = services
        .collateral_for(&evidence, &f.roots, now, 3600)
        .await
        .unwrap();
    assert!(appraise(&f, &c).accepted());
    let _ = f.stop.send(());
}

#[test]
fn ids_that_are_not_rim_service_ids_and_bad_urls_are_refused() {
    assert!(NvidiaServices::new("ftp://x", "http://127.0.0.1:1", None, None).is_err());
    assert!(rim_from_service_json(b"{\"rim\": 3}").is_err());
    assert_eq!(
        rim_from_service_json(b"{\"rim\": \"PGE+\"}").unwrap(),
        b"<a>"
    );
}

#[tokio::test]
async fn a_path_in_a_rim_id_never_reaches_the_disk_or_the_network() {
    let services =
        NvidiaServices::new("http://127.0.0.1:1", "http://127.0.0.1:1", None, None).unwrap();
    let err = services.rim("NV_GPU_../../etc/passwd").await.unwrap_err();
    assert!(err.to_string().contains("not a RIM service id"), "{err}");
}

/// The OCSP cache's answers, by file name.
fn cached_answers(cache: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let dir = cache.join("gpu/ocsp");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A responder's failures, as RFC 6960 responders and proxies send them: with HTTP 200.
const TRY_LATER: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x03];
const INTERNAL_ERROR: &[u8] = &[0x30, 0x03, 0x0a, 0x01, 0x02];
const PROXY_PAGE: &[u8] = b"<html><body>Please log in to continue</body></html>";

#[tokio::test]
async fn an_answer_that_is_not_a_successful_ocsp_response_is_never_cached_and_the_cache_stands_in()
{
    let f = fixture(true).await;
    let cache = tempfile::tempdir().unwrap();
    let services = f.services(Some(cache.path()));
    let now = tdx_core::verify::time::now_unix();
    let good = services
        .collateral_for(&f.evidence(), &f.roots, now, 3600)
        .await
        .unwrap();
    let cached = cached_answers(cache.path());
    assert_eq!(cached.len(), 6);

    // Due for a refresh (older than half the age) but still inside it: each bad 200 leaves
    // the cache as it was and the cached answers are served.
    for bad in [TRY_LATER, INTERNAL_ERROR, PROXY_PAGE] {
        f.control.set(None, Some(Mode::Fixed(200, bad.to_vec())));
        let c = services
            .collateral_for(&f.evidence(), &f.roots, now + 2000, 3600)
            .await
            .unwrap();
        assert!(
            !c.ocsp.iter().any(|a| a == bad),
            "a bad answer was returned"
        );
        assert!(c == good, "the cached answers were not what was served");
        assert!(
            cached_answers(cache.path()) == cached,
            "the cache was overwritten"
        );
    }

    // Past the policy's age, nothing stands in: the error says what the responder said.
    f.control
        .set(None, Some(Mode::Fixed(200, TRY_LATER.to_vec())));
    let err = services
        .collateral_for(&f.evidence(), &f.roots, now + 4000, 3600)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tryLater"), "{err}");
    assert!(err.contains("older than the policy's"), "{err}");
    assert!(
        cached_answers(cache.path()) == cached,
        "the cache was overwritten"
    );
    let _ = f.stop.send(());
}

#[tokio::test]
async fn a_rim_answer_that_does_not_parse_is_never_cached_and_a_bad_cached_rim_is_replaced() {
    let f = fixture(true).await;
    let cache = tempfile::tempdir().unwrap();
    let services = f.services(Some(cache.path()));
    let now = tdx_core::verify::time::now_unix();
    let rim_file = cache
        .path()
        .join("gpu/rim")
        .join(format!("{}.xml", f.driver_id));

    // `{"rim": ""}` and truncated XML: refused, naming the RIM, and nothing cached.
    let whole = f.rims[&f.driver_id].clone();
    let truncated = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        &whole[..whole.len() / 2],
    );
    for body in [
        "{\"rim\": \"\"}".to_string(),
        format!("{{\"rim\": \"{truncated}\"}}"),
    ] {
        f.control
            .set(Some(Mode::Fixed(200, body.into_bytes())), None);
        let err = services
            .collateral_for(&f.evidence(), &f.roots, now, 3600)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&f.driver_id), "{err}");
        assert!(err.contains("does not parse"), "{err}");
        assert!(!rim_file.exists());
    }

    // The service recovers: the next round has the RIM, and caches it.
    f.control.set(Some(Mode::Sim), None);
    let good = services
        .collateral_for(&f.evidence(), &f.roots, now, 3600)
        .await
        .unwrap();
    assert!(appraise(&f, &good).accepted());
    assert_eq!(std::fs::read(&rim_file).unwrap(), whole);

    // A cached copy that does not parse is removed and fetched again.
    std::fs::write(&rim_file, &whole[..whole.len() / 2]).unwrap();
    f.control.take_counts();
    let again = services
        .collateral_for(&f.evidence(), &f.roots, now, 3600)
        .await
        .unwrap();
    assert!(again == good, "the refetched RIM differs");
    assert_eq!(
        f.control.take_counts().0,
        1,
        "the bad cached RIM is fetched again"
    );
    assert_eq!(std::fs::read(&rim_file).unwrap(), whole);

    // ... and when the service is down too, the error names the cache file.
    std::fs::write(&rim_file, b"<SoftwareIdentity").unwrap();
    f.control.set(Some(Mode::Fixed(503, Vec::new())), None);
    let err = services
        .collateral_for(&f.evidence(), &f.roots, now, 3600)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&rim_file.display().to_string()), "{err}");
    assert!(err.contains("did not parse"), "{err}");
    assert!(!rim_file.exists());
    let _ = f.stop.send(());
}

#[tokio::test]
async fn what_gpus_share_is_fetched_once_per_round() {
    let f = fixture(true).await;
    // No cache: only the round itself can keep the second GPU from asking again.
    let services = f.services(None);
    let now = tdx_core::verify::time::now_unix();
    let evidence = vec![
        (f.report.clone(), f.chain.clone()),
        (f.report.clone(), f.chain.clone()),
        (f.report.clone(), f.chain.clone()),
    ];
    let per_gpu = services
        .collateral_per_gpu(&evidence, &f.roots, now, 3600)
        .await;
    assert_eq!(per_gpu.len(), 3);
    for c in &per_gpu {
        assert!(appraise(&f, c.as_ref().unwrap()).accepted());
    }
    assert_eq!(
        f.control.take_counts(),
        (2, 6),
        "two RIMs and six certificates' answers, each asked for once"
    );

    // A RIM the service lacks is asked for once too, and blamed on every GPU that needs it.
    let f = fixture(false).await;
    let services = f.services(None);
    let evidence = vec![f.evidence().remove(0), f.evidence().remove(0)];
    let per_gpu = services
        .collateral_per_gpu(&evidence, &f.roots, now, 3600)
        .await;
    for c in per_gpu {
        let err = c.unwrap_err().to_string();
        assert!(err.contains("no such RIM"), "{err}");
    }
    assert_eq!(f.control.take_counts().0, 1);
}

#[tokio::test]
async fn a_responder_that_hangs_is_asked_once_per_round_and_the_cache_stands_in() {
    let f = fixture(true).await;
    let cache = tempfile::tempdir().unwrap();
    let now = tdx_core::verify::time::now_unix();
    let good = f
        .services(Some(cache.path()))
        .collateral_for(&f.evidence(), &f.roots, now, 3600)
        .await
        .unwrap();
    f.control.take_counts();

    f.control.set(None, Some(Mode::Hang));
    let services = f
        .services(Some(cache.path()))
        .with_limits(Duration::from_millis(200), Duration::from_secs(60));
    // Every answer is due for a refresh: six certificates, one timeout.
    let c = services
        .collateral_for(&f.evidence(), &f.roots, now + 2000, 3600)
        .await
        .unwrap();
    assert!(c == good, "the cached answers were not what was served");
    let (_, ocsp) = f.control.take_counts();
    assert!(
        ocsp <= 1,
        "{ocsp} requests to a responder that had timed out"
    );

    // Nothing cached: the error names the certificate and the timeout.
    let services = f
        .services(None)
        .with_limits(Duration::from_millis(200), Duration::from_secs(60));
    let err = services
        .collateral_for(&f.evidence(), &f.roots, now, 3600)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("OCSP for CN="), "{err}");
    assert!(err.contains("no complete answer within 0.2 s"), "{err}");
}

#[tokio::test]
async fn a_round_ends_at_its_deadline_naming_everything_still_missing() {
    let f = fixture(true).await;
    f.control.set(None, Some(Mode::Hang));
    let services = f
        .services(None)
        .with_limits(Duration::from_secs(30), Duration::from_millis(300));
    let evidence = vec![
        (f.report.clone(), f.chain.clone()),
        (f.report.clone(), f.chain.clone()),
    ];
    let now = tdx_core::verify::time::now_unix();
    // A guard against a round that never ends, not a timing assertion: the round's own
    // deadline is far shorter.
    let per_gpu = tokio::time::timeout(
        Duration::from_secs(20),
        services.collateral_per_gpu(&evidence, &f.roots, now, 3600),
    )
    .await
    .expect("the round outlived its deadline");
    for c in per_gpu {
        let err = c.unwrap_err().to_string();
        assert!(err.contains("within the round's 0.3 s"), "{err}");
        assert!(err.contains("still missing"), "{err}");
        // The device chain's three answers, and both RIMs: asked for after the deadline,
        // so not asked for at all (their signing chains are not known without them).
        assert_eq!(err.matches("the OCSP answer for CN=").count(), 3, "{err}");
        assert_eq!(err.matches("RIM NV_GPU_").count(), 2, "{err}");
    }
}

#[tokio::test]
async fn bad_evidence_of_one_gpu_is_blamed_on_that_gpu_alone() {
    let f = fixture(true).await;
    let services = f.services(None);
    let now = tdx_core::verify::time::now_unix();
    let first_cert_only = {
        let text = String::from_utf8(f.chain.clone()).unwrap();
        let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
        text.as_bytes()[..end].to_vec()
    };
    let evidence = vec![
        (f.report.clone(), f.chain.clone()),
        (f.report.clone(), first_cert_only),
        (f.report.clone(), f.chain.clone()),
    ];
    let per_gpu = services
        .collateral_per_gpu(&evidence, &f.roots, now, 3600)
        .await;
    assert!(appraise(&f, per_gpu[0].as_ref().unwrap()).accepted());
    assert!(per_gpu[2].is_ok());
    let err = per_gpu[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("1 certificates in the chain"), "{err}");

    let err = services
        .collateral_for(&evidence, &f.roots, now, 3600)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("GPU 1 of the evidence: GPU evidence: 1 certificates"),
        "{err}"
    );
    assert!(!err.contains("GPU 0") && !err.contains("GPU 2"), "{err}");
    let _ = f.stop.send(());
}

#[tokio::test]
async fn local_rims_and_cache_files_must_be_small_regular_files() {
    let f = fixture(false).await;
    let now = tdx_core::verify::time::now_unix();
    let guard = Duration::from_secs(20);
    let mkfifo = |path: &std::path::Path| {
        let ok = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo {}", path.display());
    };

    // A FIFO in the RIM directory: refused by name, not read (which would block forever).
    let dir = tempfile::tempdir().unwrap();
    for (id, xml) in &f.rims {
        std::fs::write(dir.path().join(format!("{id}.xml")), xml).unwrap();
    }
    let fifo = dir.path().join(format!("{}.xml", f.driver_id));
    std::fs::remove_file(&fifo).unwrap();
    mkfifo(&fifo);
    let services = NvidiaServices::new(
        &f.base,
        &format!("{}/ocsp", f.base),
        None,
        Some(dir.path().to_path_buf()),
    )
    .unwrap();
    let err = tokio::time::timeout(
        guard,
        services.collateral_for(&f.evidence(), &f.roots, now, 3600),
    )
    .await
    .expect("a FIFO in the RIM directory blocked the round")
    .unwrap_err()
    .to_string();
    assert!(err.contains(&fifo.display().to_string()), "{err}");
    assert!(err.contains("not a regular file"), "{err}");

    // A file above the limit: refused by name.
    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, vec![b' '; (1 << 20) + 1]).unwrap();
    let err = services
        .collateral_for(&f.evidence(), &f.roots, now, 3600)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&fifo.display().to_string()), "{err}");
    assert!(err.contains("larger than 1048576 bytes"), "{err}");

    // A FIFO in the cache where an answer would be.
    std::fs::write(&fifo, &f.rims[&f.driver_id]).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let services = NvidiaServices::new(
        &f.base,
        &format!("{}/ocsp", f.base),
        Some(cache.path().to_path_buf()),
        Some(dir.path().to_path_buf()),
    )
    .unwrap();
    services
        .collateral_for(&f.evidence(), &f.roots, now, 3600)
        .await
        .unwrap();
    let (name, _) = cached_answers(cache.path()).remove(0);
    let answer = cache.path().join("gpu/ocsp").join(name);
    std::fs::remove_file(&answer).unwrap();
    mkfifo(&answer);
    let err = tokio::time::timeout(
        guard,
        services.collateral_for(&f.evidence(), &f.roots, now, 3600),
    )
    .await
    .expect("a FIFO in the cache blocked the round")
    .unwrap_err()
    .to_string();
    assert!(err.contains(&answer.display().to_string()), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    let _ = f.stop.send(());
}
