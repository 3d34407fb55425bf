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
