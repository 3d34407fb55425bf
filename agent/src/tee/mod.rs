//! TEE providers: where quotes, measurement registers and the boot event log come from.
//!
//! Every provider implements the blocking [`Tee`] trait; [`TeeHandle`] moves the calls off the
//! async runtime and keeps one quote in flight at a time.

pub mod ccel;
pub mod configfs;
mod error;
pub mod fsops;
mod handle;
pub mod sim;
pub mod sysfs;

pub use error::TeeError;
pub use handle::TeeHandle;

/// The 64 bytes a quote commits to.
pub type ReportData = [u8; 64];
/// A SHA-384 measurement register value or digest.
pub type Sha384 = [u8; 48];

/// One of the four runtime measurement registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rtmr {
    R0,
    R1,
    R2,
    R3,
}

impl Rtmr {
    pub const ALL: [Rtmr; 4] = [Rtmr::R0, Rtmr::R1, Rtmr::R2, Rtmr::R3];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The register for an index 0..=3, `None` otherwise.
    pub fn from_index(i: usize) -> Option<Rtmr> {
        Self::ALL.get(i).copied()
    }
}

impl std::fmt::Display for Rtmr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RTMR{}", self.index())
    }
}

/// The TD's measurement registers as the provider reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurements {
    pub mrtd: Sha384,
    pub rtmr: [Sha384; 4],
    pub mrconfigid: Sha384,
    pub mrowner: Sha384,
    pub mrownerconfig: Sha384,
}

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
    /// log of another boot explains nothing.
    fn boot_id(&self) -> String {
        crate::measure::rtmr3_log::boot_id()
    }
}
