//! The RTMR3 event log: as a client reads it from certificate claims (JSON lines, replayed
//! against RTMR3) and as the daemon reopens its own file at start.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_core::measure::rtmr3_log;
use tdx_tee::rtmr3_log::Rtmr3Log;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(lines) = rtmr3_log::parse_lines(text.lines(), 1)
    {
        let _ = rtmr3_log::replay_lines(&lines);
    }
    let path = tdx_agent_fuzz::scratch_file("rtmr3.jsonl", data);
    // The boot id of the seeds (examples/gen_seeds.rs): a header with another one moves the
    // file aside and starts afresh, which is the short path.
    if let Ok(log) = Rtmr3Log::open(&path, "fuzz-boot") {
        let _ = log.expected_rtmr3();
        let _ = log.jsonl();
    }
});
