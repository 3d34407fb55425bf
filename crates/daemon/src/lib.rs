//! tdx-daemon: `tdx-agent serve`. The RA-TLS server with its evidence, challenge, probe and
//! metrics APIs, the vLLM front door, the startup measurements, the admin socket and the
//! audit log, configured by one typed file validated before any port is bound.
#![forbid(unsafe_code)]

pub mod audit;
pub mod batcher;
mod blocking;
pub mod config;
pub mod server;

#[cfg(test)]
mod batcher_tests;

/// Generated gRPC code for proto/tdx_agent/v1.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tdx_agent.v1");
}
