//! TEE providers: where quotes, measurement registers and the boot event log come from.
//!
//! Every provider implements the blocking [`Tee`] trait; [`TeeHandle`] moves the calls off the
//! async runtime and keeps one quote in flight at a time.
#![forbid(unsafe_code)]

pub mod configfs;
pub mod crash_point;
mod error;
pub mod fsops;
mod handle;
pub mod rtmr3_log;
pub mod sysfs;

pub use error::TeeError;
pub use handle::TeeHandle;
pub use rtmr3_log::boot_id;
/// The register types live in the verifier core; providers fill them.
pub use tdx_core::registers::{Measurements, ReportData, Rtmr, Sha384};

/// What a build without the simulated TD (a guest image: `--no-default-features`) answers
/// when asked for it, by `--tee sim`, `tee.kind = "sim"` or `tdx-agent sim`.
pub const SIM_NOT_BUILT: &str = "this tdx-agent was built without the simulated TD (guest \
images leave it out): use the configfs TEE inside a TD, or a development build (cargo build \
with default features) for the simulation";

/// Which backend a provider is; shown in logs, metrics and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeeKind {
    /// The kernel's configfs-tsm and sysfs interfaces (real TDX hardware, or the FUSE emulator).
    Configfs,
    /// The simulated TD: software registers and a test PKI. Never a production root of trust.
    Simulated,
}

/// A source of TD quotes and measurements. All methods block: call them through [`TeeHandle`]
/// from async code.
pub trait Tee: Send + Sync {
    fn kind(&self) -> TeeKind;

    /// A quote whose REPORTDATA is `report_data`.
    fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, TeeError>;

    /// The current MRTD, RTMR0-3 and the owner registers.
    fn measurements(&self) -> Result<Measurements, TeeError>;

    /// `RTMR_new = SHA-384(RTMR_old || digest)`. Fails (never silently succeeds) where the
    /// platform offers no way to extend.
    fn extend_rtmr(&self, rtmr: Rtmr, digest: &Sha384) -> Result<(), TeeError>;

    /// The raw TCG2 boot event log (CCEL data), for replay against RTMR0-2.
    fn boot_event_log(&self) -> Result<Vec<u8>, TeeError>;

    /// Names the current boot: the RTMRs reset exactly when it changes, so the RTMR3 event
    /// log of another boot explains nothing. A provider of the kernel's registers reads the
    /// kernel's boot id and fails where it cannot (never a made-up id, which would file this
    /// boot's log as another boot's); a simulated TD, whose registers reset when it says so
    /// rather than with the kernel, overrides this to name its own boots (the default names
    /// one simulated boot for good: such a provider never resets its registers).
    fn current_boot_id(&self) -> Result<String, TeeError> {
        match self.kind() {
            TeeKind::Configfs => boot_id(),
            TeeKind::Simulated => Ok("simulated".into()),
        }
    }
}
