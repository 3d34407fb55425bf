//! tdx-core: the verifier core of tdx-agent. Parses and appraises TD quotes, RA-TLS
//! certificates, fresh-challenge proofs, the RTMR3 and boot event logs, model manifests and
//! (in progress) NVIDIA GPU evidence.
//!
//! Nothing here opens a socket or needs an async runtime (CI checks its dependency tree), so a
//! client in any language can embed it: the daemon, `attest`, `connect` and the Python
//! package all reach their verdicts through this crate.
#![forbid(unsafe_code)]

pub mod ccel;
pub mod challenge;
pub mod encoding;
pub mod gpu;
pub mod measure;
pub mod quote;
pub mod ratls;
pub mod registers;
pub mod verify;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_support;
