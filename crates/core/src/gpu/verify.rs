//! One GPU's appraisal: every check of docs/formats.md §2 ("GPU checks") run over the report,
//! its device chain, its two RIMs and the stapled OCSP answers, at an explicit time, under the
//! policy's `[gpu]` table. Each check runs on its own wherever its inputs could be read, so a
//! report names every failure rather than the first.

use sha2::{Digest as _, Sha256, Sha384};

use std::sync::Arc;

use super::cache::{ParsedRim, VerdictCache};
use super::compare::{Golden, compare_measurements};
use super::ocsp::{OcspError, Stapled, check_chain_stapled};
use super::policy::{Architecture, DriverVersion, GpuPolicy, VbiosVersion};
use super::report::{GpuReport, GpuRootView};
use super::rim::{NVIDIA_RIM_ROOT_PEM, Rim};
use super::spdm::{NONCE_LEN, SpdmReport, opaque};
use super::{
    DEVICE_CHAIN_LEN, GpuFwidError, NVIDIA_DEVICE_ROOT_PEM, chain_der, check_fwid,
    verify_report_signature,
};

pub mod check {
    //! The check names, as docs/formats.md §2 lists them.
    pub const STRUCTURE: &str = "GPU report structure";
    pub const DEVICE_CHAIN: &str = "GPU device chain";
    pub const ARCHITECTURE: &str = "GPU architecture";
    pub const FWID: &str = "GPU FWID";
    pub const NONCE: &str = "GPU nonce";
    pub const SIGNATURE: &str = "GPU report signature";
    pub const DRIVER_VERSION: &str = "GPU driver version";
    pub const VBIOS_VERSION: &str = "GPU VBIOS version";
    pub const DEVICE_REVOCATION: &str = "GPU device chain revocation";
    pub const MEASUREMENTS: &str = "GPU measurements";
}

/// Which of the two RIMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RimKind {
    Driver,
    Vbios,
}

/// The checks of each RIM kind, by what [`RimKind::check_name`] adds to `GPU <kind> RIM`.
const RIM_CHECKS: [&str; 5] = ["", "version", "signing chain", "signature", "revocation"];

impl RimKind {
    /// Every check name of this kind, in report order.
    fn check_names(self) -> impl Iterator<Item = String> {
        RIM_CHECKS
            .into_iter()
            .map(move |what| self.check_name(what))
    }

    fn label(self) -> &'static str {
        match self {
            RimKind::Driver => "driver",
            RimKind::Vbios => "VBIOS",
        }
    }

    /// `GPU driver RIM`, `GPU VBIOS RIM signature`, …
    pub fn check_name(self, what: &str) -> String {
        if what.is_empty() {
            format!("GPU {} RIM", self.label())
        } else {
            format!("GPU {} RIM {what}", self.label())
        }
    }

    /// Which kind a RIM is, from the shape of its version: VBIOS versions are five two-digit
    /// hex groups, drivers dotted decimals. RIM documents carry no other marker.
    pub fn of_version(colloquial: &str) -> Self {
        if VbiosVersion::parse(colloquial).is_ok() {
            RimKind::Vbios
        } else {
            RimKind::Driver
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuRootsError {
    #[error("GPU roots: {0}")]
    Pem(String),
    #[error(
        "GPU roots file: {found} certificates; it must hold exactly two, the device root then the RIM root"
    )]
    Count { found: usize },
    #[error("GPU roots file: certificate {index} ({subject}) is not self-signed")]
    NotSelfSigned { index: usize, subject: String },
}

#[derive(Clone, Debug)]
struct RootCert {
    der: Vec<u8>,
    view: GpuRootView,
}

impl RootCert {
    fn new(der: Vec<u8>, kind: &'static str, index: usize) -> Result<Self, GpuRootsError> {
        use x509_parser::prelude::{FromDer as _, X509Certificate};
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| GpuRootsError::Pem(format!("certificate {index}: {e}")))?;
        let subject = cert.subject().to_string();
        if cert.issuer() != cert.subject() || cert.verify_signature(None).is_err() {
            return Err(GpuRootsError::NotSelfSigned { index, subject });
        }
        let sha256 = hex::encode(Sha256::digest(&der));
        Ok(Self {
            der,
            view: GpuRootView {
                kind,
                subject,
                sha256,
            },
        })
    }
}

/// The two roots GPU evidence chains to: NVIDIA's Device Identity CA for device chains and
/// NVIDIA's CoRIM signing root for RIMs.
#[derive(Clone, Debug)]
pub struct GpuRoots {
    device: RootCert,
    rim: RootCert,
}

impl GpuRoots {
    /// NVIDIA's pinned roots, as NVIDIA's own verifier pins them.
    pub fn nvidia() -> Result<Self, GpuRootsError> {
        let one = |pem: &[u8], index| {
            let der = crate::quote::pem_certificates(pem)
                .map_err(|e| GpuRootsError::Pem(e.to_string()))?
                .into_iter()
                .next()
                .ok_or(GpuRootsError::Count { found: 0 })?;
            RootCert::new(der, "production", index)
        };
        Ok(Self {
            device: one(NVIDIA_DEVICE_ROOT_PEM, 0)?,
            rim: one(NVIDIA_RIM_ROOT_PEM, 1)?,
        })
    }

    /// Test roots (`--insecure-gpu-roots`): one PEM file, the device root then the RIM root.
    pub fn insecure_from_pem(pem: &[u8]) -> Result<Self, GpuRootsError> {
        let certs =
            crate::quote::pem_certificates(pem).map_err(|e| GpuRootsError::Pem(e.to_string()))?;
        let [device, rim]: [Vec<u8>; 2] = certs
            .try_into()
            .map_err(|v: Vec<Vec<u8>>| GpuRootsError::Count { found: v.len() })?;
        Ok(Self {
            device: RootCert::new(device, "insecure", 0)?,
            rim: RootCert::new(rim, "insecure", 1)?,
        })
    }

    pub fn device_der(&self) -> &[u8] {
        &self.device.der
    }

    pub fn rim_der(&self) -> &[u8] {
        &self.rim.der
    }

    /// A device chain as it is checked (leaf first): its own last certificate replaced by
    /// the pinned device root, as NVIDIA's verifier does.
    pub fn device_chain(&self, chain: &[Vec<u8>]) -> Vec<Vec<u8>> {
        with_root(chain, self.device_der())
    }

    /// A RIM's signing chain as it is checked: the document's last certificate replaced by
    /// the pinned RIM root.
    pub fn rim_chain(&self, rim: &Rim) -> Vec<Vec<u8>> {
        with_root(rim.signing_chain(), self.rim_der())
    }
}

fn with_root(chain: &[Vec<u8>], root_der: &[u8]) -> Vec<Vec<u8>> {
    let below_root = chain.split_last().map_or(&[][..], |(_, rest)| rest);
    let mut out = below_root.to_vec();
    out.push(root_der.to_vec());
    out
}

/// A RIM as the collateral carries it: the RIM service id where known, and the XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RimFile {
    pub id: Option<String>,
    pub xml: Vec<u8>,
}

/// What a GPU's appraisal needs besides the evidence: RIMs and stapled OCSP answers (DER).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuCollateral {
    pub rims: Vec<RimFile>,
    pub ocsp: Vec<Vec<u8>>,
}

/// One GPU's evidence as NVML returns it.
#[derive(Clone, Copy, Debug)]
pub struct GpuEvidenceRef<'a> {
    pub report: &'a [u8],
    pub chain_pem: &'a [u8],
}

/// The RIM service ids a report calls for (docs/design.md §14): the driver RIM
/// `NV_GPU_DRIVER_GH100_<driver>` (Hopper) or `NV_GPU_CC_DRIVER_<chip>_<driver>` (Blackwell),
/// and the VBIOS RIM `NV_GPU_VBIOS_<project>_<project SKU>_<chip SKU>_<VBIOS, no dots>`.
pub fn rim_ids(
    report: &SpdmReport,
    arch: Option<Architecture>,
) -> (Option<String>, Option<String>) {
    let text = |kind| {
        report.opaque_field(kind).and_then(|v| {
            let t: Vec<u8> = v.iter().copied().take_while(|b| *b != 0).collect();
            let t = String::from_utf8(t).ok()?;
            let t = t.trim().to_ascii_uppercase();
            (!t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(t)
        })
    };
    let driver = report.driver_version().and_then(|d| match arch? {
        Architecture::Hopper => Some(format!("NV_GPU_DRIVER_GH100_{d}")),
        Architecture::Blackwell => {
            Some(format!("NV_GPU_CC_DRIVER_{}_{d}", text(opaque::CHIP_INFO)?))
        }
    });
    let vbios = (|| {
        Some(format!(
            "NV_GPU_VBIOS_{}_{}_{}_{}",
            text(opaque::PROJECT)?,
            text(opaque::PROJECT_SKU)?,
            text(opaque::CHIP_SKU)?,
            report.vbios_version()?.replace('.', "")
        ))
    })();
    (driver, vbios)
}

/// Appraise one GPU's evidence, nothing cached. `expected_nonce` is the nonce the verifier
/// chose.
pub fn verify_gpu(
    evidence: GpuEvidenceRef<'_>,
    expected_nonce: &[u8; NONCE_LEN],
    collateral: &GpuCollateral,
    policy: &GpuPolicy,
    roots: &GpuRoots,
    at: i64,
) -> GpuReport {
    GpuVerifier::new().verify(evidence, expected_nonce, collateral, policy, roots, at)
}

/// A GPU verifier that keeps chain and RIM verdicts between appraisals (an agent re-attesting
/// the same GPUs, a client checking many servers with the same drivers): only the report's
/// signature, the comparison and revocation are redone.
#[derive(Default)]
pub struct GpuVerifier {
    cache: VerdictCache,
}

impl GpuVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn verify(
        &self,
        evidence: GpuEvidenceRef<'_>,
        expected_nonce: &[u8; NONCE_LEN],
        collateral: &GpuCollateral,
        policy: &GpuPolicy,
        roots: &GpuRoots,
        at: i64,
    ) -> GpuReport {
        appraise(
            evidence,
            expected_nonce,
            collateral,
            policy,
            roots,
            at,
            &self.cache,
        )
    }
}

fn appraise(
    evidence: GpuEvidenceRef<'_>,
    expected_nonce: &[u8; NONCE_LEN],
    collateral: &GpuCollateral,
    policy: &GpuPolicy,
    roots: &GpuRoots,
    at: i64,
    cache: &VerdictCache,
) -> GpuReport {
    let mut out = GpuReport::new(roots.device.view.clone(), roots.rim.view.clone(), at);
    for k in policy.insecure_switches() {
        out.warn(format!("the policy sets {k} = true"));
    }
    // Each answer is read once here, not once per certificate of the three chains.
    let stapled = Stapled::parse_all(&collateral.ocsp);

    // The chain does not depend on the report: check it even when the report is unreadable.
    let chain = chain_der(evidence.chain_pem);
    let leaf = match &chain {
        Ok(c) => c.first().cloned(),
        Err(_) => None,
    };
    let mut full_chain: Option<Vec<Vec<u8>>> = None;
    match &chain {
        Err(e) => out.check(
            check::DEVICE_CHAIN,
            false,
            format!("{DEVICE_CHAIN_LEN} PEM certificates, leaf first"),
            e.to_string(),
        ),
        Ok(c) => match cache.device_chain(c, roots.device_der(), at) {
            Ok(subjects) => {
                out.check(
                    check::DEVICE_CHAIN,
                    true,
                    format!("a chain to {}", roots.device.view.subject),
                    subjects.join(" <- "),
                );
                full_chain = Some(roots.device_chain(c));
            }
            Err(e) => out.check(
                check::DEVICE_CHAIN,
                false,
                format!(
                    "a chain to {} valid at {}",
                    roots.device.view.subject,
                    out.verified_at()
                ),
                e.to_string(),
            ),
        },
    }
    let leaf_subject = leaf.as_deref().and_then(subject_of);
    let arch = leaf_subject
        .as_deref()
        .and_then(Architecture::from_leaf_subject);
    out.gpu_mut().leaf_subject = leaf_subject.clone();
    out.gpu_mut().architecture = arch.map(|a| a.to_string());
    let allowed: Vec<String> = policy
        .architectures
        .iter()
        .map(ToString::to_string)
        .collect();
    match arch {
        Some(a) => out.check(
            check::ARCHITECTURE,
            policy.architectures.contains(&a),
            format!("one of {}", allowed.join(", ")),
            a.to_string(),
        ),
        None => out.check(
            check::ARCHITECTURE,
            false,
            format!("one of {}", allowed.join(", ")),
            format!(
                "a leaf certificate naming no known chip ({})",
                leaf_subject.as_deref().unwrap_or("none")
            ),
        ),
    }

    let report = match SpdmReport::parse(evidence.report) {
        Ok(r) => {
            out.check(
                check::STRUCTURE,
                true,
                "an SPDM 1.1 GET_MEASUREMENTS request and signed response".into(),
                format!(
                    "{} measurement blocks, {} bytes",
                    r.blocks.len(),
                    evidence.report.len()
                ),
            );
            r
        }
        Err(e) => {
            out.check(
                check::STRUCTURE,
                false,
                "an SPDM 1.1 GET_MEASUREMENTS request and signed response".into(),
                e.to_string(),
            );
            for name in [
                check::FWID,
                check::NONCE,
                check::SIGNATURE,
                check::DRIVER_VERSION,
                check::VBIOS_VERSION,
            ] {
                out.not_evaluated(name);
            }
            revocation_device(&mut out, full_chain.as_deref(), &stapled, policy, at, cache);
            for name in [RimKind::Driver, RimKind::Vbios]
                .into_iter()
                .flat_map(RimKind::check_names)
            {
                out.not_evaluated(&name);
            }
            out.not_evaluated(check::MEASUREMENTS);
            return out;
        }
    };
    describe(&mut out, &report, arch);

    match &leaf {
        None => out.not_evaluated(check::FWID),
        Some(leaf) => match check_fwid(&report, leaf) {
            Ok(()) => out.check(
                check::FWID,
                true,
                "the leaf certificate's DICE TcbInfo FWID".into(),
                "equal".into(),
            ),
            Err(GpuFwidError::MissingInReport) if policy.insecure_allow_missing_fwid => out.skip(
                check::FWID,
                "the report has no FWID field and the policy sets insecure_allow_missing_fwid",
            ),
            Err(e) => out.check(
                check::FWID,
                false,
                "the leaf certificate's DICE TcbInfo FWID".into(),
                e.to_string(),
            ),
        },
    }
    out.check(
        check::NONCE,
        report.nonce_matches(expected_nonce),
        hex::encode(expected_nonce),
        hex::encode(report.request_nonce),
    );
    match &leaf {
        None => out.not_evaluated(check::SIGNATURE),
        Some(leaf) => match verify_report_signature(evidence.report, &report, leaf) {
            Ok(()) => out.check(
                check::SIGNATURE,
                true,
                "ECDSA P-384 by the leaf certificate's key".into(),
                "verifies".into(),
            ),
            Err(e) => out.check(
                check::SIGNATURE,
                false,
                "ECDSA P-384 by the leaf certificate's key".into(),
                e.to_string(),
            ),
        },
    }
    versions(&mut out, &report, policy);
    revocation_device(&mut out, full_chain.as_deref(), &stapled, policy, at, cache);

    if policy.insecure_skip_rims {
        for name in [RimKind::Driver, RimKind::Vbios]
            .into_iter()
            .flat_map(RimKind::check_names)
        {
            out.skip(&name, "the policy sets insecure_skip_rims");
        }
        out.skip(check::MEASUREMENTS, "the policy sets insecure_skip_rims");
        return out;
    }
    // The ids `describe` put in the report.
    let (driver_id, vbios_id) = (
        out.gpu().driver_rim_id.clone(),
        out.gpu().vbios_rim_id.clone(),
    );
    let driver = rim_checks(
        cache,
        &mut out,
        RimKind::Driver,
        driver_id,
        report.driver_version(),
        collateral,
        &stapled,
        policy,
        roots,
        at,
    );
    let vbios = rim_checks(
        cache,
        &mut out,
        RimKind::Vbios,
        vbios_id,
        report.vbios_version(),
        collateral,
        &stapled,
        policy,
        roots,
        at,
    );
    match (driver, vbios) {
        (Some(d), Some(v)) => {
            let golden = |r: &Rim| -> Vec<(u16, Vec<[u8; 48]>)> {
                r.measurements()
                    .iter()
                    .filter(|m| m.active)
                    .map(|m| (m.index, m.alternatives.clone()))
                    .collect()
            };
            let (gd, gv) = (golden(&d.rim), golden(&v.rim));
            let result = compare_measurements(
                &report,
                gd.iter().map(|(index, alternatives)| Golden {
                    index: *index,
                    alternatives,
                }),
                gv.iter().map(|(index, alternatives)| Golden {
                    index: *index,
                    alternatives,
                }),
            );
            let expected =
                "every active RIM measurement equals one of its alternatives".to_string();
            match result {
                Ok(c) => {
                    let mut found = format!("{} indices equal", c.compared.len());
                    if let Some(i) = c.skipped_nvdec0 {
                        found.push_str(&format!("; index {i} skipped (NVDEC0 disabled)"));
                    }
                    out.check(check::MEASUREMENTS, true, expected, found);
                }
                Err(e) => out.check(check::MEASUREMENTS, false, expected, e.to_string()),
            }
        }
        _ => out.not_evaluated(check::MEASUREMENTS),
    }
    out
}

fn subject_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.subject().to_string())
}

/// Fill in what the report says about the GPU.
fn describe(out: &mut GpuReport, report: &SpdmReport, arch: Option<Architecture>) {
    let (driver_rim_id, vbios_rim_id) = rim_ids(report, arch);
    let mut all = Sha384::new();
    for b in &report.blocks {
        all.update(&b.value);
    }
    let g = out.gpu_mut();
    g.driver_version = report.driver_version();
    g.vbios_version = report.vbios_version();
    g.driver_rim_id = driver_rim_id;
    g.vbios_rim_id = vbios_rim_id;
    g.fwid = report.opaque_field(opaque::FWID).map(hex::encode);
    g.nvdec0 = report.opaque_field(opaque::NVDEC0_STATUS).map(|v| match v {
        [0xAA] => "enabled".to_string(),
        [0x55] => "disabled".to_string(),
        other => hex::encode(other),
    });
    g.mode = report
        .opaque_field(opaque::FEATURE_FLAG)
        .map(|v| match v.first() {
            Some(0) => "single-gpu".to_string(),
            Some(1) => "multi-gpu".to_string(),
            Some(2) => "protected-pcie".to_string(),
            _ => hex::encode(v),
        });
    g.measurements_sha384 = Some(hex::encode(all.finalize()));
}

fn versions(out: &mut GpuReport, report: &SpdmReport, policy: &GpuPolicy) {
    let min = policy.min_driver_version.as_ref();
    let expected = min.map_or("any driver NVIDIA signed a RIM for".into(), |m| {
        format!("{m} or newer")
    });
    match report.driver_version() {
        None => out.check(
            check::DRIVER_VERSION,
            false,
            expected,
            "no readable driver version in the report".into(),
        ),
        Some(v) => {
            let ok = match (min, DriverVersion::parse(&v)) {
                (None, _) => true,
                (Some(m), Ok(d)) => d >= *m,
                (Some(_), Err(_)) => false,
            };
            out.check(check::DRIVER_VERSION, ok, expected, v);
        }
    }
    let allowed = policy.vbios_versions.as_ref();
    let expected = allowed.map_or("any VBIOS NVIDIA signed a RIM for".into(), |a| {
        format!(
            "one of {}",
            a.iter()
                .map(VbiosVersion::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    match report.vbios_version() {
        None => out.check(
            check::VBIOS_VERSION,
            false,
            expected,
            "no readable VBIOS version in the report".into(),
        ),
        Some(v) => {
            let ok = match (allowed, VbiosVersion::parse(&v)) {
                (None, _) => true,
                (Some(a), Ok(x)) => a.contains(&x),
                (Some(_), Err(_)) => false,
            };
            out.check(check::VBIOS_VERSION, ok, expected, v);
        }
    }
}

/// Revocation of `chain` (leaf first, ending in the pinned root) for the certificates in
/// `which`, from the stapled answers.
#[allow(clippy::too_many_arguments)]
fn revocation(
    out: &mut GpuReport,
    name: &str,
    chain: Option<&[Vec<u8>]>,
    which: std::ops::Range<usize>,
    stapled: &[Stapled<'_>],
    policy: &GpuPolicy,
    at: i64,
    cache: &VerdictCache,
) {
    if policy.insecure_skip_ocsp {
        out.skip(name, "the policy sets insecure_skip_ocsp");
        return;
    }
    let Some(chain) = chain else {
        out.not_evaluated(name);
        return;
    };
    let expected = format!(
        "a stapled OCSP answer \"good\" for each certificate, signed for NVIDIA, at most {} s old",
        policy.ocsp_max_age_secs
    );
    let results = check_chain_stapled(chain, which, stapled, at, policy.ocsp_max_age_secs, cache);
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(subject, r)| {
            r.as_ref()
                .err()
                .map(|e: &OcspError| format!("{subject}: {e}"))
        })
        .collect();
    if failures.is_empty() {
        out.check(
            name,
            true,
            expected,
            format!("{} certificates good", results.len()),
        );
    } else if stapled.is_empty() {
        out.check(
            name,
            false,
            expected,
            "no OCSP answers were supplied: staple them (verify-gpu --ocsp FILE or a GPU \
             collateral bundle), or set gpu.insecure_skip_ocsp for evidence gathered without them"
                .into(),
        );
    } else {
        out.check(name, false, expected, failures.join("; "));
    }
}

fn revocation_device(
    out: &mut GpuReport,
    chain: Option<&[Vec<u8>]>,
    stapled: &[Stapled<'_>],
    policy: &GpuPolicy,
    at: i64,
    cache: &VerdictCache,
) {
    // As NVIDIA's verifier: the BROM, provisioner ICA and identity certificates (the leaf
    // is the FMC's own and has no responder entry).
    revocation(
        out,
        check::DEVICE_REVOCATION,
        chain,
        1..4,
        stapled,
        policy,
        at,
        cache,
    );
}

/// Find, parse and check one RIM; returns it when it can be compared.
#[allow(clippy::too_many_arguments)]
fn rim_checks(
    cache: &VerdictCache,
    out: &mut GpuReport,
    kind: RimKind,
    id: Option<String>,
    reported: Option<String>,
    collateral: &GpuCollateral,
    stapled: &[Stapled<'_>],
    policy: &GpuPolicy,
    roots: &GpuRoots,
    at: i64,
) -> Option<Arc<ParsedRim>> {
    let found = select_rim(cache, kind, id.as_deref(), reported.as_deref(), collateral);
    let wanted = id
        .clone()
        .unwrap_or_else(|| format!("the {} RIM", kind.label()));
    let rim = match found {
        Selected::None => {
            out.check(
                &kind.check_name(""),
                false,
                format!("{wanted} in the collateral"),
                "not supplied".into(),
            );
            for name in kind.check_names().skip(1) {
                out.not_evaluated(&name);
            }
            return None;
        }
        Selected::Unreadable(e) => {
            out.check(
                &kind.check_name(""),
                false,
                format!("{wanted}, a well-formed RIM"),
                e,
            );
            for name in kind.check_names().skip(1) {
                out.not_evaluated(&name);
            }
            return None;
        }
        Selected::Rim(r) => r,
    };
    let parsed = rim;
    let rim = &parsed.rim;
    out.check(
        &kind.check_name(""),
        true,
        format!("{wanted}, a well-formed RIM"),
        format!("tag {}, version {}", rim.tag_id(), rim.colloquial_version()),
    );
    let reported_lc = reported.as_deref().map(str::to_ascii_lowercase);
    out.check(
        &kind.check_name("version"),
        reported_lc.as_deref() == Some(rim.colloquial_version().to_ascii_lowercase().as_str()),
        reported.unwrap_or_else(|| "a version in the report".into()),
        rim.colloquial_version().to_string(),
    );
    let chain_ok = match cache.rim_chain(rim, roots.rim_der(), at) {
        Ok(subjects) => {
            out.check(
                &kind.check_name("signing chain"),
                true,
                format!(
                    "a chain to {} valid at {}",
                    roots.rim.view.subject,
                    out.verified_at()
                ),
                subjects.join(" <- "),
            );
            true
        }
        Err(e) => {
            out.check(
                &kind.check_name("signing chain"),
                false,
                format!(
                    "a chain to {} valid at {}",
                    roots.rim.view.subject,
                    out.verified_at()
                ),
                e.to_string(),
            );
            false
        }
    };
    match &parsed.signature {
        Ok(()) => out.check(
            &kind.check_name("signature"),
            true,
            "an enveloped ECDSA-SHA384 XML signature by the signing chain's leaf".into(),
            "verifies".into(),
        ),
        Err(e) => out.check(
            &kind.check_name("signature"),
            false,
            "an enveloped ECDSA-SHA384 XML signature by the signing chain's leaf".into(),
            e.to_string(),
        ),
    }
    let full = chain_ok.then(|| roots.rim_chain(rim));
    // NVIDIA asks about the RIM chain's leaf, L3 and CA: everything below the root.
    let below_root = full.as_ref().map_or(0..0, |c| 0..c.len().saturating_sub(1));
    revocation(
        out,
        &kind.check_name("revocation"),
        full.as_deref(),
        below_root,
        stapled,
        policy,
        at,
        cache,
    );
    Some(parsed.clone())
}

enum Selected {
    None,
    Unreadable(String),
    Rim(Arc<ParsedRim>),
}

/// The RIM of `kind` in the collateral: the one filed under the id the report calls for, or
/// else an unnamed one (`--rim FILE`) of the right kind, preferring the reported version.
fn select_rim(
    cache: &VerdictCache,
    kind: RimKind,
    id: Option<&str>,
    reported: Option<&str>,
    collateral: &GpuCollateral,
) -> Selected {
    if let Some(id) = id
        && let Some(f) = collateral.rims.iter().find(|f| f.id.as_deref() == Some(id))
    {
        return match cache.rim(&f.xml) {
            Ok(r) => Selected::Rim(r),
            Err(e) => Selected::Unreadable(format!("{id}: {e}")),
        };
    }
    let mut unreadable = None;
    let mut candidates = Vec::new();
    for f in collateral.rims.iter().filter(|f| f.id.is_none()) {
        match cache.rim(&f.xml) {
            Ok(r) if RimKind::of_version(r.rim.colloquial_version()) == kind => candidates.push(r),
            Ok(_) => {}
            Err(e) => unreadable = unreadable.or(Some(e.to_string())),
        }
    }
    let reported = reported.map(str::to_ascii_lowercase);
    let pick = candidates
        .iter()
        .position(|r| Some(r.rim.colloquial_version().to_ascii_lowercase()) == reported)
        .unwrap_or(0);
    if pick < candidates.len() {
        return Selected::Rim(candidates.swap_remove(pick));
    }
    match unreadable {
        Some(e) => Selected::Unreadable(e),
        None => Selected::None,
    }
}
