//! The boot event log (CCEL ACPI table and its data area), as read from the TD's firmware
//! tables or handed over in evidence: parse, replay into RTMR0-2, describe.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::ccel::{CcelTable, EventLog, ReplayReport};

fuzz_target!(|data: &[u8]| {
    let _ = CcelTable::parse(data);
    if let Ok(log) = EventLog::parse(data) {
        let _ = log.replay();
        let report = ReplayReport::new(&log);
        let _ = report.render_text();
    }
});
