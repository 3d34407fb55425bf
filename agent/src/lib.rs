//! tdx-agent: Intel TDX attestation for confidential LLM inference.
//!
//! The library holds everything the `tdx-agent` binary does, so other Rust programs (and the
//! tests) can reuse the verifier, the TEE providers and the simulated TD.
#![forbid(unsafe_code)]

pub mod cli;
pub mod encoding;
pub mod fsutil;
pub mod quote;
pub mod tee;
pub mod verify;

#[cfg(test)]
pub(crate) mod test_support;
