//! The simulated GPU's evidence passes the core's GPU checks against the simulated roots,
//! for both architectures, and fails them against NVIDIA's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::gpu::*;
use tdx_core::gpu::{
    Architecture, SpdmReport, chain_der, check_fwid, verify_device_chain, verify_report_signature,
};

const AT: i64 = 1_780_000_000; // 2026-05-28

fn root_der(pki: &SimGpuPki) -> Vec<u8> {
    pki.chain.last().unwrap().der.clone()
}

#[test]
fn simulated_evidence_passes_the_device_checks_for_both_architectures() {
    for arch in [Architecture::Hopper, Architecture::Blackwell] {
        let pki = SimGpuPki::generate(arch, SIM_RIM_NOT_AFTER).unwrap();
        let gpu = SimGpu::typical(arch, "a");
        let nonce = [7u8; 32];
        let raw = pki.report(&gpu, &nonce).unwrap();
        let report = SpdmReport::parse(&raw).unwrap();
        assert!(report.nonce_matches(&nonce));
        assert_eq!(report.blocks.len(), 64);
        assert_eq!(report.driver_version().as_deref(), Some("595.71.05"));
        assert_eq!(report.vbios_version(), Some(gpu.vbios_version.clone()));
        let chain = chain_der(pki.chain_pem().as_bytes()).unwrap();
        let subjects = verify_device_chain(&chain, &root_der(&pki), AT).unwrap();
        assert_eq!(
            Architecture::from_leaf_subject(&subjects[0]),
            Some(arch),
            "{subjects:?}"
        );
        check_fwid(&report, &chain[0]).unwrap();
        verify_report_signature(&raw, &report, &chain[0]).unwrap();

        // Against NVIDIA's root the simulated chain fails.
        let nvidia = tdx_core::quote::pem_certificates(tdx_core::gpu::NVIDIA_DEVICE_ROOT_PEM)
            .unwrap()
            .remove(0);
        assert!(verify_device_chain(&chain, &nvidia, AT).is_err());
    }
}

#[test]
fn the_fwid_field_can_be_left_out_or_made_wrong() {
    let pki = SimGpuPki::generate(Architecture::Hopper, SIM_RIM_NOT_AFTER).unwrap();
    let chain = chain_der(pki.chain_pem().as_bytes()).unwrap();
    let mut gpu = SimGpu::typical(Architecture::Hopper, "a");
    gpu.fwid = None;
    let raw = pki.report(&gpu, &[0; 32]).unwrap();
    let report = SpdmReport::parse(&raw).unwrap();
    assert_eq!(
        check_fwid(&report, &chain[0]),
        Err(tdx_core::gpu::GpuFwidError::MissingInReport)
    );
    gpu.fwid = Some(Some([9; 48]));
    let raw = pki.report(&gpu, &[0; 32]).unwrap();
    let report = SpdmReport::parse(&raw).unwrap();
    assert!(matches!(
        check_fwid(&report, &chain[0]),
        Err(tdx_core::gpu::GpuFwidError::Mismatch { .. })
    ));
    // The signature still covers it: only the FWID check fails.
    verify_report_signature(&raw, &report, &chain[0]).unwrap();
}

#[test]
fn simulated_rims_verify_and_match_the_simulated_gpu() {
    use tdx_core::gpu::{GpuCollateral, GpuEvidenceRef, GpuPolicy, GpuRoots, RimFile, verify_gpu};
    for arch in [Architecture::Hopper, Architecture::Blackwell] {
        let pki = SimGpuPki::generate(arch, SIM_RIM_NOT_AFTER).unwrap();
        let gpu = SimGpu::typical(arch, "rims");
        let nonce = [3u8; 32];
        let report = pki.report(&gpu, &nonce).unwrap();
        let chain = pki.chain_pem();
        let rims = [SimRimKind::Driver, SimRimKind::Vbios]
            .map(|k| pki.sign_rim(&gpu.rim(k, arch)).unwrap());
        let collateral = GpuCollateral {
            rims: rims
                .iter()
                .map(|xml| RimFile {
                    id: None,
                    xml: xml.clone(),
                })
                .collect(),
            ocsp: vec![],
        };
        let policy = GpuPolicy {
            insecure_skip_ocsp: true,
            ..GpuPolicy::default()
        };
        let roots = GpuRoots::insecure_from_pem(pki.roots_pem().as_bytes()).unwrap();
        let r = verify_gpu(
            GpuEvidenceRef {
                report: &report,
                chain_pem: chain.as_bytes(),
            },
            &nonce,
            &collateral,
            &policy,
            &roots,
            AT,
        );
        assert!(r.accepted(), "{arch}:\n{}", r.render_text());
        assert_eq!(r.device_root().kind, "insecure");
        // And nothing simulated passes against NVIDIA's roots.
        let r = verify_gpu(
            GpuEvidenceRef {
                report: &report,
                chain_pem: chain.as_bytes(),
            },
            &nonce,
            &collateral,
            &policy,
            &GpuRoots::nvidia().unwrap(),
            AT,
        );
        assert!(!r.accepted());
        for name in [
            "GPU device chain",
            "GPU driver RIM signing chain",
            "GPU VBIOS RIM signing chain",
        ] {
            assert!(!r.check_named(name).unwrap().ok, "{name}");
        }
    }
}

#[test]
fn simulated_gpus_in_a_directory_verify_and_fail_by_state() {
    use crate::{SimGpuState, SimGpus};
    use tdx_core::gpu::{GpuEvidenceRef, GpuPolicy, GpuRoots, verify_gpu};
    let tmp = tempfile::tempdir().unwrap();
    let gpus = SimGpus::create(tmp.path(), 2).unwrap();
    let entries = gpus.entries().unwrap();
    assert_eq!(entries.len(), 2);
    assert_ne!(entries[0].uuid, entries[1].uuid);
    assert!(entries[0].uuid.starts_with("GPU-"));
    let roots_pem = std::fs::read(tmp.path().join(crate::GPU_ROOTS_PEM)).unwrap();
    let roots = GpuRoots::insecure_from_pem(&roots_pem).unwrap();
    let now = tdx_core::verify::time::now_unix();
    let collateral = gpus.collateral(now).unwrap();
    let policy = GpuPolicy::default();
    let nonce = [5u8; 32];
    let chain = gpus.chain_pem();
    let verify = |report: &[u8]| {
        verify_gpu(
            GpuEvidenceRef {
                report,
                chain_pem: chain.as_bytes(),
            },
            &nonce,
            &collateral,
            &policy,
            &roots,
            now,
        )
    };
    let r = verify(&gpus.report(&entries[1], &nonce).unwrap());
    assert!(r.accepted(), "{}", r.render_text());

    // States persist across openings; a bad measurement fails the comparison only.
    gpus.set_state(1, SimGpuState::BadMeasurement).unwrap();
    let reopened = SimGpus::open(tmp.path()).unwrap().unwrap();
    let bad = reopened.entry(1).unwrap();
    assert_eq!(bad.state, SimGpuState::BadMeasurement);
    let r = verify(&reopened.report(&bad, &nonce).unwrap());
    assert!(!r.accepted());
    let failed: Vec<&str> = r.failures().map(|c| c.name.as_str()).collect();
    assert_eq!(failed, ["GPU measurements"], "{}", r.render_text());

    // Growing keeps the PKI, the UUIDs and the states; unknown indices are refused.
    let grown = SimGpus::create(tmp.path(), 3).unwrap();
    let after = grown.entries().unwrap();
    assert_eq!(after.len(), 3);
    assert_eq!(after[1].uuid, entries[1].uuid);
    assert_eq!(after[1].state, SimGpuState::BadMeasurement);
    assert_eq!(grown.roots_pem(), String::from_utf8(roots_pem).unwrap());
    assert!(grown.set_state(7, SimGpuState::Ok).is_err());
    assert!(SimGpus::create(tmp.path(), 0).is_err());
    assert!(SimGpus::open(&tmp.path().join("none")).unwrap().is_none());
    assert_eq!(SimGpuState::parse("cc-off"), Ok(SimGpuState::CcOff));
    assert!(SimGpuState::parse("on").is_err());
}
