//! Simulated GPUs in a simulation directory (`sim pki --gpus N`, `sim gpu --index I --state
//! S`): one simulated NVIDIA PKI, the GPUs with their states, and the roots clients trust.
//!
//! ```text
//! DIR/gpu/pki/          the simulated NVIDIA device and RIM PKI (SimGpuPki::save)
//! DIR/gpu/gpus.json     {"gpus": [{"index", "uuid", "state"}]}
//! DIR/gpu-roots.pem     the simulated device root then RIM root (--insecure-gpu-roots)
//! ```
//!
//! Every simulated GPU is the same board with the same firmware (as in an 8-GPU server), so
//! one pair of RIMs covers them all; they differ by UUID and state. The state is read at
//! every collection, so a test can switch a GPU while the agent runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tdx_core::gpu::{Architecture, GpuCollateral, RimFile, rim_ids};

use super::SimError;
use super::fsio;
use super::gpu::{SIM_RIM_NOT_AFTER, SimGpu, SimGpuPki, SimRimKind};

pub const GPU_DIR: &str = "gpu";
pub const GPUS_JSON: &str = "gpus.json";
pub const GPU_ROOTS_PEM: &str = "gpu-roots.pem";
/// At most this many simulated GPUs (the evidence format's own bound).
pub const MAX_SIM_GPUS: u32 = tdx_core::gpu::MAX_GPUS as u32;

/// What a simulated GPU does when the agent asks it for evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimGpuState {
    /// CC on, devtools off, ready, firmware matching the RIMs.
    Ok,
    /// CC mode off: like NVML on such a GPU, no attestation report.
    CcOff,
    /// CC in devtools mode: evidence is produced but must never be accepted.
    Devtools,
    /// One measurement differs from the RIMs (firmware NVIDIA did not sign).
    BadMeasurement,
    /// The NVML call never returns while this state holds.
    Hang,
}

impl SimGpuState {
    pub const ALL: [SimGpuState; 5] = [
        SimGpuState::Ok,
        SimGpuState::CcOff,
        SimGpuState::Devtools,
        SimGpuState::BadMeasurement,
        SimGpuState::Hang,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SimGpuState::Ok => "ok",
            SimGpuState::CcOff => "cc-off",
            SimGpuState::Devtools => "devtools",
            SimGpuState::BadMeasurement => "bad-measurement",
            SimGpuState::Hang => "hang",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                format!("{s:?} is not one of {}", all.join(", "))
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimGpuEntry {
    pub index: u32,
    pub uuid: String,
    pub state: SimGpuState,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpusFile {
    gpus: Vec<SimGpuEntry>,
}

/// The simulated GPUs of one simulation directory.
pub struct SimGpus {
    dir: PathBuf,
    pki: SimGpuPki,
    device: SimGpu,
}

impl SimGpus {
    /// Give the simulation `count` GPUs: the PKI is made once and kept (clients may already
    /// trust its roots), GPUs already there keep their UUID and state.
    pub fn create(sim_dir: &Path, count: u32) -> Result<SimGpus, SimError> {
        if count == 0 || count > MAX_SIM_GPUS {
            return Err(SimError::InvalidSetting {
                field: "gpus",
                detail: format!("{count} simulated GPUs; 1 to {MAX_SIM_GPUS} are possible"),
            });
        }
        let dir = sim_dir.join(GPU_DIR);
        let pki_dir = dir.join("pki");
        let pki = if fsio::exists(&pki_dir)? {
            SimGpuPki::load(&pki_dir)?
        } else {
            let pki = SimGpuPki::generate(Architecture::Hopper, SIM_RIM_NOT_AFTER)?;
            pki.save(&pki_dir)?;
            pki
        };
        fsio::write_atomic(&sim_dir.join(GPU_ROOTS_PEM), pki.roots_pem().as_bytes())?;
        let gpus = SimGpus {
            dir,
            device: model_gpu(),
            pki,
        };
        let mut entries = if fsio::exists(&gpus.gpus_json())? {
            gpus.entries()?
        } else {
            Vec::new()
        };
        entries.retain(|e| e.index < count);
        for index in u32::try_from(entries.len()).unwrap_or(count)..count {
            entries.push(SimGpuEntry {
                index,
                uuid: sim_uuid(&gpus.pki.fwid, index),
                state: SimGpuState::Ok,
            });
        }
        gpus.write_entries(&entries)?;
        Ok(gpus)
    }

    /// The simulated GPUs of `sim_dir`, or `None` when it has none.
    pub fn open(sim_dir: &Path) -> Result<Option<SimGpus>, SimError> {
        let dir = sim_dir.join(GPU_DIR);
        if !fsio::exists(&dir.join(GPUS_JSON))? {
            return Ok(None);
        }
        Ok(Some(SimGpus {
            pki: SimGpuPki::load(&dir.join("pki"))?,
            device: model_gpu(),
            dir,
        }))
    }

    fn gpus_json(&self) -> PathBuf {
        self.dir.join(GPUS_JSON)
    }

    /// The GPUs as they are now (read afresh: tests switch states while the agent runs).
    pub fn entries(&self) -> Result<Vec<SimGpuEntry>, SimError> {
        let path = self.gpus_json();
        let file: GpusFile = serde_json::from_str(&fsio::read_string(&path)?)
            .map_err(|e| SimError::malformed(&path, e))?;
        for (i, e) in file.gpus.iter().enumerate() {
            if usize::try_from(e.index).ok() != Some(i) {
                return Err(SimError::malformed(
                    &path,
                    format!("entry {i} has index {}; indices run 0, 1, ...", e.index),
                ));
            }
        }
        Ok(file.gpus)
    }

    /// The GPU at `index` now.
    pub fn entry(&self, index: u32) -> Result<SimGpuEntry, SimError> {
        self.entries()?
            .into_iter()
            .find(|e| e.index == index)
            .ok_or_else(|| SimError::Other(format!("no simulated GPU with index {index}")))
    }

    fn write_entries(&self, gpus: &[SimGpuEntry]) -> Result<(), SimError> {
        let text = serde_json::to_string_pretty(&GpusFile {
            gpus: gpus.to_vec(),
        })
        .map_err(|e| SimError::Other(e.to_string()))?;
        fsio::write_atomic(&self.gpus_json(), text.as_bytes())
    }

    /// Switch GPU `index` to `state`.
    pub fn set_state(&self, index: u32, state: SimGpuState) -> Result<(), SimError> {
        let mut entries = self.entries()?;
        let count = entries.len();
        let entry = entries
            .iter_mut()
            .find(|e| e.index == index)
            .ok_or_else(|| SimError::InvalidSetting {
                field: "index",
                detail: format!("no simulated GPU {index}; this simulation has {count}"),
            })?;
        entry.state = state;
        self.write_entries(&entries)
    }

    pub fn architecture(&self) -> Architecture {
        self.pki.arch
    }

    pub fn driver_version(&self) -> &str {
        &self.device.driver_version
    }

    pub fn vbios_version(&self) -> &str {
        &self.device.vbios_version
    }

    /// The device chain as NVML returns it (concatenated PEM, leaf first).
    pub fn chain_pem(&self) -> String {
        self.pki.chain_pem()
    }

    /// The roots clients pass as `--insecure-gpu-roots`.
    pub fn roots_pem(&self) -> String {
        self.pki.roots_pem()
    }

    /// The signed report of `entry` over `nonce`, as its state makes it (a bad measurement
    /// changes measurement block 4, which the VBIOS RIM covers).
    pub fn report(&self, entry: &SimGpuEntry, nonce: &[u8; 32]) -> Result<Vec<u8>, SimError> {
        let mut gpu = self.device.clone();
        if entry.state == SimGpuState::BadMeasurement
            && let Some(m) = gpu.measurements.get_mut(3)
        {
            m[0] ^= 0xFF;
        }
        self.pki.report(&gpu, nonce)
    }

    /// The collateral NVIDIA's services would give at `at`: both signed RIMs (under the ids
    /// the reports call for) and good OCSP answers for every certificate asked about.
    pub fn collateral(&self, at: i64) -> Result<GpuCollateral, SimError> {
        Ok(GpuCollateral {
            rims: self.rims()?,
            ocsp: self.pki.ocsp_answers(at)?,
        })
    }

    /// NVIDIA's RIM service and OCSP responder for these GPUs (`sim pccs` serves them beside
    /// the PCCS API), so the agent's fetching path runs against the simulation.
    pub fn services(&self) -> Result<super::gpu_services::SimGpuServices, SimError> {
        let rims = self
            .rims()?
            .into_iter()
            .filter_map(|r| Some((r.id?, r.xml)))
            .collect();
        Ok(super::gpu_services::SimGpuServices {
            pki: SimGpuPki::load(&self.dir.join("pki"))?,
            rims,
        })
    }

    /// Both signed RIMs, under the ids the reports call for.
    fn rims(&self) -> Result<Vec<RimFile>, SimError> {
        let report = self.pki.report(&self.device, &[0; 32])?;
        let parsed = tdx_core::gpu::SpdmReport::parse(&report)
            .map_err(|e| SimError::Other(format!("simulated report: {e}")))?;
        let (driver_id, vbios_id) = rim_ids(&parsed, Some(self.pki.arch));
        let rims = [
            (SimRimKind::Driver, driver_id),
            (SimRimKind::Vbios, vbios_id),
        ]
        .into_iter()
        .map(|(kind, id)| {
            Ok(RimFile {
                id,
                xml: self.pki.sign_rim(&self.device.rim(kind, self.pki.arch))?,
            })
        })
        .collect::<Result<Vec<_>, SimError>>()?;
        Ok(rims)
    }
}

/// The one board every simulated GPU is.
fn model_gpu() -> SimGpu {
    SimGpu::typical(Architecture::Hopper, "tdx-agent simulated GPU")
}

/// A UUID in NVML's form (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`), distinct per PKI and
/// index.
fn sim_uuid(fwid: &[u8; 48], index: u32) -> String {
    let mut h = Sha256::new();
    h.update(fwid);
    h.update(index.to_be_bytes());
    let x = hex::encode(&h.finalize()[..16]);
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}
