//! A round of the GPU attester against the simulated NVIDIA services, with GPUs scripted in
//! the test: answers the responder signs during the round verify (they are dated after the
//! round began), one GPU's missing collateral fails that GPU alone, and a verifier that
//! panics fails its GPU naming the verifier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tdx_core::gpu::{Architecture, CcMode, GpuPolicy, GpuRoots, GpuVerifier, SpdmReport, rim_ids};
use tdx_gpu::{CollectedGpu, Collector, GpuSource, GpuSourceError, RawEvidence};
use tdx_sim::gpu::{SIM_RIM_NOT_AFTER, SimGpu, SimGpuPki, SimRimKind};
use tdx_sim::gpu_services::SimGpuServices;

use super::*;
use crate::config::GpuRequired;

/// GPUs that answer with reports of the simulated PKI over the nonce asked for.
struct Scripted {
    pki: SimGpuPki,
    gpus: Vec<SimGpu>,
}

impl GpuSource for Scripted {
    fn describe(&self) -> String {
        "scripted GPUs".into()
    }

    fn count(&mut self) -> Result<u32, GpuSourceError> {
        Ok(u32::try_from(self.gpus.len()).unwrap())
    }

    fn collect(&mut self, index: u32, nonce: &[u8; 32]) -> Result<CollectedGpu, GpuSourceError> {
        let gpu = &self.gpus[index as usize];
        let report = self
            .pki
            .report(gpu, nonce)
            .map_err(|e| GpuSourceError::new(Some(index), "report", e))?;
        Ok(CollectedGpu {
            index,
            uuid: format!("GPU-test-{index}"),
            driver_version: gpu.driver_version.clone(),
            vbios_version: gpu.vbios_version.clone(),
            cc_mode: CcMode::On,
            ready: true,
            protected_pcie: false,
            evidence: Some(RawEvidence {
                report,
                chain_pem: self.pki.chain_pem().into_bytes(),
            }),
        })
    }
}

/// An attester over `gpus`, whose collateral comes from the simulated services over HTTP
/// (the path NVML's GPUs take) with a cold cache. The services have the RIMs of the first GPU.
async fn attester(gpus: Vec<SimGpu>, dir: &std::path::Path) -> GpuAttester {
    let arch = Architecture::Hopper;
    let pki = SimGpuPki::generate(arch, SIM_RIM_NOT_AFTER).unwrap();
    pki.save(&dir.join("pki")).unwrap();
    let first = &gpus[0];
    let (driver_id, vbios_id) = rim_ids(
        &SpdmReport::parse(&pki.report(first, &[0; 32]).unwrap()).unwrap(),
        Some(arch),
    );
    let mut rims = HashMap::new();
    rims.insert(
        driver_id.unwrap(),
        pki.sign_rim(&first.rim(SimRimKind::Driver, arch)).unwrap(),
    );
    rims.insert(
        vbios_id.unwrap(),
        pki.sign_rim(&first.rim(SimRimKind::Vbios, arch)).unwrap(),
    );
    let roots = GpuRoots::insecure_from_pem(pki.roots_pem().as_bytes()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let services = Arc::new(SimGpuServices {
        pki: SimGpuPki::load(&dir.join("pki")).unwrap(),
        rims,
    });
    tokio::spawn(tdx_sim::gpu_services::serve(
        listener,
        services,
        std::future::pending(),
    ));
    let collector = Collector::open(
        move || Ok(Box::new(Scripted { pki, gpus }) as Box<dyn GpuSource>),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    GpuAttester {
        collector,
        required: GpuRequired::All,
        verifier: Arc::new(GpuVerifier::new()),
        roots: Arc::new(roots),
        policy: Arc::new(GpuPolicy::default()),
        collateral: CollateralSource::Nvidia(Box::new(
            tdx_net::nvidia::NvidiaServices::new(
                &base,
                &format!("{base}/ocsp"),
                Some(dir.join("cache")),
                None,
            )
            .unwrap(),
        )),
        recheck: Duration::from_secs(60),
    }
}

fn metrics() -> super::super::metrics::Metrics {
    super::super::metrics::Metrics::new(1)
}

#[tokio::test]
async fn answers_signed_after_the_round_began_verify() {
    let dir = tempfile::tempdir().unwrap();
    let a = attester(vec![SimGpu::typical(Architecture::Hopper, "a")], dir.path()).await;
    // The round began 100 s before the responder signs (NVML slow to answer, a wait for the
    // issuing lock): the simulated responder dates its answers at the wall clock, as
    // NVIDIA's does, so each is later than the round's start.
    let began = tdx_core::verify::time::now_unix() - 100;
    let round = a.attest([7; 32], began, &metrics()).await;
    assert_eq!(round.failure, None, "{:?}", round.gpus);
    assert!(round.gpus[0].ok, "{:?}", round.gpus);
    assert_eq!(round.collateral.ocsp.len(), 6);
}

#[tokio::test]
async fn one_gpus_missing_collateral_fails_that_gpu_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut other_driver = SimGpu::typical(Architecture::Hopper, "a");
    other_driver.driver_version = "580.65.06".into();
    let a = attester(
        vec![
            SimGpu::typical(Architecture::Hopper, "a"),
            other_driver,
            SimGpu::typical(Architecture::Hopper, "a"),
        ],
        dir.path(),
    )
    .await;
    let round = a
        .attest([7; 32], tdx_core::verify::time::now_unix(), &metrics())
        .await;
    assert!(round.gpus[0].ok, "{:?}", round.gpus);
    assert!(round.gpus[2].ok, "{:?}", round.gpus);
    let bad = &round.gpus[1];
    assert!(!bad.ok);
    assert_eq!(bad.check, CHECK_COLLATERAL);
    assert!(
        bad.detail.contains("NV_GPU_DRIVER_GH100_580.65.06") && bad.detail.contains("no such RIM"),
        "{}",
        bad.detail
    );
    let failure = round.failure.unwrap();
    assert!(
        failure.starts_with("gpu[1] (GPU-test-1): GPU collateral: "),
        "{failure}"
    );
    // The healthy GPUs' collateral is still what the certificate carries.
    assert_eq!(round.collateral.rims.len(), 2);
}

#[tokio::test]
async fn a_verifier_that_panics_fails_its_gpu_naming_the_verifier() {
    let gpu = |index: u32, evidence: bool| CollectedGpu {
        index,
        uuid: format!("GPU-test-{index}"),
        driver_version: "595.71.05".into(),
        vbios_version: "96.00.88.00.11".into(),
        cc_mode: CcMode::On,
        ready: true,
        protected_pcie: false,
        evidence: evidence.then(|| RawEvidence {
            report: vec![index as u8],
            chain_pem: Vec::new(),
        }),
    };
    let collected = vec![gpu(0, true), gpu(1, false), gpu(2, true)];
    let verify: Arc<VerifyFn> =
        Arc::new(|e: &RawEvidence| panic!("index out of bounds in GPU {}", e.report[0]));
    let verified = verify_all(&collected, verify).await;
    assert_eq!(verified.len(), 3, "every GPU is judged, none dropped");
    let statuses: Vec<GpuStatus> = verified
        .into_iter()
        .map(|(g, report)| judge(&g, report, None))
        .collect();
    for i in [0, 2] {
        let s = &statuses[i];
        assert!(!s.ok);
        assert_eq!(s.check, CHECK_VERIFIER);
        assert!(
            s.detail.contains("the GPU verifier failed")
                && s.detail
                    .contains(&format!("index out of bounds in GPU {i}")),
            "{}",
            s.detail
        );
    }
    assert_eq!(statuses[1].check, CHECK_COLLECTION);
}
