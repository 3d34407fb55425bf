//! The daemon: one TLS listener serving HTTPS and gRPC with an RA-TLS certificate.
pub mod error;
pub mod listener;
pub mod metrics;
pub mod readiness;
