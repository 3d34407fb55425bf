//! `tdx-agent gpu-collateral`: gather the collateral of GPUs' evidence (their RIMs from the RIM
//! service or a local directory, fresh OCSP answers for their certificate chains) into one
//! bundle (docs/formats.md §12), so `verify-gpu --collateral` and air-gapped sites appraise it
//! offline, as DCAP collateral is gathered once and stapled.

use std::path::PathBuf;

use clap::Args;

use super::verify::load_policy;
use super::{CliResult, Failure, read_file, write_file};
use tdx_core::gpu::decode_report_file;
use tdx_core::verify::time;
use tdx_net::nvidia::{DEFAULT_OCSP_RESPONDER, DEFAULT_RIM_SERVICE, NvidiaServices};

#[derive(Debug, Args)]
pub struct GpuCollateralArgs {
    /// A GPU's attestation report as NVML returns it (binary or hex text); repeat with
    /// `--chain` for each GPU, in the same order.
    #[arg(long, value_name = "FILE", required = true)]
    pub report: Vec<PathBuf>,
    /// That GPU's certificate chain (PEM, as NVML returns it).
    #[arg(long, value_name = "FILE", required = true)]
    pub chain: Vec<PathBuf>,
    /// NVIDIA's RIM service (the simulation's: `sim pccs`'s address).
    #[arg(long, value_name = "URL", default_value = DEFAULT_RIM_SERVICE)]
    pub rim_service: String,
    /// NVIDIA's OCSP responder (the simulation's: `sim pccs`'s address + `/ocsp`).
    #[arg(long, value_name = "URL", default_value = DEFAULT_OCSP_RESPONDER)]
    pub ocsp_responder: String,
    /// RIMs on disk (`<id>.xml`, or NVIDIA's file names), read before the RIM service.
    #[arg(long, value_name = "DIR")]
    pub rim_dir: Option<PathBuf>,
    /// The policy whose `[gpu] ocsp_max_age_secs` the answers must meet.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Test roots (device root then RIM root, PEM) instead of NVIDIA's: simulated GPUs.
    #[arg(long, value_name = "PEM")]
    pub insecure_gpu_roots: Option<PathBuf>,
    /// Where the bundle goes (written whole or not at all); stdout without it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub async fn run(a: GpuCollateralArgs) -> CliResult {
    if a.report.len() != a.chain.len() {
        return Err(Failure::Error(format!(
            "{} --report and {} --chain: give one chain per report, in the same order",
            a.report.len(),
            a.chain.len()
        )));
    }
    let policy = load_policy(a.policy.as_ref()).await?;
    let roots = super::load_gpu_roots(a.insecure_gpu_roots.as_ref()).await?;
    let mut evidence = Vec::new();
    for (report, chain) in a.report.iter().zip(&a.chain) {
        evidence.push((
            decode_report_file(read_file(report, "report").await?),
            read_file(chain, "certificate chain").await?,
        ));
    }
    // No disk cache: the bundle is the copy that is kept.
    let services = NvidiaServices::new(&a.rim_service, &a.ocsp_responder, None, a.rim_dir)
        .map_err(Failure::error)?;
    let collateral = services
        .collateral_for(
            &evidence,
            &roots,
            time::now_unix(),
            policy.gpu.ocsp_max_age_secs,
        )
        .await
        .map_err(Failure::error)?;
    let bundle = collateral.to_bundle_json();
    match &a.out {
        Some(p) => {
            write_file(p, bundle.into_bytes()).await?;
            eprintln!(
                "{}: {} RIMs, {} OCSP answers",
                p.display(),
                collateral.rims.len(),
                collateral.ocsp.len()
            );
        }
        None => println!("{bundle}"),
    }
    Ok(())
}
