//! The simulated GPUs of a simulation directory as a source, behaving as NVML does in each
//! state: no report with CC off, devtools reported, a call that never returns while `hang`.

use std::path::PathBuf;
use std::time::Duration;

use tdx_core::gpu::CcMode;
use tdx_sim::{SimGpuState, SimGpus};

use super::{CollectedGpu, GpuSource, GpuSourceError, RawEvidence};

pub struct SimSource {
    dir: PathBuf,
    gpus: SimGpus,
}

impl SimSource {
    pub fn open(sim_dir: PathBuf) -> Result<Self, GpuSourceError> {
        let err = |detail: String| GpuSourceError::new(None, "opening the simulated GPUs", detail);
        let gpus = SimGpus::open(&sim_dir)
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| {
                err(format!(
                    "{} has no simulated GPUs; add them with `tdx-agent sim pki --sim-dir {} --gpus N`",
                    sim_dir.display(),
                    sim_dir.display()
                ))
            })?;
        Ok(Self { dir: sim_dir, gpus })
    }
}

/// How often a hanging simulated call looks whether it may return.
const HANG_POLL: Duration = Duration::from_millis(100);

impl GpuSource for SimSource {
    fn describe(&self) -> String {
        format!("simulated GPUs in {}", self.dir.display())
    }

    fn count(&mut self) -> Result<u32, GpuSourceError> {
        let n = self
            .gpus
            .entries()
            .map_err(|e| GpuSourceError::new(None, "listing the simulated GPUs", e))?
            .len();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn collect(&mut self, index: u32, nonce: &[u8; 32]) -> Result<CollectedGpu, GpuSourceError> {
        let err = |e: tdx_sim::SimError| GpuSourceError::new(Some(index), "simulated GPU", e);
        let mut entry = self.gpus.entry(index).map_err(err)?;
        // A hung NVML call: it returns once the test switches the GPU back.
        while entry.state == SimGpuState::Hang {
            std::thread::sleep(HANG_POLL);
            entry = self.gpus.entry(index).map_err(err)?;
        }
        let cc_mode = match entry.state {
            SimGpuState::CcOff => CcMode::Off,
            SimGpuState::Devtools => CcMode::Devtools,
            _ => CcMode::On,
        };
        let evidence = if cc_mode == CcMode::Off {
            None
        } else {
            Some(RawEvidence {
                report: self.gpus.report(&entry, nonce).map_err(err)?,
                chain_pem: self.gpus.chain_pem().into_bytes(),
            })
        };
        Ok(CollectedGpu {
            index,
            uuid: entry.uuid,
            driver_version: self.gpus.driver_version().to_string(),
            vbios_version: self.gpus.vbios_version().to_string(),
            cc_mode,
            ready: cc_mode == CcMode::On,
            protected_pcie: false,
            evidence,
        })
    }
}
