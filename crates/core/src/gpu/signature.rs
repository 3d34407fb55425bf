//! The report's signature: ECDSA P-384 with SHA-384 over everything before it (request and
//! response), by the key of the chain's leaf certificate (docs/design.md §14).

use p384::ecdsa::{Signature, VerifyingKey};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::SpdmReport;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuSignatureError {
    #[error("GPU certificate chain: {0}")]
    Chain(String),
    #[error("GPU leaf certificate: its key is not an ECDSA P-384 key: {0}")]
    Key(String),
    #[error("GPU report signature: not a P-384 r||s signature: {0}")]
    Malformed(String),
    #[error("GPU report signature: does not verify with the leaf certificate's key")]
    Mismatch,
}

/// The DER certificates of a chain as NVML returns it: concatenated PEM, leaf first.
pub fn chain_der(pem: &[u8]) -> Result<Vec<Vec<u8>>, GpuSignatureError> {
    let certs =
        crate::quote::pem_certificates(pem).map_err(|e| GpuSignatureError::Chain(e.to_string()))?;
    if certs.is_empty() {
        return Err(GpuSignatureError::Chain(
            "no certificate in the PEM text".into(),
        ));
    }
    Ok(certs)
}

/// Check that `report` (parsed from `raw`) was signed by the key of `leaf_der`.
pub fn verify_report_signature(
    raw: &[u8],
    report: &SpdmReport,
    leaf_der: &[u8],
) -> Result<(), GpuSignatureError> {
    let (_, leaf) = X509Certificate::from_der(leaf_der)
        .map_err(|e| GpuSignatureError::Chain(format!("leaf certificate: {e}")))?;
    let key = VerifyingKey::from_sec1_bytes(&leaf.public_key().subject_public_key.data)
        .map_err(|e| GpuSignatureError::Key(e.to_string()))?;
    let signature = Signature::from_slice(&report.signature)
        .map_err(|e| GpuSignatureError::Malformed(e.to_string()))?;
    let signed = raw
        .get(..report.signed_len())
        .ok_or_else(|| GpuSignatureError::Malformed("the report is shorter than parsed".into()))?;
    if super::p384_sha384::verifies(&key, signed, &signature) {
        Ok(())
    } else {
        Err(GpuSignatureError::Mismatch)
    }
}
