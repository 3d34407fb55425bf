//! The one error type at the simulated TD's boundary: which file or value, and what to fix.

use std::path::PathBuf;

use tdx_tee::TeeError;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir} is not a complete simulation directory ({missing} is missing); run `tdx-agent sim pki --sim-dir {dir}` to create it"
    )]
    NotInitialised { dir: PathBuf, missing: PathBuf },
    #[error(
        "{dir} holds a half-made simulated PKI ({detail}); remove {dir} and run `tdx-agent sim pki --sim-dir {dir}` again"
    )]
    HalfMade { dir: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("invalid simulation setting {field}: {detail}")]
    InvalidSetting { field: &'static str, detail: String },
    #[error("simulated PKI: {0}")]
    Crypto(String),
    #[error("{0}")]
    Other(String),
}

impl SimError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SimError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, detail: impl std::fmt::Display) -> Self {
        SimError::Malformed {
            path: path.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<rcgen::Error> for SimError {
    fn from(e: rcgen::Error) -> Self {
        SimError::Crypto(format!("rcgen: {e}"))
    }
}

impl From<SimError> for TeeError {
    fn from(e: SimError) -> Self {
        match e {
            SimError::Io { op, path, source } => TeeError::Io { op, path, source },
            other => TeeError::Sim(other.to_string()),
        }
    }
}
