//! The TD's measurement registers and the values they hold, as quotes and providers name them.

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
