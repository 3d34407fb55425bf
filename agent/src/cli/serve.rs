//! `tdx-agent serve` and `tdx-agent config check`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::tee_args::TeeChoice;
use super::{CliResult, Failure, read_file};
use tdx_daemon::config::{Config, GpuConfig, GpuRequired, GpuSourceKind, TeeKindConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; docs/configuration.md). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TEE: the kernel's configfs-tsm, or the simulated TD (never chosen automatically).
    #[arg(long, value_enum)]
    pub tee: Option<TeeChoice>,
    /// The simulated TD's directory (with --tee sim).
    #[arg(long, value_name = "DIR")]
    pub sim_dir: Option<PathBuf>,
    /// Overrides the simulated TD's quote delay (1000 mimics today's kernels).
    #[arg(long, value_name = "MS")]
    pub sim_quote_delay_ms: Option<u64>,
    /// Address of the TLS listener (HTTPS and gRPC). Default 0.0.0.0:8443.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// PCCS (v4 API) for collateral. With --tee sim and no --pccs, the simulated PKI's.
    #[arg(long, value_name = "URL")]
    pub pccs: Option<String>,
    /// Appraisal policy for the agent's self-check (TOML).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Verify our own evidence against this root instead of Intel's (test PKIs only).
    #[arg(long, value_name = "DER")]
    pub insecure_root: Option<PathBuf>,
    /// Audit log directory.
    #[arg(long, value_name = "DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Runtime state directory (tmpfs).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Collateral cache directory.
    #[arg(long, value_name = "DIR")]
    pub collateral_cache: Option<PathBuf>,
    /// The model server to front, e.g. http://127.0.0.1:8000: `/v1/` is forwarded to it.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// The model directory to measure into RTMR3 before reporting ready (required with
    /// --upstream unless --insecure-unmeasured-model).
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Front the model server without measuring the model (sets model.insecure_unmeasured):
    /// clients cannot tell which model answers unless something else pins it.
    #[arg(long, conflicts_with = "model_dir")]
    pub insecure_unmeasured_model: bool,
    /// GPUs that must be attested with the TD: a number or `all` (sets [gpu] required;
    /// with --tee sim and no config file the simulated GPUs are the source).
    #[arg(long, value_name = "N|all", value_parser = parse_gpus)]
    pub gpus: Option<GpuRequired>,
}

fn parse_gpus(s: &str) -> Result<GpuRequired, String> {
    GpuRequired::parse(s)
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file (and the policy it names) without starting anything.
    Check { file: PathBuf },
    /// Read an API key from stdin and print the SHA-256 to list in upstream.api_key_sha256.
    HashApiKey,
}

pub async fn load(path: &std::path::Path) -> Result<Config, Failure> {
    let bytes = read_file(path, "config").await?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::Error(format!("config {}: not UTF-8", path.display())))?;
    // Validated after the flags are applied.
    toml::from_str(&text).map_err(|e| Failure::Error(format!("config {}: {e}", path.display())))
}

/// The configuration `serve` would run with.
pub async fn effective_config(a: &ServeArgs) -> Result<Config, Failure> {
    let mut c = match &a.config {
        Some(p) => load(p).await?,
        None => Config::default(),
    };
    if let Some(t) = a.tee {
        c.tee.kind = match t {
            TeeChoice::Configfs => TeeKindConfig::Configfs,
            TeeChoice::Sim => TeeKindConfig::Sim,
        };
    }
    if let Some(d) = &a.sim_dir {
        c.tee.sim_dir = Some(d.clone());
    }
    if let Some(ms) = a.sim_quote_delay_ms {
        c.tee.sim_quote_delay_ms = Some(ms);
    }
    if let Some(l) = a.listen {
        c.listen = l;
    }
    if let Some(u) = &a.pccs {
        c.collateral.pccs_url = Some(u.clone());
    }
    if let Some(p) = &a.policy {
        c.policy = Some(p.clone());
    }
    if let Some(r) = &a.insecure_root {
        c.collateral.insecure_root = Some(r.clone());
    }
    // The demo needs no file and no root: keep the simulation's state inside its directory
    // unless told otherwise.
    if let (TeeKindConfig::Sim, Some(dir), None) = (c.tee.kind, &c.tee.sim_dir, &a.config) {
        c.audit.dir = dir.join("audit");
        c.state_dir = dir.join("run");
        c.collateral.cache_dir = dir.join("collateral-cache");
    }
    if let Some(d) = &a.audit_dir {
        c.audit.dir = d.clone();
    }
    if let Some(d) = &a.state_dir {
        c.state_dir = d.clone();
    }
    if let Some(d) = &a.collateral_cache {
        c.collateral.cache_dir = d.clone();
    }
    if let Some(u) = &a.upstream {
        c.upstream.url = Some(
            tdx_daemon::config::UpstreamUrl::parse(u)
                .map_err(|e| Failure::Error(format!("--upstream: {e}")))?,
        );
    }
    if let Some(d) = &a.model_dir {
        c.model.dir = Some(d.clone());
    }
    if a.insecure_unmeasured_model {
        c.model.insecure_unmeasured = true;
    }
    if let Some(n) = a.gpus {
        let gpu = c.gpu.get_or_insert_with(|| GpuConfig {
            // The demo: the simulated TD's own simulated GPUs.
            source: match (c.tee.kind, &a.config) {
                (TeeKindConfig::Sim, None) => GpuSourceKind::Sim,
                _ => GpuSourceKind::Nvml,
            },
            ..GpuConfig::default()
        });
        gpu.required = Some(n);
        gpu.insecure_serve_unattested = false;
        if let (TeeKindConfig::Sim, Some(dir), None) = (c.tee.kind, &c.tee.sim_dir, &a.config) {
            gpu.cache_dir = dir.join("gpu-cache");
        }
    }
    let source = a
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "command line".into());
    c.validate(&source).map_err(Failure::error)?;
    Ok(c)
}

pub async fn serve(a: ServeArgs) -> CliResult {
    let config = effective_config(&a).await?;
    tdx_daemon::server::run(config, super::shutdown_signal())
        .await
        .map_err(Failure::error)
}

pub async fn config(c: ConfigCommand) -> CliResult {
    match c {
        ConfigCommand::Check { file } => {
            let config = load(&file).await?;
            config
                .validate(&file.display().to_string())
                .map_err(Failure::error)?;
            let policy = super::verify::load_policy(config.policy.as_ref()).await?;
            tdx_daemon::server::settings_the_policy_refuses(&config, &policy)
                .map_err(Failure::Error)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        ConfigCommand::HashApiKey => {
            use sha2::Digest as _;
            let key = tokio::task::spawn_blocking(|| {
                use std::io::Read as _;
                let mut key = String::new();
                std::io::stdin()
                    .take(4096)
                    .read_to_string(&mut key)
                    .map(|_| key)
            })
            .await
            .map_err(Failure::error)?
            .map_err(|e| Failure::Error(format!("stdin: {e}")))?;
            // A key typed or echoed in ends with a newline that is not part of it.
            let key = key.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                return Err(Failure::Error("stdin: no API key given".into()));
            }
            println!("{}", hex::encode(sha2::Sha256::digest(key.as_bytes())));
            Ok(())
        }
    }
}
