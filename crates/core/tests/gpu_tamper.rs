//! Tampering, on evidence re-signed by the simulated NVIDIA PKI so that only the tampered part
//! is wrong: each kind fails exactly the check that caught it and no other. On real evidence
//! the signature covers everything, so there a flipped byte fails the signature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tdx_core::gpu::{
    Architecture, GpuCollateral, GpuEvidenceRef, GpuPolicy, GpuReport, GpuRoots, RimFile, check,
    verify_gpu,
};
use tdx_sim::gpu::{SIM_RIM_NOT_AFTER, SimGpu, SimGpuPki, SimOcspStatus, SimRimKind};

const AT: i64 = 1_779_926_400; // 2026-05-28

struct Case {
    pki: SimGpuPki,
    gpu: SimGpu,
    nonce: [u8; 32],
}

impl Case {
    fn new() -> Self {
        Self {
            pki: SimGpuPki::generate(Architecture::Hopper, SIM_RIM_NOT_AFTER).unwrap(),
            gpu: SimGpu::typical(Architecture::Hopper, "tamper"),
            nonce: [9; 32],
        }
    }

    fn rims(&self, signer: &SimGpuPki) -> Vec<RimFile> {
        [SimRimKind::Driver, SimRimKind::Vbios]
            .map(|k| RimFile {
                id: None,
                xml: signer
                    .sign_rim(&self.gpu.rim(k, Architecture::Hopper))
                    .unwrap(),
            })
            .to_vec()
    }

    fn run(
        &self,
        report: &[u8],
        chain: &str,
        collateral: &GpuCollateral,
        nonce: &[u8; 32],
    ) -> GpuReport {
        verify_gpu(
            GpuEvidenceRef {
                report,
                chain_pem: chain.as_bytes(),
            },
            nonce,
            collateral,
            &GpuPolicy::default(),
            &GpuRoots::insecure_from_pem(self.pki.roots_pem().as_bytes()).unwrap(),
            AT,
        )
    }

    fn collateral(&self) -> GpuCollateral {
        GpuCollateral {
            rims: self.rims(&self.pki),
            ocsp: self.pki.ocsp_answers(AT - 3600).unwrap(),
        }
    }

    fn good(&self) -> GpuReport {
        let report = self.pki.report(&self.gpu, &self.nonce).unwrap();
        self.run(
            &report,
            &self.pki.chain_pem(),
            &self.collateral(),
            &self.nonce,
        )
    }
}

fn failed(r: &GpuReport) -> Vec<String> {
    let mut names: Vec<String> = r.failures().map(|c| c.name.clone()).collect();
    names.extend(
        r.not_evaluated_checks()
            .iter()
            .map(|n| format!("{n} (not evaluated)")),
    );
    names
}

#[test]
fn untampered_simulated_evidence_passes_every_check_with_revocation() {
    let r = Case::new().good();
    assert!(r.accepted(), "{}", r.render_text());
    assert!(r.skipped().is_empty());
    assert_eq!(r.checks().len(), 20, "{}", r.render_text());
}

#[test]
fn each_tampering_fails_exactly_its_check() {
    let c = Case::new();
    let chain = c.pki.chain_pem();
    let col = c.collateral();
    let only = |r: GpuReport, name: &str| {
        assert_eq!(failed(&r), vec![name.to_string()], "{}", r.render_text());
    };

    // A changed measurement, re-signed by the GPU's key.
    let mut gpu = c.gpu.clone();
    gpu.measurements[22][0] ^= 1;
    only(
        c.run(
            &c.pki.report(&gpu, &c.nonce).unwrap(),
            &chain,
            &col,
            &c.nonce,
        ),
        check::MEASUREMENTS,
    );

    // A nonce other than the verifier's.
    let mut other = c.nonce;
    other[0] ^= 1;
    only(
        c.run(
            &c.pki.report(&c.gpu, &c.nonce).unwrap(),
            &chain,
            &col,
            &other,
        ),
        check::NONCE,
    );

    // An FWID that differs from the leaf's.
    let mut gpu = c.gpu.clone();
    gpu.fwid = Some(Some([0xF1; 48]));
    only(
        c.run(
            &c.pki.report(&gpu, &c.nonce).unwrap(),
            &chain,
            &col,
            &c.nonce,
        ),
        check::FWID,
    );

    // A chain to another root (the evidence is otherwise consistent: signed by that chain's
    // leaf, with its FWID; the answers about the other chain are that PKI's own, so they too
    // chain to the other root).
    let other_pki = SimGpuPki::generate(Architecture::Hopper, SIM_RIM_NOT_AFTER).unwrap();
    let mut col2 = col.clone();
    col2.ocsp.extend(other_pki.ocsp_answers(AT - 3600).unwrap());
    let r = c.run(
        &other_pki.report(&c.gpu, &c.nonce).unwrap(),
        &other_pki.chain_pem(),
        &col2,
        &c.nonce,
    );
    assert_eq!(
        failed(&r),
        vec![
            check::DEVICE_CHAIN.to_string(),
            format!("{} (not evaluated)", check::DEVICE_REVOCATION)
        ],
        "{}",
        r.render_text()
    );

    // A RIM whose signature fails: an inactive hash changed after signing.
    let report = c.pki.report(&c.gpu, &c.nonce).unwrap();
    let mut col3 = col.clone();
    let xml = String::from_utf8(col3.rims[0].xml.clone()).unwrap();
    col3.rims[0].xml = xml
        .replacen(&"0".repeat(96), &"1".repeat(96), 1)
        .into_bytes();
    only(
        c.run(&report, &chain, &col3, &c.nonce),
        "GPU driver RIM signature",
    );

    // A RIM signed by a chain to another RIM root (its revocation is then not evaluated).
    let mut col4 = col.clone();
    col4.rims[1] = c.rims(&other_pki).remove(1);
    let r = c.run(&report, &chain, &col4, &c.nonce);
    assert_eq!(
        failed(&r),
        vec![
            "GPU VBIOS RIM signing chain".to_string(),
            "GPU VBIOS RIM revocation (not evaluated)".into()
        ],
        "{}",
        r.render_text()
    );

    // A RIM whose signer, issued by the right CA, expired before the verification time.
    let mut c = c;
    c.pki.reissue_rim_signer(AT - 86_400).unwrap();
    let mut col5 = col.clone();
    col5.rims[0] = c.rims(&c.pki).remove(0);
    let r = c.run(&report, &chain, &col5, &c.nonce);
    assert_eq!(
        failed(&r),
        vec![
            "GPU driver RIM signing chain".to_string(),
            "GPU driver RIM revocation (not evaluated)".into()
        ],
        "{}",
        r.render_text()
    );
    assert!(
        r.check_named("GPU driver RIM signing chain")
            .unwrap()
            .found
            .contains("not valid at")
    );
}

#[test]
fn revoked_held_and_stale_answers_fail_only_revocation() {
    let c = Case::new();
    let report = c.pki.report(&c.gpu, &c.nonce).unwrap();
    let chain = c.pki.chain_pem();
    let brom = &c.pki.chain[1].der;
    let day = 86_400;
    for (status, at, next_update, needle) in [
        (SimOcspStatus::Revoked, AT - 3600, Some(AT + day), "revoked"),
        (SimOcspStatus::Hold, AT - 3600, Some(AT + day), "hold"),
        // Older than the policy's 7 days, with no nextUpdate: only the age can refuse it.
        (
            SimOcspStatus::Good,
            AT - 8 * day,
            None,
            "s before the verification time",
        ),
        // Within the age, but its nextUpdate has passed.
        (
            SimOcspStatus::Good,
            AT - 2 * day,
            Some(AT - day),
            "nextupdate",
        ),
    ] {
        let mut col = c.collateral();
        // The BROM's good answer is replaced by the tampered one.
        col.ocsp.remove(0);
        col.ocsp.insert(
            0,
            c.pki
                .ocsp_answer_until(brom, status, at, next_update)
                .unwrap(),
        );
        let r = c.run(&report, &chain, &col, &c.nonce);
        assert_eq!(
            failed(&r),
            vec![check::DEVICE_REVOCATION.to_string()],
            "{}",
            r.render_text()
        );
        let found = r
            .check_named(check::DEVICE_REVOCATION)
            .unwrap()
            .found
            .to_lowercase();
        assert!(found.contains(needle), "{status:?}: {found}");
    }
}

#[test]
fn a_flipped_byte_in_real_evidence_fails_the_signature() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/nvidia/solpbc/hopper-595.71.05-96.00.88.00.11"
    );
    let read = |n: &str| std::fs::read(format!("{dir}/{n}")).unwrap();
    let nonce: [u8; 32] = hex::decode(String::from_utf8(read("nonce.hex")).unwrap().trim())
        .unwrap()
        .try_into()
        .unwrap();
    let chain = read("cert_chain.pem");
    let original = read("report.bin");
    let policy = GpuPolicy {
        insecure_skip_rims: true,
        insecure_skip_ocsp: true,
        ..GpuPolicy::default()
    };
    // Every 97th byte of the signed part: a measurement, an opaque field, a length.
    for i in (40..original.len() - 96).step_by(97) {
        let mut report = original.clone();
        report[i] ^= 1;
        let r = verify_gpu(
            GpuEvidenceRef {
                report: &report,
                chain_pem: &chain,
            },
            &nonce,
            &GpuCollateral::default(),
            &policy,
            &GpuRoots::nvidia().unwrap(),
            1_790_000_000,
        );
        assert!(!r.accepted(), "byte {i}");
        let sig = r.check_named(check::SIGNATURE);
        let structure = r.check_named(check::STRUCTURE).unwrap();
        assert!(
            sig.is_some_and(|c| !c.ok) || !structure.ok,
            "byte {i}:\n{}",
            r.render_text()
        );
    }
}

#[test]
fn remembered_answers_are_still_judged_at_each_verification_time() {
    // One verifier, so the second and third verifications reuse the signature verdicts of the
    // first: the answers' age, and the responder's validity, are still checked each time.
    let c = Case::new();
    let report = c.pki.report(&c.gpu, &c.nonce).unwrap();
    let chain = c.pki.chain_pem();
    let col = c.collateral();
    let roots = GpuRoots::insecure_from_pem(c.pki.roots_pem().as_bytes()).unwrap();
    let verifier = tdx_core::gpu::GpuVerifier::new();
    let at = |t: i64| {
        verifier.verify(
            GpuEvidenceRef {
                report: &report,
                chain_pem: chain.as_bytes(),
            },
            &c.nonce,
            &col,
            &GpuPolicy::default(),
            &roots,
            t,
        )
    };
    let first = at(AT);
    assert!(first.accepted(), "{}", first.render_text());
    // Eight days on the answers are stale (and their nextUpdate has passed).
    let later = at(AT + 8 * 86_400);
    assert!(
        failed(&later).contains(&check::DEVICE_REVOCATION.to_string()),
        "{}",
        later.render_text()
    );
    // Back at the first instant, the remembered verdicts give the same answer as before.
    assert_eq!(at(AT).checks(), first.checks());
}
