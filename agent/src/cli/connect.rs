//! `tdx-agent connect`: its flags, the policy it needs, and the local listener; the proxy
//! itself is `tdx_client::connect`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use tdx_client::Target;
use tdx_client::connect::{
    ConnectOptions, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_RECHALLENGE_SECS, MAX_RECHALLENGE_SECS,
    Pinning,
};
use tdx_core::verify::{Policy, Verifier};
use tokio::net::TcpListener;

use super::{CliResult, Failure, read_file};

pub const NO_POLICY_ERROR: &str = "no --policy given: connect forwards only to a server that \
passes an appraisal policy. Give --policy FILE (see docs/connect.md), or --insecure-no-policy \
to accept any genuine TD whatever image it runs";
pub const NO_POLICY_WARNING: &str = "--insecure-no-policy: the TD image (MRTD, RTMR0-2) is not \
pinned, so requests (prompts, API keys) go to any genuine TD on an accepted platform, whatever \
it runs";
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The agent, e.g. https://10.0.0.5:8443.
    pub url: String,
    /// Appraisal policy (TOML). Required unless --insecure-no-policy is given.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Local address to serve plain HTTP on, e.g. 127.0.0.1:9000 (port 0: any free port).
    /// A loopback address unless --insecure-listen-non-loopback.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Serve the plain-HTTP endpoint on a non-loopback --listen address: prompts, completions
    /// and API keys then cross that network unencrypted and unauthenticated.
    #[arg(long)]
    pub insecure_listen_non_loopback: bool,
    /// Trust this root CA (DER) instead of Intel's production root (simulated TD, test PKIs).
    #[arg(long, value_name = "DER")]
    pub insecure_root: Option<PathBuf>,
    /// Trust these GPU roots instead of NVIDIA's: one PEM file holding the device root, then
    /// the RIM root (simulated GPUs: DIR/gpu-roots.pem). Used when the policy's gpu.count
    /// requires GPUs.
    #[arg(long, value_name = "PEM")]
    pub insecure_gpu_roots: Option<PathBuf>,
    /// Accept a server whose measurements nothing pins: without --policy, or with a policy
    /// that pins none (only [tcb] or [gpu] settings). Any genuine TD passes. Never the default.
    #[arg(long)]
    pub insecure_no_policy: bool,
    /// Challenge the server again before forwarding once the last challenge is this old
    /// (0: before every request; at most 86400).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RECHALLENGE_SECS,
          value_parser = clap::value_parser!(u64).range(..=MAX_RECHALLENGE_SECS))]
    pub rechallenge_secs: u64,
    /// Largest request body forwarded; larger ones get 413.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_request_bytes: u64,
}

pub async fn run(a: ConnectArgs) -> CliResult {
    let policy = match &a.policy {
        Some(p) => super::verify::load_policy(Some(p)).await?,
        None if a.insecure_no_policy => Policy::default(),
        None => return Err(Failure::Error(NO_POLICY_ERROR.into())),
    };
    // Without --policy the policy is the empty default and the flag was given.
    let name = a.policy.as_ref().map_or_else(
        || "the empty default policy".to_owned(),
        |p| p.display().to_string(),
    );
    match Pinning::of(&policy, &name, a.insecure_no_policy, "--insecure-no-policy") {
        Ok(Pinning::Pinned) => {}
        Ok(Pinning::InsecureUnpinned) => eprintln!("tdx-agent: WARNING: {NO_POLICY_WARNING}"),
        Err(e) => return Err(Failure::Error(e.to_string())),
    }
    let target = Target::parse(&a.url).map_err(Failure::error)?;
    if target.path != "/" {
        return Err(Failure::Error(format!(
            "{}: give the server's origin https://HOST:PORT without a path; every local path \
             (e.g. /v1/chat/completions) is forwarded as is",
            a.url
        )));
    }
    let verifier = match &a.insecure_root {
        Some(p) => Verifier::with_insecure_root(read_file(p, "--insecure-root").await?),
        None => Verifier::production(),
    };
    let client = super::client(verifier, policy, a.insecure_gpu_roots.as_ref()).await?;
    let options =
        ConnectOptions::new(a.rechallenge_secs, a.max_request_bytes).map_err(Failure::error)?;
    if !a.listen.ip().is_loopback() {
        if !a.insecure_listen_non_loopback {
            return Err(Failure::Error(format!(
                "--listen {}: not a loopback address. connect serves plain HTTP, without \
                 authentication: prompts, completions and API keys would cross that network \
                 unencrypted, and anyone on it could use the verified session. Bind 127.0.0.1 \
                 (or ::1), or add --insecure-listen-non-loopback if that network is trusted",
                a.listen
            )));
        }
        eprintln!(
            "tdx-agent: WARNING: --listen {} is not a loopback address. connect serves plain \
             HTTP: prompts, completions and API keys cross the network unencrypted between \
             clients and this process. Bind 127.0.0.1 unless that network is trusted.",
            a.listen
        );
    }
    let listener = TcpListener::bind(a.listen)
        .await
        .map_err(|e| Failure::Error(format!("--listen {}: {e}", a.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Error(format!("--listen {}: {e}", a.listen)))?;

    {
        use std::io::Write as _;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "tdx-agent connect listening on {local}");
        let _ = out.flush();
    }
    tdx_client::connect::run(listener, client, target, options, super::shutdown_signal()).await;
    Ok(())
}
