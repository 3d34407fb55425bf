//! The `tdx-agent` binary.
#![forbid(unsafe_code)]
fn main() {}
