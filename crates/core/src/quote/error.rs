//! Why a quote could not be parsed, naming the field and the offset.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error(
        "quote truncated: {field} at offset {offset} needs {needed} bytes, {available} available"
    )]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error(
        "not a TDX quote: it is {what} (TEE type 0x{tee_type:08x}, quote version {version}); tdx-agent verifies TDX quotes only"
    )]
    NotTdx {
        tee_type: u32,
        version: u16,
        what: &'static str,
    },
    #[error("unsupported {field}: {found}")]
    Unsupported { field: &'static str, found: String },
    #[error("{field} declares {declared} bytes but {expected} are required")]
    LengthMismatch {
        field: &'static str,
        declared: usize,
        expected: usize,
    },
    #[error("{level} certification data type is {found}, expected {expected}")]
    CertDataType {
        level: &'static str,
        expected: u16,
        found: u16,
    },
    #[error("PCK certificate chain: {detail}")]
    BadPem { detail: String },
}
