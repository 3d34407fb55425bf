//! The HTTPS API's paths and JSON documents (docs/api.md, docs/formats.md), shared by the
//! daemon that serves them and the clients that read them.

use serde::{Deserialize, Serialize};

use crate::challenge::merkle::ProofJson;

pub const WELL_KNOWN: &str = "/.well-known/attestation";
pub const CHALLENGE: &str = "/attestation/v1/challenge";

/// The evidence JSON (docs/formats.md): what the certificate carries, in one document.
#[derive(Debug, Serialize, Deserialize)]
pub struct EvidenceJson {
    pub version: u32,
    pub tee: String,
    /// DER of the serving certificate, base64.
    pub certificate: String,
    /// The quote in the certificate, base64.
    pub quote: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, hex.
    pub spki_sha256: String,
    pub not_before: String,
    pub not_after: String,
    /// The collateral bundle (docs/formats.md).
    pub collateral: serde_json::Value,
    /// RTMR3 event log, JSON lines (empty until runtime measurements are configured).
    pub event_log: String,
    pub tcb_status: Option<String>,
    /// The GPU evidence document the certificate's `gpu-evidence-sha256` claim commits to
    /// (docs/formats.md), when the server attests GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_evidence: Option<serde_json::Value>,
    /// The GPUs' collateral bundle (RIMs and OCSP answers), with `gpu_evidence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_collateral: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// 1..64 bytes, base64.
    pub nonce: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ChallengeResponseJson {
    /// The fresh quote, base64; REPORTDATA = Merkle root || audit chain head.
    pub quote: String,
    pub report_data: String,
    pub audit_head: String,
    pub root: String,
    pub leaf_hash: String,
    pub proof: ProofJson,
    /// SHA-256 of the SPKI the leaf commits to: the certificate served when the challenge ran.
    pub spki_sha256: String,
    /// With GPUs: the evidence document (docs/formats.md §13) of one report per GPU over
    /// the batch's GPU nonce; REPORTDATA[0..32] then commits to it with the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_evidence: Option<serde_json::Value>,
}
