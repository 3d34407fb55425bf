//! `tdx-agent verify-gpu`: appraise one NVIDIA GPU's evidence offline against its RIMs,
//! stapled OCSP answers and the policy's `[gpu]` table.

use std::path::PathBuf;

use clap::Args;

use super::verify::load_policy;
use super::{CliResult, Failure, read_file};
use tdx_core::gpu::{
    GpuCollateral, GpuEvidenceRef, NONCE_LEN, RimFile, decode_ocsp_file, decode_report_file,
    verify_gpu,
};
use tdx_core::verify::time;

#[derive(Debug, Args)]
pub struct VerifyGpuArgs {
    /// The attestation report as NVML returns it: binary, or hex text.
    #[arg(long, value_name = "FILE")]
    pub report: PathBuf,
    /// The GPU's certificate chain, PEM, leaf first (as NVML returns it).
    #[arg(long, value_name = "FILE")]
    pub chain: PathBuf,
    /// The 32-byte nonce the report must answer (64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub expect_nonce: String,
    /// A RIM (driver or VBIOS; told apart by its version). May be given more than once.
    #[arg(long, value_name = "FILE")]
    pub rim: Vec<PathBuf>,
    /// A stapled OCSP answer: DER, or base64 text. May be given more than once.
    #[arg(long, value_name = "FILE")]
    pub ocsp: Vec<PathBuf>,
    /// A GPU collateral bundle (docs/formats.md): RIMs by id and OCSP answers.
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,
    /// Verify as of this instant: unix seconds or RFC 3339. Default: now.
    #[arg(long)]
    pub at: Option<String>,
    /// Appraisal policy (TOML); its `[gpu]` table applies. Default: the built-in strict one.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Trust these roots instead of NVIDIA's: one PEM file holding the device root, then the
    /// RIM root. Only for simulated GPUs: evidence that verifies this way proves nothing.
    #[arg(long, value_name = "PEM")]
    pub insecure_gpu_roots: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: VerifyGpuArgs) -> CliResult {
    let at = match &a.at {
        Some(t) => time::parse_instant(t).map_err(|e| Failure::Error(format!("--at: {e}")))?,
        None => time::now_unix(),
    };
    let nonce = tdx_core::encoding::hex_array::<NONCE_LEN>(&a.expect_nonce)
        .map_err(|e| Failure::Error(format!("--expect-nonce: {e}")))?;
    let policy = load_policy(a.policy.as_ref()).await?;
    let roots = super::load_gpu_roots(a.insecure_gpu_roots.as_ref()).await?;
    let report = decode_report_file(read_file(&a.report, "report").await?);
    let chain = read_file(&a.chain, "certificate chain").await?;
    let mut collateral = GpuCollateral::default();
    if let Some(p) = &a.collateral {
        let text = read_file(p, "GPU collateral").await?;
        // A bundle that is not one is unusable collateral: the evidence cannot be appraised.
        collateral = GpuCollateral::from_bundle_json(&text, &p.display().to_string())
            .map_err(Failure::rejected)?;
    }
    for p in &a.rim {
        collateral.rims.push(RimFile {
            id: None,
            xml: read_file(p, "RIM").await?,
        });
    }
    for p in &a.ocsp {
        collateral
            .ocsp
            .push(decode_ocsp_file(read_file(p, "OCSP answer").await?));
    }
    // Parsing, hashing and signature checks are CPU work; keep them off the runtime threads.
    let gpu_policy = policy.gpu.clone();
    let report = tokio::task::spawn_blocking(move || {
        verify_gpu(
            GpuEvidenceRef {
                report: &report,
                chain_pem: &chain,
            },
            &nonce,
            &collateral,
            &gpu_policy,
            &roots,
            at,
        )
    })
    .await
    .map_err(|e| Failure::Error(format!("verify-gpu: {e}")))?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_text());
    }
    if report.accepted() {
        Ok(())
    } else {
        Err(Failure::Rejected(report.summary()))
    }
}
