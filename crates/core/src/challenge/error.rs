//! The one error type at the challenge module's boundary.

/// Everything a challenge can fail with; the server maps [`ChallengeError::Overloaded`] to 503
/// and the input errors to 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("nonce must be 1 to {max} bytes, got {len}", max = crate::challenge::merkle::MAX_NONCE_LEN)]
    NonceLength { len: usize },
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("malformed inclusion proof: {0}")]
    MalformedProof(String),
    #[error("the inclusion proof does not lead to the root in REPORTDATA[0..32]")]
    RootMismatch,
    #[error("too many challenges waiting for a quote; retry later")]
    Overloaded,
    #[error("the challenge batch failed: {0}")]
    Quote(String),
    #[error("the challenge batcher stopped before answering")]
    Abandoned,
}
