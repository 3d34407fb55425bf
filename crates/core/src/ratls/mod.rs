//! RA-TLS: certificates whose TLS key is bound into a TD quote, and the client verifier.
//!
//! The server side ([`cert`]) makes an in-memory P-256 key, asks the caller for a quote over
//! [`cert::claims_for`]'s REPORTDATA, and issues a self-signed certificate carrying the quote
//! ([`evidence`], OID 2.23.133.5.4.9) and optionally the collateral ([`endorsements`], OID
//! 2.23.133.5.4.2) in the CCC interoperable formats. The client side ([`verifier`]) is a
//! rustls `ServerCertVerifier` that accepts a server only when its quote verifies, binds the
//! handshake key, and satisfies the caller's policy. See docs/design.md §5.

pub mod cbor;
pub mod cert;
pub mod endorsements;
pub mod evidence;
pub mod verifier;

use std::sync::Arc;

use crate::verify::{CollateralError, Report};

pub use cert::{
    CertResolver, MAX_VALIDITY_SECS, RaTlsCertifiedKey, SUBJECT_CN, Validity, build_certificate,
    claims_for, claims_with_event_log, claims_with_gpu_evidence, claims_with_nonce, generate_key,
    server_config, spki_der,
};
pub use endorsements::{ENDORSEMENTS_OID, ENDORSEMENTS_VERSION, Endorsements};
pub use evidence::{Claims, EVIDENCE_OID, Evidence, HashAlg};
pub use verifier::{
    CollateralSource, RaTlsVerifier, VerificationCache, certificate_claims,
    certificate_spki_sha256, client_config,
};

/// The CBOR tag both RA-TLS extensions wrap their content in.
pub const CBOR_TAG_RATLS: u64 = 60000;

/// Why a certificate was not issued or a server was not accepted. Every variant names the
/// check or the input that failed.
#[derive(Debug, thiserror::Error)]
pub enum RaTlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("the certificate carries no RA-TLS evidence extension (OID 2.23.133.5.4.9)")]
    NoEvidence,
    #[error("evidence extension (OID 2.23.133.5.4.9): {0}")]
    Evidence(String),
    #[error("endorsements extension (OID 2.23.133.5.4.2): {0}")]
    Endorsements(String),
    #[error(
        "key binding: the claims' pubkey-hash ({alg}) is {claimed}, but the certificate's public key hashes to {actual}"
    )]
    KeyBinding {
        alg: &'static str,
        claimed: String,
        actual: String,
    },
    #[error(
        "REPORTDATA binding: the quote carries {found}, expected {expected} (SHA-256 of the claims, then zeros)"
    )]
    ReportDataBinding { expected: String, found: String },
    #[error("certificate validity: {0}")]
    Validity(String),
    #[error("no collateral: {0}")]
    NoCollateral(String),
    #[error("collateral: {0}")]
    Collateral(#[from] CollateralError),
    #[error("quote {}", .0.summary())]
    QuoteRejected(Box<Report>),
    #[error("issuing the certificate: {0}")]
    Issue(String),
    #[error("verifier setup: {0}")]
    Config(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

impl From<RaTlsError> for rustls::Error {
    fn from(e: RaTlsError) -> Self {
        rustls::Error::General(format!("RA-TLS: {e}"))
    }
}

impl From<rcgen::Error> for RaTlsError {
    fn from(e: rcgen::Error) -> Self {
        RaTlsError::Issue(e.to_string())
    }
}

/// The only crypto provider we build TLS configs with: compiling in a second one makes
/// rustls' default builders panic (docs/design.md §13).
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
