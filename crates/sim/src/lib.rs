//! The simulated TD and its simulated Intel PKI, for development, CI and demos.
//!
//! Chosen only explicitly (`--tee sim`), never as a fallback: its quotes verify only against
//! the simulated root in DIR/root.der, never against Intel's. Everything lives in one
//! directory ([`SimDir`]) shared by every command that simulates, so quotes and collateral
//! always match and the registers survive a restart.
#![forbid(unsafe_code)]

mod der;
mod dir;
mod error;
mod fsio;
pub mod gpu;
mod gpu_dir;
pub mod gpu_services;
#[cfg(test)]
mod gpu_tests;
pub mod pccs;
mod pki;
mod quote;
mod settings;
mod td;

use std::path::Path;
use std::sync::Arc;

pub use der::PckPlatform;
pub use dir::{PKI_DIR, QUOTE_HANG, ROOT_DER, SETTINGS_JSON, SimDir, TD_STATE_JSON};
pub use error::SimError;
pub use gpu_dir::{
    GPU_DIR, GPU_ROOTS_PEM, GPUS_JSON, MAX_SIM_GPUS, SimGpuEntry, SimGpuState, SimGpus,
};
pub use pki::{
    SIM_CPU_SVN, SIM_FMSPC, SIM_MRSIGNERSEAM, SIM_PCE_ID, SIM_PCE_SVN, SIM_QE_ISVPRODID,
    SIM_QE_ISVSVN, SIM_TEE_TCB_SVN, SimPki, sim_mrseam, sim_platform, sim_qe_mrsigner,
};
pub use quote::{HEADER_LEN, QE_VENDOR_ID, QuoteBuilder, TD10_BODY_LEN, TD15_BODY_LEN};
pub use settings::{SimSettings, TCB_STATUSES, TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE};
pub use td::{SimTd, TdState, reset};

use tdx_core::verify::collateral::Collateral;
use tdx_tee::{ReportData, Tee};

/// Everything a test needs from a simulation, in one value. Public (not `cfg(test)`) so the
/// integration tests under tests/ and other modules' tests use the same simulation.
pub struct SimFixture {
    pub dir: SimDir,
    pub pki: Arc<SimPki>,
    pub td: Arc<SimTd>,
}

impl SimFixture {
    /// A simulation in `path` (created if needed) with exactly `settings`, registers at boot.
    pub fn create(path: &Path, settings: SimSettings) -> Result<SimFixture, SimError> {
        let dir = SimDir::open_or_create_with(path, &settings)?;
        reset(&dir)?;
        let pki = Arc::new(SimPki::load(&dir)?);
        let td = Arc::new(SimTd::new(dir.clone(), Arc::clone(&pki)));
        Ok(SimFixture { dir, pki, td })
    }

    pub fn root_der(&self) -> &[u8] {
        self.pki.root_der()
    }

    /// A quote from the simulated TD (honours `quote_delay_ms`).
    pub fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, SimError> {
        self.td
            .quote(report_data)
            .map_err(|e| SimError::Other(e.to_string()))
    }

    /// A builder for a quote the TD would make now, to alter before `build()`.
    pub fn quote_builder(&self, report_data: &ReportData) -> Result<QuoteBuilder<'_>, SimError> {
        self.td.quote_builder(report_data)
    }

    pub fn collateral(&self, now_unix: u64) -> Result<Collateral, SimError> {
        self.pki.collateral(now_unix)
    }

    /// dcap-qvl's verifier pinned to this simulation's root.
    pub fn verifier(&self) -> dcap_qvl::verify::QuoteVerifier {
        dcap_qvl::verify::QuoteVerifier::new(self.root_der().to_vec())
    }
}

#[cfg(test)]
mod tests;
