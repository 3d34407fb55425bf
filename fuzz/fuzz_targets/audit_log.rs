//! Audit log replay (`tdx-agent audit verify`): the hash chain across files, oldest first,
//! and the search for a head taken from a challenge quote.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use tdx_daemon::audit::{verify_against_head, verify_files};

fuzz_target!(|data: &[u8]| {
    // Up to two files, so the chain's crossing of a file boundary is fuzzed too.
    let parts = tdx_agent_fuzz::split(data, 2);
    let paths = vec![
        tdx_agent_fuzz::scratch_file("audit-0.jsonl", parts[0]),
        tdx_agent_fuzz::scratch_file("audit-1.jsonl", parts[1]),
    ];
    if let Ok(summary) = verify_files(&paths) {
        let _ = summary.head_hex();
        let _ = verify_against_head(&paths, summary.head);
    }
    let _ = verify_against_head(&paths[..1], [0u8; 32]);
});
