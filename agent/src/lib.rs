//! tdx-agent: Intel TDX attestation for confidential LLM inference.
//!
//! The library holds everything the `tdx-agent` binary does, so other Rust programs (and the
//! tests) can reuse the verifier, the TEE providers and the simulated TD.
#![forbid(unsafe_code)]

pub mod audit;
pub mod challenge;
pub mod cli;
pub mod client;
pub mod config;
pub mod encoding;
pub mod forward;
pub mod fsutil;
pub mod measure;
pub mod quote;
pub mod ratls;
pub mod server;
pub mod tee;
pub mod verify;

#[cfg(test)]
mod docs_tests;
#[cfg(test)]
pub(crate) mod test_support;

/// Generated gRPC code for proto/tdx_agent/v1.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tdx_agent.v1");
}
