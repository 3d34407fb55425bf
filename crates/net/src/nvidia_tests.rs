//! The GPU collateral fetcher against the simulated RIM service and OCSP responder: what it
//! gathers verifies with revocation checked, the disk cache serves it again with the services
//! gone, a local RIM directory is used before any network, and failures name the RIM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use tdx_core::gpu::{
    Architecture, GpuEvidenceRef, GpuPolicy, GpuRoots, SpdmReport, rim_ids, verify_gpu,
};
use tdx_sim::gpu::{SIM_RIM_NOT_AFTER, SimGpu, SimGpuPki, SimRimKind};
use tdx_sim::gpu_services::SimGpuServices;

use super::nvidia::*;

struct Fixture {
    report: Vec<u8>,
    chain: Vec<u8>,
    nonce: [u8; 32],
    roots: GpuRoots,
    rims: HashMap<String, Vec<u8>>,
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn fixture(serve_rims: bool) -> Fixture {
    let arch = Architecture::Hopper;
    let pki = SimGpuPki::generate(arch, SIM_RIM_NOT_AFTER).unwrap();
    let gpu = SimGpu::typical(arch, "fetch");
    let nonce = [5u8; 32];
    let report = pki.report(&gpu, &nonce).unwrap();
    let (driver_id, vbios_id) = rim_ids(&SpdmReport::parse(&report).unwrap(), Some(arch));
    let mut rims = HashMap::new();
    rims.insert(
        driver_id.unwrap(),
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tdx_sim::gpu_services::serve(listener, services, async {
        let _ = stopped.await;
    }));
    Fixture {
        report,
        chain,
        nonce,
        roots,
        rims,
        base,
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
