//! Runtime measurements: the RTMR3 event log and the model manifest.

pub mod jcs;
pub mod model;
pub mod rtmr3_log;

#[cfg(test)]
mod model_tests;
