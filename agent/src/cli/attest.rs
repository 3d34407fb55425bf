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

/// Exit statuses: a verdict about the server is a rejection (1): an appraised and refused
/// server, a certificate without verifiable evidence, a challenge refused with a 4xx (not
/// 408 or 429) or
/// answered outside the protocol. Not reaching it (network, 5xx, 429, 408: it said nothing
/// about what it is) is an error (2). `ClientError::failed_check` draws that line, for `connect`
/// and the Python package alike.
fn failure(e: ClientError, a: &AttestArgs) -> Failure {
    if let ClientError::Rejected(report) = &e {
        finish(report, a);
        return Failure::Rejected(report.summary());
    }
    match e.failed_check() {
        Some(_) if matches!(e, ClientError::Malformed { .. }) => Failure::Rejected(e.to_string()),
        Some(c) => Failure::Rejected(format!(
            "{}: {} check failed: expected {}, found {}",
            e, c.name, c.expected, c.found
        )),
        None => Failure::Error(e.to_string()),
    }
}

fn finish(report: &Report, a: &AttestArgs) {
    if a.policy.is_none() {
        // The report already carries the appraisal's own "pins no measurement" warning.
        eprintln!("tdx-agent: warning: {NO_POLICY_WARNING}");
    }
    super::verify::print_report(report, a.json);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_challenge_is_a_rejection_and_an_unavailable_server_an_error() {
        let a = AttestArgs {
            url: "https://127.0.0.1:1".into(),
            policy: None,
            insecure_root: None,
            insecure_gpu_roots: None,
            nonce: true,
            json: false,
        };
        let status = |status| ClientError::Status {
            what: "challenge".into(),
            status,
            body: "no".into(),
        };
        for code in [400, 404, 413] {
            let f = failure(status(code), &a);
            assert!(
                matches!(&f, Failure::Rejected(m) if m.contains("challenge check failed")),
                "{code}: {f:?}"
            );
        }
        for code in [408, 429, 500, 503] {
            assert!(
                matches!(failure(status(code), &a), Failure::Error(_)),
                "{code}"
            );
        }
        let network = ClientError::Connect {
            addr: "127.0.0.1:1".into(),
            detail: "refused".into(),
        };
        assert!(matches!(failure(network, &a), Failure::Error(_)));
    }
}
