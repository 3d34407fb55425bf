//! Appraise the GPUs a TD attests with its certificate (docs/gpu.md): the served evidence
//! must be the evidence the certificate's claims commit to, each report must be made over the
//! nonce derived from the certificate's key, there must be as many GPUs as the policy's
//! `gpu.count`, each must pass the GPU verifier, and the RTMR3 `gpu` event the agent measured
//! for it must record CC on without devtools. Every check lands in the TD report, per GPU
//! named `gpu[I] <check>`.

use super::events::CHECK_EVENT_LOG;
use super::report::Report;
use crate::encoding::hex;
use crate::gpu::{
    CcMode, GPU_EVENT, GpuCollateral, GpuEventData, GpuEvidenceRef, GpuEvidenceSet, GpuPolicy,
    GpuReport, GpuRoots, GpuVerifier, MultiGpuMode,
};
use crate::measure::rtmr3_log;

pub const CHECK_GPU_BINDING: &str = "GPU evidence binding";
pub const CHECK_GPU_COUNT: &str = "GPU count";
/// Per GPU, beside the verifier's own checks: the RTMR3 `gpu` event's CC state.
pub const CHECK_CC_STATE: &str = "CC state";
/// A server whose certificate commits to GPU evidence, under a policy that requires no GPU.
pub const WARNING_GPUS_NOT_CHECKED: &str =
    "the server attests GPUs, but the policy's gpu.count is 0, so they were not checked";
/// A policy whose `[gpu]` settings are set while `gpu.count` is 0, outside `verify-gpu`.
pub const WARNING_GPU_SETTINGS_UNUSED: &str = "the policy sets [gpu] keys, but gpu.count is 0, \
    so no GPU is required or checked (the keys apply to verify-gpu, or with gpu.count >= 1)";

/// The warnings for GPUs this appraisal of a server does not check: GPUs the server attests
/// (`claimed`) and `[gpu]` settings, under `gpu.count = 0`. Without them a policy author who
/// set `min_driver_version` but not `count` would believe the GPUs checked.
pub fn warn_unchecked_gpus(report: &mut Report, policy: &GpuPolicy, claimed: bool) {
    if policy.count != 0 {
        return;
    }
    if claimed {
        report.push_warning(WARNING_GPUS_NOT_CHECKED.into());
    }
    if *policy != GpuPolicy::default() {
        report.push_warning(WARNING_GPU_SETTINGS_UNUSED.into());
    }
}

/// `gpu[1] measurements` for the verifier's `GPU measurements` on GPU 1.
pub fn gpu_check_name(index: u32, check: &str) -> String {
    let short = check.strip_prefix("GPU ").unwrap_or(check);
    format!("gpu[{index}] {short}")
}

/// What the GPU appraisal of one server needs besides the policy.
pub struct GpuInputs<'a> {
    /// The `gpu-evidence-sha256` claim of the certificate, where it has one.
    pub claimed_digest: Option<[u8; 32]>,
    /// The GPU evidence the server served, where it served any (or the reason it could not
    /// be read).
    pub evidence: Result<&'a GpuEvidenceSet, String>,
    pub collateral: &'a GpuCollateral,
    /// The nonce every report must be over (derived from the certificate's key).
    pub nonce: [u8; 32],
    /// The RTMR3 event log (JSON lines), already replayed against RTMR3 by the TD appraisal.
    pub event_log: Option<&'a str>,
    pub roots: &'a GpuRoots,
    pub at: i64,
}

/// Add the GPU checks to `report` (see the module docs). With `gpu.count = 0` nothing is
/// required or checked; a certificate that commits to GPU evidence then only earns a warning.
pub fn appraise_gpus(
    report: &mut Report,
    verifier: &GpuVerifier,
    policy: &GpuPolicy,
    inputs: GpuInputs<'_>,
) {
    if policy.count == 0 {
        warn_unchecked_gpus(report, policy, inputs.claimed_digest.is_some());
        return;
    }
    let expected_binding = "GPU evidence whose SHA-256 the certificate's claims commit to";
    let Some(claimed) = inputs.claimed_digest else {
        report.push_check(
            CHECK_GPU_BINDING,
            false,
            expected_binding.into(),
            "the certificate commits to no GPU evidence (the server attests no GPU)".into(),
        );
        report.not_evaluated.push(CHECK_GPU_COUNT.into());
        return;
    };
    let set = match inputs.evidence {
        Ok(s) => s,
        Err(why) => {
            report.push_check(CHECK_GPU_BINDING, false, expected_binding.into(), why);
            report.not_evaluated.push(CHECK_GPU_COUNT.into());
            return;
        }
    };
    let served = set.digest();
    let bound = served == claimed;
    report.push_check(
        CHECK_GPU_BINDING,
        bound,
        format!("GPU evidence with SHA-256 {}", hex(&claimed)),
        format!("served GPU evidence has SHA-256 {}", hex(&served)),
    );
    if !bound {
        // Evidence the quote does not vouch for says nothing about this TD's GPUs.
        report.not_evaluated.push(CHECK_GPU_COUNT.into());
        return;
    }
    let count = set.gpus().len();
    report.push_check(
        CHECK_GPU_COUNT,
        count >= usize::try_from(policy.count).unwrap_or(usize::MAX),
        format!("at least {} attested GPUs (gpu.count)", policy.count),
        format!("{count} attested"),
    );

    let events = gpu_events(report, inputs.event_log);
    for gpu in set.gpus() {
        let gpu_report = verifier.verify(
            GpuEvidenceRef {
                report: &gpu.report,
                chain_pem: &gpu.chain_pem,
            },
            &inputs.nonce,
            inputs.collateral,
            policy,
            inputs.roots,
            inputs.at,
        );
        check_cc_state(report, gpu.index, &gpu.uuid, &gpu_report, &events);
        report.add_gpu(gpu.index, gpu_report);
    }
}

/// [`appraise_gpus`] for GPU evidence served beside the RA-TLS certificate `cert_der`: the
/// RTMR3 event log comes from the certificate's claims, the collateral from the served
/// bundle (`gpu_collateral`, docs/formats.md §12). Used by clients for the certificate's GPUs
/// (claimed digest from the claims, nonce from its key) and a challenge batch's (claimed
/// digest bound by REPORTDATA, nonce from the batch root), and by `verify-evidence`.
#[allow(clippy::too_many_arguments)]
pub fn appraise_served_gpus(
    report: &mut Report,
    verifier: &GpuVerifier,
    roots: &GpuRoots,
    policy: &GpuPolicy,
    cert_der: &[u8],
    gpu_collateral: Option<&serde_json::Value>,
    evidence: Result<&GpuEvidenceSet, String>,
    claimed_digest: Option<[u8; 32]>,
    nonce: [u8; 32],
    at: i64,
) {
    let claims = crate::ratls::certificate_claims(cert_der).ok();
    let event_log = claims
        .as_ref()
        .and_then(|c| c.event_log.as_deref())
        .and_then(|l| std::str::from_utf8(l).ok());
    let collateral = match gpu_collateral {
        Some(v) => {
            GpuCollateral::from_bundle_json(v.to_string().as_bytes(), "the server's GPU collateral")
        }
        None => Ok(GpuCollateral::default()),
    };
    let collateral = match collateral {
        Ok(c) => c,
        Err(e) => {
            report.push_check(
                CHECK_GPU_BINDING,
                false,
                "readable GPU collateral".into(),
                e.to_string(),
            );
            return;
        }
    };
    appraise_gpus(
        report,
        verifier,
        policy,
        GpuInputs {
            claimed_digest,
            evidence,
            collateral: &collateral,
            nonce,
            event_log,
            roots,
            at,
        },
    );
}

/// The log's `gpu` events, or why none can be trusted.
fn gpu_events(report: &Report, log: Option<&str>) -> Result<Vec<GpuEventData>, String> {
    match report.check(CHECK_EVENT_LOG) {
        Some(c) if c.ok => {}
        Some(_) => return Err("the RTMR3 event log does not replay to RTMR3".into()),
        None => return Err("the evidence carries no RTMR3 event log".into()),
    }
    let Some(log) = log else {
        return Err("the evidence carries no RTMR3 event log".into());
    };
    let lines = rtmr3_log::parse_lines(log.lines().filter(|l| !l.is_empty()), 1)
        .map_err(|(line, detail)| format!("RTMR3 event log line {line}: {detail}"))?;
    lines
        .into_iter()
        .filter(|l| l.event.kind == GPU_EVENT)
        .map(|l| {
            serde_json::from_value::<GpuEventData>(l.event.data)
                .map_err(|e| format!("RTMR3 event #{} (gpu): {e}", l.seq))
        })
        .collect()
}

/// The GPU's RTMR3 event must exist (same index, UUID and measurements as the report) and
/// record CC on, no devtools, and a multi-GPU mode this verifier supports.
fn check_cc_state(
    report: &mut Report,
    index: u32,
    uuid: &str,
    gpu: &GpuReport,
    events: &Result<Vec<GpuEventData>, String>,
) {
    let name = gpu_check_name(index, CHECK_CC_STATE);
    let expected = "an RTMR3 gpu event for this GPU with cc_mode \"on\" and multi_gpu_mode \"none\" or \"nvle\"".to_string();
    let events = match events {
        Ok(e) => e,
        Err(why) => {
            report.push_check(&name, false, expected, why.clone());
            return;
        }
    };
    let uuid_sha256 = GpuEventData::uuid_digest(uuid);
    let measured = gpu.gpu().measurements_sha384.as_deref();
    // The last event for the GPU is its state now: the agent re-measures on every change.
    let event = events
        .iter()
        .rev()
        .find(|e| e.index == index && e.uuid_sha256 == uuid_sha256);
    let (ok, found) = match event {
        None => (
            false,
            format!("no gpu event for index {index} and this UUID"),
        ),
        Some(e) if Some(e.measurements_sha384.as_str()) != measured => (
            false,
            format!(
                "the gpu event records measurements {}, the report has {}",
                e.measurements_sha384,
                measured.unwrap_or("none")
            ),
        ),
        Some(e) => {
            let mode_ok = matches!(e.multi_gpu_mode, MultiGpuMode::None | MultiGpuMode::Nvle);
            (
                e.cc_mode == CcMode::On && mode_ok,
                format!(
                    "cc_mode {:?}, multi_gpu_mode {:?}",
                    e.cc_mode.as_str(),
                    e.multi_gpu_mode.as_str()
                ),
            )
        }
    };
    report.push_check(&name, ok, expected, found);
}
