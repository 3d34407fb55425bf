//! tdx-net: the HTTP pieces both sides of tdx-agent share: the PCCS client with its collateral
//! cache, what the front door and `connect` both do to forwarded requests (hop-by-hop
//! headers, OpenAI-shaped errors), and the idle timer of the connections both serve.
#![forbid(unsafe_code)]

pub mod forward;
pub mod head_timer;
mod http;
pub use http::{error_chain, is_loopback_host};
pub mod nvidia;
pub mod pccs;
pub mod webhook;

#[cfg(test)]
mod nvidia_tests;
#[cfg(test)]
#[path = "../../core/src/test_support.rs"]
mod test_support;
