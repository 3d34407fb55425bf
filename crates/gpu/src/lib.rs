//! GPU evidence collection inside the TD (docs/gpu.md): what each NVIDIA GPU says about its
//! confidential-computing state, and its attestation report over a nonce with the device
//! certificate chain. Sources are NVML (loaded at run time, so the agent runs unchanged
//! where no NVIDIA driver exists) and, for development and CI, the simulated GPUs. Every
//! source call is blocking and runs on the [`Collector`]'s own thread.
#![forbid(unsafe_code)]

mod collector;
mod nvml;
pub mod pci;
#[cfg(feature = "sim")]
mod sim;

pub use collector::{Collector, CollectorError};
pub use nvml::NvmlSource;
#[cfg(feature = "sim")]
pub use sim::SimSource;

use tdx_core::gpu::CcMode;

/// One GPU as a source reads it, with its evidence where the GPU gives any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectedGpu {
    pub index: u32,
    pub uuid: String,
    pub driver_version: String,
    pub vbios_version: String,
    /// CC on, off, or on in devtools mode (NVML's system-wide settings).
    pub cc_mode: CcMode,
    /// Whether the GPUs accept work (NVML's CC "ready state", set once attested).
    pub ready: bool,
    /// Hopper's protected-PCIe multi-GPU mode, which this agent does not support yet.
    pub protected_pcie: bool,
    /// The attestation report and the device chain (PEM); `None` with CC off, where NVML
    /// refuses the report.
    pub evidence: Option<RawEvidence>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvidence {
    pub report: Vec<u8>,
    pub chain_pem: Vec<u8>,
}

/// A source's failure: which GPU, which call, what it said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{call}: {detail}", gpu_prefix(*index))]
pub struct GpuSourceError {
    pub index: Option<u32>,
    pub call: &'static str,
    pub detail: String,
}

fn gpu_prefix(index: Option<u32>) -> String {
    index.map_or_else(String::new, |i| format!("GPU {i}: "))
}

impl GpuSourceError {
    pub fn new(index: Option<u32>, call: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            index,
            call,
            detail: detail.to_string(),
        }
    }
}

/// Where GPU evidence comes from. Calls block (NVML does), so only the [`Collector`]'s
/// thread makes them.
pub trait GpuSource: Send + 'static {
    /// What the source is, for logs and errors (`NVML`, `simulated GPUs in DIR`).
    fn describe(&self) -> String;

    /// How many GPUs the source sees.
    fn count(&mut self) -> Result<u32, GpuSourceError>;

    /// GPU `index`'s state, and its attestation report over `nonce` where it gives one.
    fn collect(&mut self, index: u32, nonce: &[u8; 32]) -> Result<CollectedGpu, GpuSourceError>;
}
