//! The errors a TEE provider reports, each naming the resource and what the kernel refused.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// `mkdir` under the configfs-tsm report directory failed with ENXIO.
    #[error(
        "no TSM provider is registered ({path}: mkdir failed with ENXIO); is this a TDX guest with the tdx_guest driver loaded (CONFIG_TDX_GUEST_DRIVER, CONFIG_TSM_REPORTS)?"
    )]
    NoProvider { path: PathBuf },
    #[error(
        "the TSM report directory {path} does not exist; configfs-tsm needs Linux 6.7+ with configfs mounted at /sys/kernel/config"
    )]
    NoReportDir { path: PathBuf },
    #[error("{path}: provider is {found:?}, expected \"tdx_guest\"")]
    WrongProvider { path: PathBuf, found: String },
    #[error("{path}: the kernel refused the REPORTDATA (EFBIG: more than 64 bytes)")]
    ReportDataTooLarge { path: PathBuf },
    #[error(
        "{path}: the kernel refused to make a quote (EINVAL: inblob was not written or was not exactly 64 bytes)"
    )]
    InvalidReportData { path: PathBuf },
    #[error(
        "{path}: the host's GetQuote call failed (EIO); check the quote generation service (QGS) on the host"
    )]
    QuoteFailed { path: PathBuf },
    #[error(
        "{path}: no quote arrived from the host within the kernel's timeout (ETIMEDOUT); check the host's QGS"
    )]
    QuoteTimeout { path: PathBuf },
    #[error("{path}: quote request interrupted (EINTR)")]
    Interrupted { path: PathBuf },
    #[error(
        "{path}: the quote buffer is still held by the host after an earlier timed-out or interrupted request (EBUSY); retry later"
    )]
    Busy { path: PathBuf },
    #[error(
        "{path}: another writer changed the report entry {attempts} times in a row (generation moved from {before} to {after}, expected {expected})"
    )]
    GenerationRace {
        path: PathBuf,
        attempts: u32,
        before: u64,
        after: u64,
        expected: u64,
    },
    #[error("{path}: the kernel returned {len} bytes, too short to be a TD quote")]
    ShortQuote { path: PathBuf, len: usize },
    #[error("{path}: {what} is malformed: {detail}")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error(
        "{path}: the kernel returned more than {limit} bytes for {what}, more than it ever writes there; refusing it"
    )]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        limit: usize,
    },
    #[error(
        "cannot read this boot's id from {path}: {detail}; the RTMR3 event log is kept per boot, and a made-up id would file this boot's log as another boot's, so the agent refuses to start (is /proc mounted and readable by the agent?)"
    )]
    BootId { path: PathBuf, detail: String },
    #[error("RTMR extension is unavailable: {reason}")]
    ExtendUnavailable { reason: String },
    #[error("{path}: the kernel refused to extend (errno {errno}: {detail})")]
    ExtendRefused {
        path: PathBuf,
        errno: i32,
        detail: String,
    },
    #[error("the boot event log is unavailable at {path}: {detail}")]
    EventLogUnavailable { path: PathBuf, detail: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("simulated TD: {0}")]
    Sim(String),
    #[error("the TEE worker stopped: {0}")]
    Worker(String),
}
