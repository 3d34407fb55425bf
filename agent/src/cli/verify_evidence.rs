//! `tdx-agent verify-evidence`: appraise an agent's evidence document offline (what
//! `GET /.well-known/attestation` served, saved to a file), as a client appraises the server
//! in the handshake: the certificate's quote with its stapled collateral and its binding to
//! the certificate's key, the RTMR3 event log, and, when the policy requires GPUs, the GPU
//! evidence the certificate commits to.

use std::path::PathBuf;

use clap::Args;

use super::verify::{load_policy, print_report};
use super::{CliResult, Failure, read_file};
use tdx_core::gpu::{GpuEvidenceSet, GpuVerifier, nonce_for_certificate};
use tdx_core::ratls::{CollateralSource, RaTlsError, RaTlsVerifier};
use tdx_core::verify::{Verifier, time};
use tdx_core::wire::EvidenceJson;

#[derive(Debug, Args)]
pub struct VerifyEvidenceArgs {
    /// The evidence document (JSON) an agent serves at /.well-known/attestation.
    pub evidence: PathBuf,
    /// Appraisal policy (TOML); with `[gpu] count` the GPUs are checked too.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Verify as of this instant: unix seconds or RFC 3339. Default: now.
    #[arg(long)]
    pub at: Option<String>,
    /// Trust this root CA (DER) instead of Intel's production root (simulated TD, test PKIs).
    #[arg(long, value_name = "DER")]
    pub insecure_root: Option<PathBuf>,
    /// Trust these GPU roots instead of NVIDIA's: one PEM file holding the device root, then
    /// the RIM root (simulated GPUs: DIR/gpu-roots.pem).
    #[arg(long, value_name = "PEM")]
    pub insecure_gpu_roots: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: VerifyEvidenceArgs) -> CliResult {
    let at = match &a.at {
        Some(t) => time::parse_instant(t).map_err(|e| Failure::Error(format!("--at: {e}")))?,
        None => time::now_unix(),
    };
    let policy = load_policy(a.policy.as_ref()).await?;
    let verifier = match &a.insecure_root {
        Some(p) => Verifier::with_insecure_root(read_file(p, "--insecure-root").await?),
        None => Verifier::production(),
    };
    let roots = super::load_gpu_roots(a.insecure_gpu_roots.as_ref()).await?;
    let name = a.evidence.display().to_string();
    let evidence: EvidenceJson = serde_json::from_slice(&read_file(&a.evidence, "evidence").await?)
        .map_err(|e| Failure::rejected(format!("evidence {name}: {e}")))?;
    let cert = tdx_core::encoding::from_b64(&evidence.certificate)
        .map_err(|e| Failure::rejected(format!("evidence {name}: certificate: {e}")))?;
    let gpu_policy = policy.gpu.clone();
    let ratls =
        RaTlsVerifier::new(verifier, policy, CollateralSource::Stapled).map_err(Failure::error)?;
    let mut report = match ratls.verify_certificate(&cert, at) {
        Ok(r) => (*r).clone(),
        Err(RaTlsError::QuoteRejected(r)) => *r,
        Err(e) => return Err(Failure::rejected(format!("evidence {name}: {e}"))),
    };
    if gpu_policy.count > 0 {
        let claims = tdx_core::ratls::certificate_claims(&cert).map_err(Failure::rejected)?;
        let spki = tdx_core::ratls::certificate_spki_sha256(&cert).map_err(Failure::rejected)?;
        let set = match &evidence.gpu_evidence {
            None => Err("the document carries no GPU evidence".to_string()),
            Some(v) => GpuEvidenceSet::from_json_value(v.clone()).map_err(|e| e.to_string()),
        };
        tdx_core::verify::gpus::appraise_served_gpus(
            &mut report,
            &GpuVerifier::new(),
            &roots,
            &gpu_policy,
            &cert,
            evidence.gpu_collateral.as_ref(),
            set.as_ref().map_err(Clone::clone),
            claims.gpu_evidence_sha256,
            nonce_for_certificate(&spki),
            at,
        );
    }
    print_report(&report, a.json);
    if report.accepted() {
        Ok(())
    } else {
        Err(Failure::Rejected(report.summary()))
    }
}
