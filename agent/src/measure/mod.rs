//! Runtime measurements: the RTMR3 event log (and, with the front door, the model digest).

pub mod jcs;
pub mod rtmr3_log;
