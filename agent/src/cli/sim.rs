//! `tdx-agent sim ...`: create and serve the simulated TD's PKI, reset its registers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use sha2::{Digest as _, Sha256};

use super::{CliResult, Failure, write_file};
use tdx_core::encoding::hex;
use tdx_sim::{SimDir, SimGpuState, SimGpus, SimPki, SimSettings, SimTd, pccs};
use tdx_tee::{Tee as _, TeeKind};

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Create (or show) the simulated PKI and TD in DIR; write root.der, a sample quote and
    /// its collateral bundle.
    Pki(PkiArgs),
    /// Serve the PCCS v4 API from the simulated PKI (fresh collateral on every request).
    Pccs(PccsArgs),
    /// Reboot the simulated TD: registers back to their boot values, RTMR3 zero.
    Reset(DirArg),
    /// Switch a simulated GPU's state (the agent sees it at its next GPU check).
    Gpu(GpuArgs),
}

#[derive(Debug, Args)]
pub struct GpuArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// The GPU (0-based, as NVML numbers them).
    #[arg(long)]
    pub index: u32,
    /// ok, cc-off, devtools, bad-measurement (one measurement NVIDIA did not sign) or hang
    /// (the NVML call does not return until the state changes).
    #[arg(long, value_parser = parse_gpu_state)]
    pub state: SimGpuState,
}

fn parse_gpu_state(s: &str) -> Result<SimGpuState, String> {
    SimGpuState::parse(s)
}

#[derive(Debug, Args)]
pub struct DirArg {
    /// The simulation directory, shared by every command that simulates.
    #[arg(long, value_name = "DIR")]
    pub sim_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct PkiArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Lifetime of generated collateral (CRLs, TCB info, QE identity), in seconds.
    #[arg(long, value_name = "SECS")]
    pub collateral_lifetime: Option<u64>,
    /// Delay per quote in milliseconds (1000 mimics today's kernels).
    #[arg(long, value_name = "MS")]
    pub quote_delay_ms: Option<u64>,
    /// Quote version the simulated TD produces (4, or 5 for a TD 1.5 body).
    #[arg(long)]
    pub quote_version: Option<u16>,
    /// MRTD of the simulated TD (96 hex digits).
    #[arg(long, value_name = "HEX")]
    pub mrtd: Option<String>,
    /// TCB status the simulated collateral gives the platform (e.g. OutOfDate).
    #[arg(long)]
    pub tcb_status: Option<String>,
    /// Give the TD this many simulated NVIDIA GPUs (H100, CC on); writes their roots to
    /// DIR/gpu-roots.pem for clients' --insecure-gpu-roots.
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
}

#[derive(Debug, Args)]
pub struct PccsArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
}

pub async fn run(c: SimCommand) -> CliResult {
    match c {
        SimCommand::Pki(a) => pki(a).await,
        SimCommand::Pccs(a) => serve_pccs(a).await,
        SimCommand::Gpu(a) => {
            let (path, index, state) = (a.dir.sim_dir.clone(), a.index, a.state);
            blocking(move || {
                SimGpus::open(&path)?
                    .ok_or_else(|| {
                        tdx_sim::SimError::Other(format!(
                            "{} has no simulated GPUs; add them with `tdx-agent sim pki --sim-dir {} --gpus N`",
                            path.display(),
                            path.display()
                        ))
                    })?
                    .set_state(index, state)
            })
            .await?;
            println!("simulated GPU {} is now {}", a.index, a.state.as_str());
            Ok(())
        }
        SimCommand::Reset(a) => {
            let path = a.sim_dir.clone();
            blocking(move || {
                let dir = SimDir::open(&path)?;
                tdx_sim::reset(&dir)?;
                // A reboot also empties /run: the demo agent's RTMR3 log lives in DIR/run.
                match std::fs::remove_file(path.join("run").join("rtmr3-events.jsonl")) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(tdx_sim::SimError::Other(format!(
                        "removing the RTMR3 event log: {e}"
                    ))),
                }
            })
            .await?;
            println!("simulated TD in {} reset (rebooted)", a.sim_dir.display());
            Ok(())
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, tdx_sim::SimError> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Failure::error)?
        .map_err(Failure::error)
}

async fn pki(a: PkiArgs) -> CliResult {
    let path = a.dir.sim_dir.clone();
    let mrtd = a
        .mrtd
        .as_deref()
        .map(tdx_core::encoding::hex_array::<48>)
        .transpose()
        .map_err(|e| Failure::Error(format!("--mrtd: {e}")))?;
    let changes = (
        a.collateral_lifetime,
        a.quote_delay_ms,
        a.quote_version,
        mrtd,
        a.tcb_status.clone(),
    );
    let td = blocking(move || {
        let (lifetime, delay, version, mrtd, status) = changes;
        let existing = SimDir::open(&path).ok().and_then(|d| d.settings().ok());
        let mut settings = existing.clone().unwrap_or_default();
        if let Some(v) = lifetime {
            settings.collateral_lifetime_secs = v;
        }
        if let Some(v) = delay {
            settings.quote_delay_ms = v;
        }
        if let Some(v) = version {
            settings.quote_version = v;
        }
        if let Some(v) = mrtd {
            settings.mrtd = v;
        }
        if let Some(v) = status {
            settings.tcb_status = v;
        }
        let dir = if existing.as_ref() == Some(&settings) {
            SimDir::open_or_create(&path)?
        } else {
            SimDir::open_or_create_with(&path, &settings)?
        };
        SimPki::load_or_create(&dir)?;
        SimTd::open(&dir)
    })
    .await?;
    debug_assert_eq!(td.kind(), TeeKind::Simulated);

    let dir = a.dir.sim_dir.clone();
    let report_data = sample_report_data();
    let now = tdx_core::verify::time::now_unix();
    let td = Arc::new(td);
    let td2 = Arc::clone(&td);
    let (quote, collateral) = tokio::task::spawn_blocking(move || {
        let q = td2.quote(&report_data).map_err(Failure::error)?;
        let c = td2
            .pki()
            .collateral(u64::try_from(now).unwrap_or(0))
            .map_err(Failure::error)?;
        Ok::<_, Failure>((q, c))
    })
    .await
    .map_err(Failure::error)??;
    let quote_path = dir.join("sample-quote.dat");
    let coll_path = dir.join("sample-collateral.json");
    write_file(&quote_path, quote).await?;
    write_file(&coll_path, collateral.to_bundle_json().into_bytes()).await?;

    let settings: &SimSettings = td.settings();
    let root = td.pki().root_der();
    println!("simulated TD and PKI in {}", dir.display());
    println!(
        "  root CA          {} (sha256 {})",
        rel(&dir, "root.der"),
        hex(&Sha256::digest(root))
    );
    println!("  FMSPC            {}", hex::encode_upper(td.pki().fmspc()));
    println!("  quote version    {}", settings.quote_version);
    println!("  quote delay      {} ms", settings.quote_delay_ms);
    println!("  collateral life  {} s", settings.collateral_lifetime_secs);
    println!("  TCB status       {}", settings.tcb_status);
    if let Some(n) = a.gpus {
        let path = dir.clone();
        let gpus = blocking(move || SimGpus::create(&path, n)?.entries()).await?;
        println!(
            "  GPUs             {} simulated H100 (roots in {})",
            gpus.len(),
            rel(&dir, tdx_sim::GPU_ROOTS_PEM)
        );
        for g in gpus {
            println!("    gpu[{}] {} {}", g.index, g.uuid, g.state.as_str());
        }
    }
    println!("  sample quote     {}", quote_path.display());
    println!("  its collateral   {}", coll_path.display());
    println!("verify it with:");
    println!(
        "  tdx-agent verify {} --collateral {} --insecure-root {}",
        quote_path.display(),
        coll_path.display(),
        rel(&dir, "root.der")
    );
    Ok(())
}

fn rel(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// A recognisable REPORTDATA for the sample quote.
fn sample_report_data() -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(&Sha256::digest(b"tdx-agent simulated sample quote"));
    rd
}

async fn serve_pccs(a: PccsArgs) -> CliResult {
    let path = a.dir.sim_dir.clone();
    let (pki, gpus) = blocking(move || {
        let dir = SimDir::open(&path)?;
        let gpus = SimGpus::open(&path)?.map(|g| g.services()).transpose()?;
        Ok::<_, tdx_sim::SimError>((SimPki::load(&dir)?, gpus))
    })
    .await?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|e| Failure::Error(format!("--listen {}: {e}", a.listen)))?;
    let addr = listener.local_addr().map_err(Failure::error)?;
    println!("simulated PCCS listening on http://{addr}");
    if gpus.is_some() {
        // The simulated GPUs' NVIDIA services, on the same port in NVIDIA's URL shapes (on
        // stderr: scripts read the first line of stdout for the address and may stop there).
        eprintln!(
            "simulated NVIDIA RIM service at http://{addr} and OCSP responder at http://{addr}{}",
            tdx_sim::gpu_services::OCSP_PATH
        );
    }
    pccs::serve(
        listener,
        Arc::new(pki),
        gpus.map(Arc::new),
        super::shutdown_signal(),
    )
    .await
    .map_err(Failure::error)
}
