//! Choosing a TEE provider on the command line: the kernel's interfaces, or (only when asked
//! for by name) the simulated TD.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::Failure;
#[cfg(feature = "sim")]
use tdx_sim::{SimDir, SimTd};
use tdx_tee::configfs::{ConfigfsPaths, ConfigfsTee};
use tdx_tee::{Tee, TeeHandle};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TeeChoice {
    /// The kernel's configfs-tsm reports and sysfs measurement registers (a real TD).
    Configfs,
    /// The simulated TD in --sim-dir (software registers, test PKI; not a TEE).
    Sim,
}

#[derive(Debug, Args)]
pub struct TeeArgs {
    /// Which TEE to use. There is no automatic fallback to the simulation.
    #[arg(long, value_enum, default_value = "configfs")]
    pub tee: TeeChoice,
    /// The simulated TD's directory (with --tee sim); create it with `tdx-agent sim pki`.
    #[arg(long, value_name = "DIR")]
    pub sim_dir: Option<PathBuf>,
    /// configfs-tsm report directory.
    #[arg(long, value_name = "PATH", default_value = tdx_tee::configfs::DEFAULT_REPORT_DIR)]
    pub tsm_report_dir: PathBuf,
    /// TDX measurement-register sysfs directory (Linux 6.16+).
    #[arg(long, value_name = "PATH", default_value = tdx_tee::sysfs::DEFAULT_MEASUREMENTS_DIR)]
    pub measurements_dir: PathBuf,
    /// CCEL boot event log.
    #[arg(long, value_name = "PATH", default_value = tdx_tee::configfs::DEFAULT_CCEL_DATA)]
    pub ccel_data: PathBuf,
}

impl TeeArgs {
    pub async fn open(&self) -> Result<TeeHandle, Failure> {
        let tee: Arc<dyn Tee> = match self.tee {
            TeeChoice::Configfs => {
                if self.sim_dir.is_some() {
                    return Err(Failure::Error(
                        "--sim-dir is only meaningful with --tee sim".into(),
                    ));
                }
                Arc::new(ConfigfsTee::new(ConfigfsPaths {
                    report_dir: self.tsm_report_dir.clone(),
                    measurements_dir: self.measurements_dir.clone(),
                    ccel_data: self.ccel_data.clone(),
                }))
            }
            #[cfg(not(feature = "sim"))]
            TeeChoice::Sim => {
                return Err(Failure::Error(format!(
                    "--tee sim: {}",
                    tdx_tee::SIM_NOT_BUILT
                )));
            }
            #[cfg(feature = "sim")]
            TeeChoice::Sim => {
                let dir = self.sim_dir.clone().ok_or_else(|| {
                    Failure::Error("--tee sim needs --sim-dir DIR (create it with `tdx-agent sim pki --sim-dir DIR`)".into())
                })?;
                let td = tokio::task::spawn_blocking(move || {
                    SimDir::open(&dir).and_then(|d| SimTd::open(&d))
                })
                .await
                .map_err(Failure::error)?
                .map_err(Failure::error)?;
                Arc::new(td)
            }
        };
        Ok(TeeHandle::new(tee))
    }
}
