//! Attesting the TD's GPUs with its certificate (docs/gpu.md): at every issue each GPU's
//! state and report over the nonce derived from the new key are collected (one GPU at a
//! time, on the collector's thread), verified with their collateral, and their CC state is
//! measured into RTMR3 as `gpu` events. The certificate then commits to exactly the evidence
//! collected, good or bad: a client decides by its policy, and the agent is ready only when
//! every GPU it found passes and at least `gpu.required` did.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tdx_core::encoding::hex;
use tdx_core::gpu::{
    CcMode, GPU_EVENT, GpuCollateral, GpuEventData, GpuEvidence, GpuEvidenceRef, GpuEvidenceSet,
    GpuPolicy, GpuReport, GpuRoots, GpuVerifier, MultiGpuMode,
};
use tdx_core::measure::rtmr3_log::Event;
use tdx_gpu::{CollectedGpu, Collector, GpuSource, RawEvidence};
use tdx_tee::TeeHandle;
use tdx_tee::rtmr3_log::Rtmr3Log;

use crate::audit::AuditLog;
use crate::config::{Config, GpuRequired, GpuSourceKind, TeeKindConfig};

/// Where the GPUs' collateral (RIMs, OCSP answers) comes from.
enum CollateralSource {
    Nvidia(Box<tdx_net::nvidia::NvidiaServices>),
    #[cfg(feature = "sim")]
    Sim(Arc<tdx_sim::SimGpus>),
}

pub struct GpuAttester {
    collector: Collector,
    required: GpuRequired,
    verifier: Arc<GpuVerifier>,
    roots: Arc<GpuRoots>,
    policy: Arc<GpuPolicy>,
    collateral: CollateralSource,
    pub recheck: Duration,
}

/// One GPU's outcome in a round, as /readyz and the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuStatus {
    pub index: u32,
    pub uuid: Option<String>,
    pub ok: bool,
    /// The failed check, or "attested".
    pub check: String,
    pub detail: String,
}

impl GpuStatus {
    /// `gpu[1] (GPU-…): CC mode: …`
    pub fn describe(&self) -> String {
        let uuid = self
            .uuid
            .as_deref()
            .map_or_else(String::new, |u| format!(" ({u})"));
        format!("gpu[{}]{uuid}: {}: {}", self.index, self.check, self.detail)
    }
}

/// Everything one collection and verification of the GPUs produced.
pub struct GpuRound {
    /// The evidence of every GPU that gave any, for the certificate to commit to.
    pub evidence: GpuEvidenceSet,
    pub collateral: GpuCollateral,
    /// The RTMR3 `gpu` event of every GPU whose report could be read.
    pub events: Vec<GpuEventData>,
    pub gpus: Vec<GpuStatus>,
    /// Why the agent may not be ready (a missing GPU, a failed one), if it may not.
    pub failure: Option<String>,
    /// How many GPUs must pass (`gpu.required`; with "all", those found, at least one).
    pub required: usize,
}

impl GpuRound {
    /// What decides whether a new certificate is needed: the measured events and each
    /// GPU's pass or failed check (not the details, which carry timings).
    pub fn outcome(&self) -> (Vec<GpuEventData>, Vec<(u32, bool, String)>, bool) {
        (
            self.events.clone(),
            self.gpus
                .iter()
                .map(|g| (g.index, g.ok, g.check.clone()))
                .collect(),
            self.failure.is_some(),
        )
    }

    pub fn ready_detail(&self) -> String {
        match &self.failure {
            Some(f) => f.clone(),
            None => format!("{} GPUs attested", self.gpus.len()),
        }
    }
}

/// The GPU checks the agent makes beside the verifier's (names in /readyz).
pub const CHECK_CC_MODE: &str = "CC mode";
pub const CHECK_READY_STATE: &str = "ready state";
pub const CHECK_MULTI_GPU: &str = "multi-GPU mode";
pub const CHECK_COLLECTION: &str = "collection";
pub const CHECK_COLLATERAL: &str = "GPU collateral";
pub const CHECK_VERIFIER: &str = "GPU verifier";

impl GpuAttester {
    /// Check what the configuration says about GPUs against what the machine shows, and
    /// open the source. `Ok(None)`: no GPU is attested (none configured and none visible, or
    /// `gpu.insecure_serve_unattested`).
    pub async fn open(config: &Config, policy: &GpuPolicy) -> Result<Option<GpuAttester>, String> {
        let pci_dir = config.gpu.as_ref().map_or_else(
            || PathBuf::from(tdx_gpu::pci::DEFAULT_PCI_DEVICES_DIR),
            |g| g.pci_devices_dir.clone(),
        );
        let pci = {
            let dir = pci_dir.clone();
            tokio::task::spawn_blocking(move || tdx_gpu::pci::nvidia_gpus(&dir))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        let sim_dir = sim_gpu_dir(config);
        let Some(gpu) = &config.gpu else {
            if !pci.is_empty() {
                return Err(format!(
                    "NVIDIA GPUs are visible (PCI devices of vendor {} in {}: {}), but the configuration has no [gpu] table: add [gpu] with required = N or \"all\" so they are attested with the TD (docs/gpu.md), or insecure_serve_unattested = true",
                    tdx_gpu::pci::NVIDIA_VENDOR,
                    pci_dir.display(),
                    pci.join(", ")
                ));
            }
            if let Some(dir) = sim_dir {
                let n = sim_gpu_count(dir.clone()).await?;
                if n > 0 {
                    return Err(format!(
                        "the simulated TD in {} has {n} simulated GPUs, but the configuration has no [gpu] table: add [gpu] with required = N or \"all\" and source = \"sim\" (docs/gpu.md), or insecure_serve_unattested = true",
                        dir.display()
                    ));
                }
            }
            return Ok(None);
        };
        let Some(required) = gpu.required else {
            tracing::warn!(
                "gpu.insecure_serve_unattested: serving without attesting the GPUs; clients that require GPUs refuse this TD"
            );
            return Ok(None);
        };
        let timeout = Duration::from_secs(gpu.timeout_secs);
        let collector = open_collector(config, gpu.source, timeout)
            .await
            .map_err(|e| format!("[gpu] source = {:?}: {e}", gpu.source))?;
        let count = collector
            .count()
            .await
            .map_err(|e| format!("[gpu] {}: {e}", collector.describe()))?;
        if let Some(e) = presence_error(required, gpu.source, count, &pci, collector.describe()) {
            return Err(e);
        }
        let roots = load_roots(config, gpu.source).await?;
        // Simulated GPUs take their collateral from the simulation, unless the configuration
        // names services: then the fetching path NVML's GPUs use runs against them (`sim
        // pccs` serves the simulation's, docs/gpu.md).
        #[cfg(feature = "sim")]
        let sim_services = gpu.rim_service != tdx_net::nvidia::DEFAULT_RIM_SERVICE
            || gpu.ocsp_responder != tdx_net::nvidia::DEFAULT_OCSP_RESPONDER;
        let collateral = match gpu.source {
            #[cfg(feature = "sim")]
            GpuSourceKind::Sim if !sim_services => {
                let dir = sim_dir.ok_or("gpu.source = \"sim\" needs a simulation directory")?;
                let gpus = tokio::task::spawn_blocking(move || tdx_sim::SimGpus::open(&dir))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("[gpu] simulated GPUs: {e}"))?
                    .ok_or("[gpu] source = \"sim\": the simulation has no GPUs")?;
                CollateralSource::Sim(Arc::new(gpus))
            }
            #[cfg(not(feature = "sim"))]
            GpuSourceKind::Sim => return Err(format!("gpu.source: {}", tdx_tee::SIM_NOT_BUILT)),
            _ => CollateralSource::Nvidia(Box::new(
                tdx_net::nvidia::NvidiaServices::new(
                    &gpu.rim_service,
                    &gpu.ocsp_responder,
                    Some(gpu.cache_dir.clone()),
                    gpu.rim_dir.clone(),
                )
                .map_err(|e| format!("[gpu]: {e}"))?,
            )),
        };
        tracing::info!(
            source = collector.describe(),
            gpus = count,
            required = ?required,
            "GPUs are attested with the TD"
        );
        Ok(Some(GpuAttester {
            collector,
            required,
            verifier: Arc::new(GpuVerifier::new()),
            roots: Arc::new(roots),
            policy: Arc::new(policy.clone()),
            collateral,
            recheck: Duration::from_secs(gpu.recheck_secs),
        }))
    }

    /// Only the reports over `nonce` (a challenge batch's): no collateral, no verification,
    /// which clients do. A GPU that fails to answer is left out, as at issue.
    pub async fn collect_evidence(
        &self,
        nonce: [u8; 32],
        metrics: &super::metrics::Metrics,
    ) -> GpuEvidenceSet {
        let count = match self.collector.count().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "challenge: no GPU evidence");
                return empty_set();
            }
        };
        let mut gpus = Vec::new();
        for index in 0..count {
            match self.collector.collect(index, nonce).await {
                Ok(g) => {
                    if let Some(e) = g.evidence {
                        metrics.count_gpu_report("challenge");
                        gpus.push(GpuEvidence {
                            index,
                            uuid: g.uuid,
                            report: e.report,
                            chain_pem: e.chain_pem,
                        });
                    }
                }
                Err(e) => tracing::warn!(gpu = index, error = %e, "challenge: GPU left out"),
            }
        }
        GpuEvidenceSet::new(gpus).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "challenge: GPU evidence refused");
            empty_set()
        })
    }

    /// Collect every GPU's state and report over `nonce`, fetch their collateral, verify.
    /// `now` is when the round began: the cache's OCSP answers are judged young enough at
    /// it. The GPUs are verified at the clock's time once the collateral is in, since the
    /// answers fetched in between are dated when NVIDIA's responder signed them.
    pub async fn attest(
        &self,
        nonce: [u8; 32],
        now: i64,
        metrics: &super::metrics::Metrics,
    ) -> GpuRound {
        let mut gpus: Vec<GpuStatus> = Vec::new();
        let mut collected: Vec<CollectedGpu> = Vec::new();
        let count = match self.collector.count().await {
            Ok(n) => n,
            Err(e) => {
                // A call still hanging on one GPU blocks the count: name that GPU.
                let failure = match e.index() {
                    Some(index) => {
                        let hung = GpuStatus {
                            index,
                            uuid: None,
                            ok: false,
                            check: CHECK_COLLECTION.into(),
                            detail: e.to_string(),
                        };
                        let failure = hung.describe();
                        gpus.push(hung);
                        failure
                    }
                    None => format!("{}: {e}", self.collector.describe()),
                };
                return GpuRound {
                    evidence: empty_set(),
                    collateral: GpuCollateral::default(),
                    events: Vec::new(),
                    gpus,
                    failure: Some(failure),
                    required: self.required_of(0),
                };
            }
        };
        // One at a time: a hung call on one GPU must not be joined by calls on the others.
        for index in 0..count {
            match self.collector.collect(index, nonce).await {
                Ok(g) => {
                    if g.evidence.is_some() {
                        metrics.count_gpu_report("certificate");
                    }
                    collected.push(g)
                }
                Err(e) => gpus.push(GpuStatus {
                    index,
                    uuid: None,
                    ok: false,
                    check: CHECK_COLLECTION.into(),
                    detail: e.to_string(),
                }),
            }
        }
        let evidence = GpuEvidenceSet::new(
            collected
                .iter()
                .filter_map(|g| {
                    g.evidence.as_ref().map(|e| GpuEvidence {
                        index: g.index,
                        uuid: g.uuid.clone(),
                        report: e.report.clone(),
                        chain_pem: e.chain_pem.clone(),
                    })
                })
                .collect(),
        );
        let evidence = match evidence {
            Ok(s) => s,
            Err(e) => {
                return GpuRound {
                    evidence: empty_set(),
                    collateral: GpuCollateral::default(),
                    events: Vec::new(),
                    gpus,
                    failure: Some(format!("GPU evidence: {e}")),
                    required: self.required_of(count),
                };
            }
        };
        let Gathered {
            collateral,
            failed: collateral_failed,
        } = self.collateral_for(&evidence, now).await;
        // NVIDIA's responder dates an answer when it signs it, during the round just run:
        // judged at `now`, before the round, a fresh answer is "from the future". The nonce,
        // not the time, is what binds the evidence to this round.
        let verify_at = tdx_core::verify::time::now_unix();
        let verify: Arc<VerifyFn> = {
            let (verifier, roots, policy) = (
                Arc::clone(&self.verifier),
                Arc::clone(&self.roots),
                Arc::clone(&self.policy),
            );
            let collateral = collateral.clone();
            Arc::new(move |e: &RawEvidence| {
                verifier.verify(
                    GpuEvidenceRef {
                        report: &e.report,
                        chain_pem: &e.chain_pem,
                    },
                    &nonce,
                    &collateral,
                    &policy,
                    &roots,
                    verify_at,
                )
            })
        };
        let verified = verify_all(&collected, verify).await;
        let mut events = Vec::new();
        for (g, report) in verified {
            if let Some(Ok(r)) = &report
                && let Some(m) = r.gpu().measurements_sha384.clone()
            {
                events.push(GpuEventData {
                    index: g.index,
                    architecture: r.gpu().architecture.clone().unwrap_or_default(),
                    uuid_sha256: GpuEventData::uuid_digest(&g.uuid),
                    driver_version: g.driver_version.clone(),
                    vbios_version: g.vbios_version.clone(),
                    cc_mode: g.cc_mode,
                    multi_gpu_mode: multi_gpu_mode(&g, r.gpu().mode.as_deref()),
                    measurements_sha384: m,
                });
            }
            gpus.push(judge(&g, report, collateral_failed.get(&g.index)));
        }
        gpus.sort_by_key(|g| g.index);
        let passed = gpus.iter().filter(|g| g.ok).count();
        let needed = self.required_of(count);
        let failure = gpus
            .iter()
            .find(|g| !g.ok)
            .map(GpuStatus::describe)
            .or_else(|| {
                (passed < needed).then(|| {
                    format!(
                        "a required GPU is missing: {count} found, {needed} required (gpu.required)"
                    )
                })
            });
        GpuRound {
            evidence,
            collateral,
            events,
            gpus,
            failure,
            required: needed,
        }
    }

    /// How many GPUs must pass when `found` were found (`gpu.required`).
    fn required_of(&self, found: u32) -> usize {
        match self.required {
            GpuRequired::Count(n) => n as usize,
            GpuRequired::All => (found as usize).max(1),
        }
    }

    /// The collateral of every GPU with evidence, each failure kept with its own GPU so that
    /// one GPU's bad evidence or missing RIM does not fail the others. Cached answers are
    /// judged young enough at `now`.
    async fn collateral_for(&self, evidence: &GpuEvidenceSet, now: i64) -> Gathered {
        let mut out = Gathered {
            collateral: GpuCollateral::default(),
            failed: HashMap::new(),
        };
        if evidence.is_empty() {
            return out;
        }
        match &self.collateral {
            CollateralSource::Nvidia(services) => {
                let pairs: Vec<(Vec<u8>, Vec<u8>)> = evidence
                    .gpus()
                    .iter()
                    .map(|g| (g.report.clone(), g.chain_pem.clone()))
                    .collect();
                let per_gpu = services
                    .collateral_per_gpu(&pairs, &self.roots, now, self.policy.ocsp_max_age_secs)
                    .await;
                for (g, gathered) in evidence.gpus().iter().zip(per_gpu) {
                    match gathered {
                        Ok(c) => out.collateral.merge(c),
                        Err(e) => {
                            tracing::warn!(gpu = g.index, uuid = %g.uuid, error = %e, "GPU collateral");
                            out.failed.insert(g.index, e.to_string());
                        }
                    }
                }
            }
            #[cfg(feature = "sim")]
            CollateralSource::Sim(gpus) => {
                let gpus = Arc::clone(gpus);
                // The simulation's collateral is one piece for all its GPUs.
                let all = tokio::task::spawn_blocking(move || gpus.collateral(now))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match all {
                    Ok(c) => out.collateral = c,
                    Err(e) => {
                        for g in evidence.gpus() {
                            out.failed.insert(g.index, e.clone());
                        }
                    }
                }
            }
        }
        out
    }
}

/// What a round's collateral fetch gave: everything gathered, and why it could not be for
/// each GPU (by index) it could not.
struct Gathered {
    collateral: GpuCollateral,
    failed: HashMap<u32, String>,
}

/// How one GPU's evidence is verified (the verifier with the round's collateral and time).
type VerifyFn = dyn Fn(&RawEvidence) -> GpuReport + Send + Sync;

/// Each GPU with its verification: `None` without evidence, an error when the verifier did
/// not give a report.
async fn verify_all(
    collected: &[CollectedGpu],
    verify: Arc<VerifyFn>,
) -> Vec<(CollectedGpu, Option<Result<GpuReport, String>>)> {
    let to_verify = collected.to_vec();
    // About 17 ms of P-384 per GPU when cold: CPU work, off the async workers.
    let verified = tokio::task::spawn_blocking(move || {
        to_verify
            .into_iter()
            .map(|g| {
                let report = g
                    .evidence
                    .as_ref()
                    .map(|e| verify_guarded(g.index, || verify(e)));
                (g, report)
            })
            .collect::<Vec<_>>()
    })
    .await;
    verified.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the GPU verifier did not run");
        collected
            .iter()
            .map(|g| {
                let report = g
                    .evidence
                    .as_ref()
                    .map(|_| Err(format!("the GPU verifier did not run: {e}")));
                (g.clone(), report)
            })
            .collect()
    })
}

/// A GPU's verification, or why there is none: a panic in the verifier is a bug in it, so it
/// fails this GPU naming the verifier (and is logged), while the other GPUs are still judged.
fn verify_guarded(index: u32, verify: impl FnOnce() -> GpuReport) -> Result<GpuReport, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(verify)).map_err(|p| {
        let detail = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        tracing::error!(gpu = index, panic = %detail, "the GPU verifier panicked");
        format!(
            "the GPU verifier failed (it panicked: {detail}); this is a bug in tdx-agent: report it with the agent's log"
        )
    })
}

/// One GPU's outcome: the agent's own checks first, then its collateral, then the verifier's.
fn judge(
    g: &CollectedGpu,
    report: Option<Result<GpuReport, String>>,
    collateral_error: Option<&String>,
) -> GpuStatus {
    let status = |ok: bool, check: &str, detail: String| GpuStatus {
        index: g.index,
        uuid: Some(g.uuid.clone()),
        ok,
        check: check.into(),
        detail,
    };
    match (report, collateral_error) {
        _ if g.cc_mode == CcMode::Off => status(
            false,
            CHECK_CC_MODE,
            "CC is off (enable it on the host: nvidia-smi conf-compute -scc on, then reset the GPU)"
                .into(),
        ),
        _ if g.cc_mode == CcMode::Devtools => status(
            false,
            CHECK_CC_MODE,
            "CC is in devtools mode: the host can read GPU memory (set it to on: nvidia-smi conf-compute -scc on)".into(),
        ),
        _ if g.protected_pcie => status(
            false,
            CHECK_MULTI_GPU,
            "protected PCIe mode is not supported yet".into(),
        ),
        (_, Some(e)) => status(false, CHECK_COLLATERAL, e.clone()),
        (None, _) => status(false, CHECK_COLLECTION, "no attestation report".into()),
        (Some(Err(e)), _) => status(false, CHECK_VERIFIER, e),
        (Some(Ok(r)), _) if !r.accepted() => {
            let (check, detail) = r.failures().next().map_or_else(
                || ("GPU verification".to_string(), r.summary()),
                |c| {
                    (
                        c.name.clone(),
                        format!("expected {}, found {}", c.expected, c.found),
                    )
                },
            );
            status(false, &check, detail)
        }
        (Some(Ok(_)), _) if !g.ready => status(
            false,
            CHECK_READY_STATE,
            "the GPUs' CC ready state is not set (nvidia-smi conf-compute -srs 1 once attested)"
                .into(),
        ),
        (Some(Ok(r)), _) => status(
            true,
            "attested",
            format!(
                "{} {}, driver {}, VBIOS {}",
                r.gpu().architecture.as_deref().unwrap_or("GPU"),
                g.uuid,
                g.driver_version,
                g.vbios_version
            ),
        ),
    }
}

fn empty_set() -> GpuEvidenceSet {
    GpuEvidenceSet::default()
}

/// The start-up rules on what the source shows against what the configuration requires and
/// the PCI bus holds (docs/gpu.md): `all` with no GPU, or NVML showing fewer GPUs than there
/// are NVIDIA PCI devices, stop the agent. Fewer GPUs than `required` does not: that is a GPU
/// missing at run time, shown in /readyz.
fn presence_error(
    required: GpuRequired,
    source: GpuSourceKind,
    count: u32,
    pci: &[String],
    describe: &str,
) -> Option<String> {
    if required == GpuRequired::All && count == 0 {
        return Some(format!(
            "gpu.required = \"all\", but {describe} shows no GPU; attach the GPUs to the TD, or remove [gpu] if this TD has none"
        ));
    }
    if source == GpuSourceKind::Nvml && usize::try_from(count).unwrap_or(usize::MAX) < pci.len() {
        return Some(format!(
            "NVML shows {count} GPUs but there are {} NVIDIA PCI devices ({}): a GPU NVML does not show cannot be attested; check the driver with nvidia-smi (see [gpu] in docs/gpu.md)",
            pci.len(),
            pci.join(", ")
        ));
    }
    None
}

/// The mode the measured event records: protected PCIe from NVML, else what the signed
/// report's feature flag says.
fn multi_gpu_mode(g: &CollectedGpu, report_mode: Option<&str>) -> MultiGpuMode {
    if g.protected_pcie {
        return MultiGpuMode::ProtectedPcie;
    }
    match report_mode {
        Some("protected-pcie") => MultiGpuMode::ProtectedPcie,
        Some("multi-gpu") => MultiGpuMode::Nvle,
        _ => MultiGpuMode::None,
    }
}

/// The simulation directory whose GPUs a `sim` source uses, if any.
fn sim_gpu_dir(config: &Config) -> Option<PathBuf> {
    if let Some(d) = config.gpu.as_ref().and_then(|g| g.insecure_sim_dir.clone()) {
        return Some(d);
    }
    match config.tee.kind {
        TeeKindConfig::Sim => config.tee.sim_dir.clone(),
        TeeKindConfig::Configfs => None,
    }
}

#[cfg(feature = "sim")]
async fn sim_gpu_count(dir: PathBuf) -> Result<usize, String> {
    tokio::task::spawn_blocking(move || {
        Ok(
            match tdx_sim::SimGpus::open(&dir).map_err(|e| e.to_string())? {
                Some(g) => g.entries().map_err(|e| e.to_string())?.len(),
                None => 0,
            },
        )
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(not(feature = "sim"))]
async fn sim_gpu_count(_dir: PathBuf) -> Result<usize, String> {
    Ok(0)
}

async fn open_collector(
    config: &Config,
    kind: GpuSourceKind,
    timeout: Duration,
) -> Result<Collector, String> {
    match kind {
        GpuSourceKind::Nvml => Collector::open(
            || tdx_gpu::NvmlSource::open().map(|s| Box::new(s) as Box<dyn GpuSource>),
            timeout,
        )
        .await
        .map_err(|e| e.to_string()),
        #[cfg(feature = "sim")]
        GpuSourceKind::Sim => {
            let dir =
                sim_gpu_dir(config).ok_or("no simulation directory for the simulated GPUs")?;
            Collector::open(
                move || tdx_gpu::SimSource::open(dir).map(|s| Box::new(s) as Box<dyn GpuSource>),
                timeout,
            )
            .await
            .map_err(|e| e.to_string())
        }
        #[cfg(not(feature = "sim"))]
        GpuSourceKind::Sim => {
            let _ = config;
            Err(tdx_tee::SIM_NOT_BUILT.into())
        }
    }
}

/// `gpu.insecure_roots`, the simulation's gpu-roots.pem for simulated GPUs, else NVIDIA's.
async fn load_roots(config: &Config, kind: GpuSourceKind) -> Result<GpuRoots, String> {
    let path = match (
        config.gpu.as_ref().and_then(|g| g.insecure_roots.clone()),
        kind,
    ) {
        (Some(p), _) => Some(p),
        (None, GpuSourceKind::Sim) => sim_gpu_dir(config).map(|d| d.join("gpu-roots.pem")),
        (None, GpuSourceKind::Nvml) => None,
    };
    match path {
        None => GpuRoots::nvidia().map_err(|e| format!("NVIDIA's GPU roots: {e}")),
        Some(p) => {
            let pem = tokio::fs::read(&p)
                .await
                .map_err(|e| format!("gpu.insecure_roots {}: {e}", p.display()))?;
            GpuRoots::insecure_from_pem(&pem)
                .map_err(|e| format!("gpu.insecure_roots {}: {e}", p.display()))
        }
    }
}

/// Measure each GPU's event into RTMR3 unless the log's last event for that GPU says the
/// same (a restart in the same boot, or an unchanged GPU at rotation). Logged (fsynced)
/// before the extend, as every runtime event is.
pub async fn measure_events(
    events: &[GpuEventData],
    log: &mut Rtmr3Log,
    tee: &TeeHandle,
    audit: &AuditLog,
) -> Result<(), String> {
    for e in events {
        let data = serde_json::to_value(e).map_err(|err| err.to_string())?;
        let last = log.lines.iter().rev().find(|l| {
            l.event.kind == GPU_EVENT
                && l.event.data.get("index") == data.get("index")
                && l.event.data.get("uuid_sha256") == data.get("uuid_sha256")
        });
        // The same event logged but never extended (its audit record or its extend failed)
        // is not measured: go on to log_then_extend, which refuses while it is pending.
        if last.is_some_and(|l| l.event.data == data && log.unextended != Some(l.seq)) {
            continue;
        }
        let event = Event {
            kind: GPU_EVENT.into(),
            data,
        };
        let measured = super::measure::log_then_extend(log, tee, audit, event)
            .await
            .map_err(|err| match err {
                super::measure::MeasureError::Log(err) => format!("RTMR3 event log: {err}"),
                err @ super::measure::MeasureError::Pending { .. } => err.to_string(),
                err @ super::measure::MeasureError::Audit { .. } => {
                    format!("gpu[{}]: {err}; refusing to serve", e.index)
                }
                super::measure::MeasureError::Extend(err) => format!(
                    "extending RTMR3 with gpu[{}] failed after it was logged: {err}; refusing to serve",
                    e.index
                ),
            })?;
        tracing::info!(gpu = e.index, cc_mode = e.cc_mode.as_str(), digest = %hex(&measured.digest), "RTMR3 extended (gpu)");
    }
    Ok(())
}

#[cfg(all(test, feature = "sim"))]
#[path = "gpus_tests.rs"]
mod gpus_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u32) -> GpuEventData {
        GpuEventData {
            index,
            architecture: "hopper".into(),
            uuid_sha256: GpuEventData::uuid_digest("GPU-0"),
            driver_version: "550.0".into(),
            vbios_version: "96.00".into(),
            cc_mode: CcMode::On,
            multi_gpu_mode: tdx_core::gpu::MultiGpuMode::None,
            measurements_sha384: "ab".repeat(48),
        }
    }

    #[tokio::test]
    async fn a_gpu_event_left_unextended_is_not_skipped_as_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Rtmr3Log::open(&dir.path().join("rtmr3.jsonl"), "boot").unwrap();
        let platform = Arc::new(super::super::measure::fakes::Counting::default());
        let tee = TeeHandle::new(platform.clone());
        let audit = AuditLog::open(dir.path().join("audit"), Default::default())
            .await
            .unwrap();
        let events = [event(0)];
        // The audit log cannot record it: logged, not extended.
        let closed = AuditLog::open(dir.path().join("audit2"), Default::default())
            .await
            .unwrap();
        closed.close().await.unwrap();
        let err = measure_events(&events, &mut log, &tee, &closed)
            .await
            .unwrap_err();
        assert!(
            err.contains("gpu[0]") && err.contains("not extended"),
            "{err}"
        );
        assert_eq!((log.lines.len(), platform.extends()), (1, 0));
        // At the next issue the same GPU state is logged already, but not measured: refused,
        // not skipped as if RTMR3 held it.
        let err = measure_events(&events, &mut log, &tee, &audit)
            .await
            .unwrap_err();
        assert!(err.contains("event #1"), "{err}");
        assert_eq!((log.lines.len(), platform.extends()), (1, 0));
    }

    #[test]
    fn presence_rules() {
        let pci = ["0000:c1:00.0".to_string(), "0000:c2:00.0".to_string()];
        let nvml = GpuSourceKind::Nvml;
        // NVML hides a GPU the bus has: refused, naming the devices.
        let e = presence_error(GpuRequired::Count(1), nvml, 1, &pci, "NVML").unwrap();
        assert!(
            e.contains("NVML shows 1 GPUs but there are 2") && e.contains("0000:c2:00.0"),
            "{e}"
        );
        assert!(presence_error(GpuRequired::Count(1), nvml, 2, &pci, "NVML").is_none());
        // "all" with none found: refused; a count above what exists is a run-time matter.
        let e = presence_error(GpuRequired::All, nvml, 0, &[], "NVML").unwrap();
        assert!(e.contains("gpu.required = \"all\""), "{e}");
        assert!(presence_error(GpuRequired::Count(8), nvml, 2, &pci, "NVML").is_none());
        // The simulated GPUs are not on the PCI bus.
        assert!(
            presence_error(GpuRequired::Count(1), GpuSourceKind::Sim, 1, &pci, "sim").is_none()
        );
    }
}
