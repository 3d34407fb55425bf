//! `tdx-agent attest`: connect to an agent over RA-TLS, verify its evidence against a policy,
//! optionally prove it is live with a fresh challenge, and print the report.

use std::path::PathBuf;

use clap::Args;

use super::{CliResult, Failure, read_file};
use tdx_client::{ClientError, Target};
use tdx_core::verify::{Report, Verifier};

#[derive(Debug, Args)]
pub struct AttestArgs {
    /// The agent, e.g. https://10.0.0.5:8443.
    pub url: String,
    /// Appraisal policy (TOML). Without one, no measurement is pinned: any genuine TD passes.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Trust this root CA (DER) instead of Intel's production root (simulated TD, test PKIs).
    #[arg(long, value_name = "DER")]
    pub insecure_root: Option<PathBuf>,
    /// Trust these GPU roots instead of NVIDIA's: one PEM file holding the device root, then
    /// the RIM root (simulated GPUs: DIR/gpu-roots.pem). Used when the policy's gpu.count
    /// requires GPUs.
    #[arg(long, value_name = "PEM")]
    pub insecure_gpu_roots: Option<PathBuf>,
    /// Also run a fresh challenge: a new quote over a random nonce proves the TD is live now.
    #[arg(long)]
    pub nonce: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub const NO_POLICY_WARNING: &str = "no --policy given: no measurement was pinned, so any genuine TD on an accepted platform passes";

pub async fn run(a: AttestArgs) -> CliResult {
    let target = Target::parse(&a.url).map_err(Failure::error)?;
    let policy = super::verify::load_policy(a.policy.as_ref()).await?;
    let verifier = match &a.insecure_root {
        Some(p) => Verifier::with_insecure_root(read_file(p, "--insecure-root").await?),
        None => Verifier::production(),
    };
    let client = super::client(verifier, policy, a.insecure_gpu_roots.as_ref()).await?;
    let report = tdx_client::attest::attest(&client, &target, a.nonce)
        .await
        .map_err(|e| failure(e, &a))?;
    finish(&report, &a);
    if report.accepted() {
        Ok(())
    } else {
        Err(Failure::Rejected(report.summary()))
    }
}

/// Exit statuses: an appraised and refused server, or evidence that cannot be read as
/// evidence, is a rejection (1); everything else is an error (2).
fn failure(e: ClientError, a: &AttestArgs) -> Failure {
    match e {
        ClientError::Rejected(report) => {
            finish(&report, a);
            Failure::Rejected(report.summary())
        }
        e @ ClientError::Malformed { .. } => Failure::Rejected(e.to_string()),
        // A certificate without readable RA-TLS evidence, or whose claims do not bind its
        // key, is evidence that fails, not a network error: name the check.
        e @ ClientError::Refused { .. } => match e.failed_check() {
            Some(c) => Failure::Rejected(format!(
                "{}: {} check failed: expected {}, found {}",
                e, c.name, c.expected, c.found
            )),
            None => Failure::Rejected(e.to_string()),
        },
        e => Failure::Error(e.to_string()),
    }
}

fn finish(report: &Report, a: &AttestArgs) {
    if a.policy.is_none() {
        // The report already carries the appraisal's own "pins no measurement" warning.
        eprintln!("tdx-agent: warning: {NO_POLICY_WARNING}");
    }
    super::verify::print_report(report, a.json);
}
