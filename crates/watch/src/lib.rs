//! tdx-watch: continuous attestation of a fleet (`tdx-agent watch`) and the evidence archive
//! auditors re-check (`tdx-agent evidence ...`), docs/watch.md.
#![forbid(unsafe_code)]

pub mod archive;
mod chain;
pub mod config;
pub mod export;
pub mod report;
pub mod reverify;
pub mod run;

pub use archive::{Archive, ArchiveError, NewRecord, Verified, printable, verify};
pub use config::{TargetConfig, WatchConfig, WatchConfigError};
pub use export::{export, verify_archive_or_export, verify_export};
pub use report::html_report;
pub use reverify::{Disagreement, Reverified, ReverifyOptions, reverify};
pub use run::{WatchError, run};
