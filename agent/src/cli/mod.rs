//! The `tdx-agent` subcommands, and the exit status every verifying command shares:
//! 0 accepted, 1 rejected (malformed evidence included), 2 usage, I/O or network error.
//! `admin extend` adds 3: the request was sent and no answer came, so whether RTMR3 was
//! extended is unknown (unlike 2, which means it was not, and a retry is safe).

mod admin;
mod attest;
mod audit;
mod connect;
mod eventlog;
mod gpu_collateral;
mod measure;
mod measure_model;
mod serve;
#[cfg(feature = "sim")]
mod sim;
mod tee_args;
mod verify;
mod verify_evidence;
mod verify_gpu;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tdx-agent",
    version,
    about = "Intel TDX attestation for confidential LLM inference",
    long_about = "Produces and verifies Intel TDX quotes. Inside a Trust Domain it reads the \
measurement registers through configfs-tsm and sysfs; anywhere it verifies quotes against \
Intel's collateral and a policy.\n\nExit status of verifying commands: 0 accepted, 1 rejected \
(including malformed evidence), 2 usage, I/O or network error."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the attestation daemon (HTTPS and gRPC with an RA-TLS certificate).
    Serve(serve::ServeArgs),
    /// Verify a running agent over RA-TLS and print the report.
    Attest(attest::AttestArgs),
    /// A local plain-HTTP endpoint for OpenAI SDKs that forwards only to a verified agent.
    Connect(connect::ConnectArgs),
    /// Operate a running agent through its admin socket.
    Admin(admin::AdminArgs),
    /// Validate configuration files.
    #[command(subcommand)]
    Config(serve::ConfigCommand),
    /// Check audit logs offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Verify a quote file offline against collateral and a policy.
    Verify(verify::VerifyArgs),
    /// Verify one NVIDIA GPU's evidence offline against its RIMs, OCSP answers and a policy.
    VerifyGpu(verify_gpu::VerifyGpuArgs),
    /// Gather GPUs' collateral (RIMs, OCSP answers) from NVIDIA's services into one bundle
    /// for `verify-gpu --collateral`.
    GpuCollateral(gpu_collateral::GpuCollateralArgs),
    /// Watch a fleet: appraise every target on its interval, archive the evidence, export
    /// metrics (docs/watch.md).
    Watch(watch::WatchArgs),
    /// The evidence archive, for auditors: check its hash chain, export it.
    #[command(subcommand)]
    Evidence(watch::EvidenceCommand),
    /// Verify an agent's saved evidence document (/.well-known/attestation) offline: the
    /// certificate's quote and key binding, the event log, and the GPUs the policy requires.
    VerifyEvidence(verify_evidence::VerifyEvidenceArgs),
    /// Produce a TD quote over 64 bytes of REPORTDATA.
    Quote(measure::QuoteArgs),
    /// Print the TD's measurement registers (MRTD, RTMR0-3, owner registers).
    Measurements(measure::MeasurementsArgs),
    /// Measure a model directory: the sha256sum manifest of its files and that manifest's digest.
    MeasureModel(measure_model::MeasureModelArgs),
    /// Work with the CCEL boot event log.
    #[command(subcommand)]
    Eventlog(eventlog::EventlogCommand),
    /// The simulated TD and its test PKI (development, CI, demos; never production).
    #[cfg(feature = "sim")]
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// The simulated TD: not in this build (guest images leave it out).
    #[cfg(not(feature = "sim"))]
    Sim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

/// Why a command failed, and so its exit status.
#[derive(Debug)]
pub enum Failure {
    /// The evidence was appraised and refused, or could not be read as evidence (exit 1).
    Rejected(String),
    /// The command could not do its work: bad arguments, files, network (exit 2).
    Error(String),
    /// A request whose effect cannot be undone (an RTMR3 extend) was sent and no answer came,
    /// so whether it took effect is unknown (exit 3): a script must find out before it
    /// retries, as it need not after exit 2.
    Unknown(String),
}

impl Failure {
    pub fn error(e: impl std::fmt::Display) -> Self {
        Failure::Error(e.to_string())
    }

    pub fn rejected(e: impl std::fmt::Display) -> Self {
        Failure::Rejected(e.to_string())
    }
}

pub type CliResult = Result<(), Failure>;

pub const EXIT_REJECTED: u8 = 1;
pub const EXIT_ERROR: u8 = 2;
pub const EXIT_UNKNOWN: u8 = 3;

/// Run the parsed command line to completion.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(a) => serve::serve(a).await,
        Command::Attest(a) => attest::run(a).await,
        Command::Connect(a) => connect::run(a).await,
        Command::Admin(a) => admin::run(a).await,
        Command::Config(c) => serve::config(c).await,
        Command::Audit(c) => audit::run(c).await,
        Command::Verify(a) => verify::run(a).await,
        Command::VerifyGpu(a) => verify_gpu::run(a).await,
        Command::GpuCollateral(a) => gpu_collateral::run(a).await,
        Command::VerifyEvidence(a) => verify_evidence::run(a).await,
        Command::Watch(a) => watch::watch(a).await,
        Command::Evidence(c) => watch::evidence(c).await,
        Command::Eventlog(c) => eventlog::run(c).await,
        Command::Quote(a) => measure::quote(a).await,
        Command::Measurements(a) => measure::measurements(a).await,
        Command::MeasureModel(a) => measure_model::run(a).await,
        #[cfg(feature = "sim")]
        Command::Sim(c) => sim::run(c).await,
        #[cfg(not(feature = "sim"))]
        Command::Sim { .. } => Err(Failure::Error(format!("sim: {}", tdx_tee::SIM_NOT_BUILT))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rejected(msg)) => {
            eprintln!("tdx-agent: {msg}");
            ExitCode::from(EXIT_REJECTED)
        }
        Err(Failure::Error(msg)) => {
            eprintln!("tdx-agent: error: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
        Err(Failure::Unknown(msg)) => {
            eprintln!("tdx-agent: error: {msg}");
            ExitCode::from(EXIT_UNKNOWN)
        }
    }
}

/// Read a file off the runtime, naming it in the error.
pub async fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Failure> {
    let p = path.to_path_buf();
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        std::fs::read(&p).map_err(|e| Failure::Error(format!("{what} {}: {e}", p.display())))
    })
    .await
    .map_err(Failure::error)?
}

/// `--insecure-gpu-roots PEM` (a device root then a RIM root), or NVIDIA's pinned roots.
pub async fn load_gpu_roots(
    path: Option<&std::path::PathBuf>,
) -> Result<tdx_core::gpu::GpuRoots, Failure> {
    match path {
        Some(p) => {
            tdx_core::gpu::GpuRoots::insecure_from_pem(&read_file(p, "--insecure-gpu-roots").await?)
        }
        None => tdx_core::gpu::GpuRoots::nvidia(),
    }
    .map_err(Failure::error)
}

/// A client trusting `verifier` and, for GPUs, `--insecure-gpu-roots` where given.
pub async fn client(
    verifier: tdx_core::verify::Verifier,
    policy: tdx_core::verify::Policy,
    insecure_gpu_roots: Option<&std::path::PathBuf>,
) -> Result<tdx_client::Client, Failure> {
    let client = tdx_client::Client::new(verifier, policy).map_err(Failure::error)?;
    Ok(match insecure_gpu_roots {
        Some(_) => client.with_insecure_gpu_roots(load_gpu_roots(insecure_gpu_roots).await?),
        None => client,
    })
}

/// Write a file atomically off the runtime, naming it in the error.
pub async fn write_file(path: &std::path::Path, data: Vec<u8>) -> CliResult {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        tdx_fsutil::write_atomic(&p, &data)
            .map_err(|e| Failure::Error(format!("writing {}: {e}", p.display())))
    })
    .await
    .map_err(Failure::error)?
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
