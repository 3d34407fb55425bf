//! The CCEL boot event log: the ACPI CCEL table, the TCG2 crypto-agile event log it points
//! at, and its replay into the RTMR values the firmware and boot loader should have produced.
//!
//! Everything here parses untrusted bytes: lengths are bounded by the buffer, arithmetic is
//! checked, and every failure is a [`CcelError`] naming the event, the offset and the field.

mod error;
mod log;
mod names;
mod report;
mod table;

#[cfg(test)]
mod tests;

pub use error::CcelError;
pub use log::{DigestAlgorithm, EV_NO_ACTION, Event, EventLog, SHA384_ALG_ID, SpecIdEvent};
pub use names::event_type_name;
pub use report::{ReplayReport, ReportEvent};
pub use table::{CCEL_TABLE_LEN, CcelTable};

/// Where Linux exposes the ACPI CCEL table.
pub const CCEL_TABLE_PATH: &str = "/sys/firmware/acpi/tables/CCEL";
/// Where Linux exposes the log area the CCEL table points at.
pub const CCEL_DATA_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";
