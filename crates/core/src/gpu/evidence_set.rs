//! The GPU evidence an agent serves beside its certificate (docs/formats.md §13): each GPU's
//! report and chain as NVML returned them, the digest the certificate's claims commit to, the
//! nonces the reports are made over, and the RTMR3 `gpu` event that records what the SPDM
//! evidence cannot say (CC mode, devtools).
//!
//! The digest is over a length-prefixed binary encoding of the parsed fields, not over JSON
//! text, so two servers cannot disagree about it through whitespace or key order.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::encoding::{b64, from_b64};

/// The `format` of the served document.
pub const GPU_EVIDENCE_FORMAT: &str = "tdx-agent/gpu-evidence/v1";
/// Prefix of every GPU nonce the agent derives, so no other protocol's 32 bytes can be one.
pub const GPU_NONCE_DOMAIN: &[u8] = b"tdx-agent/gpu/v1";
/// More GPUs than any server has (an HGX board has 8): a bound on hostile documents.
pub const MAX_GPUS: usize = 64;
/// NVML returns at most 8192 bytes of report and 5120 of chain; twice that is generous.
pub const MAX_REPORT_BYTES: usize = 16 << 10;
pub const MAX_CHAIN_BYTES: usize = 16 << 10;
const MAX_UUID_LEN: usize = 96;

/// The RTMR3 event type the agent extends once per attested GPU.
pub const GPU_EVENT: &str = "gpu";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GpuEvidenceError {
    #[error("GPU evidence: not JSON of the documented shape: {0}")]
    Json(String),
    #[error("GPU evidence: format is {found:?}, expected {GPU_EVIDENCE_FORMAT:?}")]
    Format { found: String },
    #[error("GPU evidence: {count} GPUs, at most {MAX_GPUS} are accepted")]
    TooMany { count: usize },
    #[error("GPU evidence: gpus[{position}].{field}: {detail}")]
    Field {
        position: usize,
        field: &'static str,
        detail: String,
    },
}

/// The certificate's GPU nonce: SHA-256(domain || SHA-256 of the certificate's SPKI). A
/// report over it was made for this key, so it cannot have been taken from another server.
pub fn nonce_for_certificate(spki_sha256: &[u8; 32]) -> [u8; 32] {
    derive(spki_sha256)
}

/// A challenge batch's GPU nonce: SHA-256(domain || the batch's Merkle root), so a report is
/// as fresh as the clients' nonces in the batch. Merkle roots and SPKI hashes are both
/// SHA-256 outputs nobody can choose, so the two derivations cannot be made to collide.
pub fn nonce_for_batch(merkle_root: &[u8; 32]) -> [u8; 32] {
    derive(merkle_root)
}

fn derive(input: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GPU_NONCE_DOMAIN);
    h.update(input);
    h.finalize().into()
}

/// One GPU's evidence: which GPU (NVML index and UUID) and what NVML returned for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuEvidence {
    pub index: u32,
    pub uuid: String,
    /// The SPDM request and response with the signature, as NVML returns it.
    pub report: Vec<u8>,
    /// The device certificate chain, concatenated PEM, leaf first.
    pub chain_pem: Vec<u8>,
}

/// Every attested GPU's evidence, in index order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuEvidenceSet {
    gpus: Vec<GpuEvidence>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetJson {
    format: String,
    gpus: Vec<EntryJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    index: u32,
    uuid: String,
    /// base64
    report: String,
    certificate_chain: String,
}

impl GpuEvidenceSet {
    /// A set of `gpus`, checked as a served document would be.
    pub fn new(gpus: Vec<GpuEvidence>) -> Result<Self, GpuEvidenceError> {
        if gpus.len() > MAX_GPUS {
            return Err(GpuEvidenceError::TooMany { count: gpus.len() });
        }
        for (position, g) in gpus.iter().enumerate() {
            let field = |field, detail: String| GpuEvidenceError::Field {
                position,
                field,
                detail,
            };
            if g.uuid.is_empty()
                || g.uuid.len() > MAX_UUID_LEN
                || !g.uuid.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(field(
                    "uuid",
                    format!("1..={MAX_UUID_LEN} printable ASCII characters"),
                ));
            }
            if g.report.len() > MAX_REPORT_BYTES {
                return Err(field(
                    "report",
                    format!("{} bytes, at most {MAX_REPORT_BYTES}", g.report.len()),
                ));
            }
            // The JSON document carries the chain as text: bytes that are not UTF-8 would not
            // survive it, and the served digest would no longer match the certificate's.
            if std::str::from_utf8(&g.chain_pem).is_err() {
                return Err(field(
                    "certificate_chain",
                    "not UTF-8 (PEM is ASCII)".into(),
                ));
            }
            if g.chain_pem.len() > MAX_CHAIN_BYTES {
                return Err(field(
                    "certificate_chain",
                    format!("{} bytes, at most {MAX_CHAIN_BYTES}", g.chain_pem.len()),
                ));
            }
            if position > 0 && gpus[position - 1].index >= g.index {
                return Err(field(
                    "index",
                    "indices must increase (each GPU once, in index order)".into(),
                ));
            }
        }
        Ok(Self { gpus })
    }

    pub fn gpus(&self) -> &[GpuEvidence] {
        &self.gpus
    }

    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    /// What the `gpu-evidence-sha256` claim commits to: SHA-256 over the format name, the
    /// count, and each GPU's index, UUID, report and chain, every variable field prefixed
    /// by its length (u32, big-endian).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
        h.update(GPU_EVIDENCE_FORMAT.as_bytes());
        h.update(len(self.gpus.len()));
        for g in &self.gpus {
            h.update(g.index.to_be_bytes());
            for field in [g.uuid.as_bytes(), &g.report, &g.chain_pem] {
                h.update(len(field.len()));
                h.update(field);
            }
        }
        h.finalize().into()
    }

    pub fn to_json_value(&self) -> serde_json::Value {
        let doc = SetJson {
            format: GPU_EVIDENCE_FORMAT.into(),
            gpus: self
                .gpus
                .iter()
                .map(|g| EntryJson {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    report: b64(&g.report),
                    certificate_chain: String::from_utf8_lossy(&g.chain_pem).into_owned(),
                })
                .collect(),
        };
        serde_json::to_value(doc).unwrap_or_default()
    }

    pub fn from_json_value(v: serde_json::Value) -> Result<Self, GpuEvidenceError> {
        let doc: SetJson =
            serde_json::from_value(v).map_err(|e| GpuEvidenceError::Json(e.to_string()))?;
        if doc.format != GPU_EVIDENCE_FORMAT {
            return Err(GpuEvidenceError::Format { found: doc.format });
        }
        if doc.gpus.len() > MAX_GPUS {
            return Err(GpuEvidenceError::TooMany {
                count: doc.gpus.len(),
            });
        }
        let gpus = doc
            .gpus
            .into_iter()
            .enumerate()
            .map(|(position, e)| {
                let report = from_b64(&e.report).map_err(|err| GpuEvidenceError::Field {
                    position,
                    field: "report",
                    detail: format!("not base64: {err}"),
                })?;
                Ok(GpuEvidence {
                    index: e.index,
                    uuid: e.uuid,
                    report,
                    chain_pem: e.certificate_chain.into_bytes(),
                })
            })
            .collect::<Result<Vec<_>, GpuEvidenceError>>()?;
        Self::new(gpus)
    }
}

/// The GPU's confidential-computing mode as NVML reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CcMode {
    On,
    Off,
    /// CC on with developer tools: memory is readable by the host's debugger.
    Devtools,
}

impl CcMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Devtools => "devtools",
        }
    }
}

/// The system's multi-GPU mode (NVML's conf-compute settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MultiGpuMode {
    /// Each GPU in CC mode on its own.
    None,
    /// Hopper HGX with NVSwitches: per-GPU CC off, the switches must be attested too.
    ProtectedPcie,
    /// Blackwell's multi-GPU protected mode (NVLink encryption).
    Nvle,
}

impl MultiGpuMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ProtectedPcie => "protected-pcie",
            Self::Nvle => "nvle",
        }
    }
}

/// The `data` of an RTMR3 `gpu` event: what the agent saw of one GPU when it verified it.
/// The SPDM report proves firmware and driver; only this (measured before the agent
/// reported ready) records the CC state NVML gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuEventData {
    pub index: u32,
    pub architecture: String,
    /// SHA-256 of the GPU's UUID text, hex: identifies the GPU without publishing its serial.
    pub uuid_sha256: String,
    pub driver_version: String,
    pub vbios_version: String,
    pub cc_mode: CcMode,
    pub multi_gpu_mode: MultiGpuMode,
    /// SHA-384 over the report's measurement blocks, hex (the report's `measurements_sha384`).
    pub measurements_sha384: String,
}

impl GpuEventData {
    pub fn uuid_digest(uuid: &str) -> String {
        crate::encoding::hex(&Sha256::digest(uuid.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32) -> GpuEvidence {
        GpuEvidence {
            index,
            uuid: format!("GPU-0000000{index}-aaaa-bbbb-cccc-000000000000"),
            report: vec![index as u8; 40],
            chain_pem: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        }
    }

    #[test]
    fn json_round_trips_and_the_digest_covers_every_field() {
        let set = GpuEvidenceSet::new(vec![gpu(0), gpu(1)]).unwrap();
        let back = GpuEvidenceSet::from_json_value(set.to_json_value()).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.digest(), set.digest());
        let changed: [fn(&mut GpuEvidence); 4] = [
            |g| g.index += 10,
            |g| g.uuid.push('x'),
            |g| g.report.push(0),
            |g| g.chain_pem.push(b'\n'),
        ];
        for change in changed {
            let mut gpus = vec![gpu(0), gpu(1)];
            change(&mut gpus[1]);
            let other = GpuEvidenceSet::new(gpus).unwrap();
            assert_ne!(other.digest(), set.digest());
        }
        // Moving a byte from one field to the next changes the digest: lengths are bound.
        let mut a = gpu(0);
        let mut b = gpu(0);
        a.report = vec![1, 2];
        a.chain_pem = vec![3];
        b.report = vec![1];
        b.chain_pem = vec![2, 3];
        assert_ne!(
            GpuEvidenceSet::new(vec![a]).unwrap().digest(),
            GpuEvidenceSet::new(vec![b]).unwrap().digest()
        );
    }

    #[test]
    fn hostile_documents_are_refused_by_field() {
        let mut v = GpuEvidenceSet::new(vec![gpu(0)]).unwrap().to_json_value();
        v["format"] = "other/v9".into();
        assert!(matches!(
            GpuEvidenceSet::from_json_value(v),
            Err(GpuEvidenceError::Format { .. })
        ));
        let dup = GpuEvidenceSet::new(vec![gpu(1), gpu(1)]);
        assert!(matches!(
            dup,
            Err(GpuEvidenceError::Field { field: "index", .. })
        ));
        let mut bad_uuid = gpu(0);
        bad_uuid.uuid = "GPU 1".into();
        assert!(matches!(
            GpuEvidenceSet::new(vec![bad_uuid]),
            Err(GpuEvidenceError::Field { field: "uuid", .. })
        ));
        let mut big = gpu(0);
        big.report = vec![0; MAX_REPORT_BYTES + 1];
        assert!(matches!(
            GpuEvidenceSet::new(vec![big]),
            Err(GpuEvidenceError::Field {
                field: "report",
                ..
            })
        ));
        let mut binary_chain = gpu(0);
        binary_chain.chain_pem = vec![0xFF, 0xFE];
        assert!(matches!(
            GpuEvidenceSet::new(vec![binary_chain]),
            Err(GpuEvidenceError::Field {
                field: "certificate_chain",
                ..
            })
        ));
        let many: Vec<GpuEvidence> = (0..=MAX_GPUS as u32).map(gpu).collect();
        assert!(matches!(
            GpuEvidenceSet::new(many),
            Err(GpuEvidenceError::TooMany { .. })
        ));
        let mut v = GpuEvidenceSet::new(vec![gpu(0)]).unwrap().to_json_value();
        v["gpus"][0]["extra"] = 1.into();
        assert!(matches!(
            GpuEvidenceSet::from_json_value(v),
            Err(GpuEvidenceError::Json(_))
        ));
    }

    #[test]
    fn certificate_and_batch_nonces_depend_on_their_input() {
        let a = nonce_for_certificate(&[1; 32]);
        assert_ne!(a, nonce_for_certificate(&[2; 32]));
        assert_eq!(a, nonce_for_batch(&[1; 32]));
        let mut h = Sha256::new();
        h.update(b"tdx-agent/gpu/v1");
        h.update([1u8; 32]);
        assert_eq!(a, <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn gpu_events_are_typed() {
        let e = GpuEventData {
            index: 1,
            architecture: "hopper".into(),
            uuid_sha256: GpuEventData::uuid_digest("GPU-1"),
            driver_version: "595.71.05".into(),
            vbios_version: "96.00.88.00.11".into(),
            cc_mode: CcMode::On,
            multi_gpu_mode: MultiGpuMode::None,
            measurements_sha384: "00".repeat(48),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["cc_mode"], "on");
        assert_eq!(v["multi_gpu_mode"], "none");
        let mut bad = v.clone();
        bad["cc_mode"] = "maybe".into();
        assert!(serde_json::from_value::<GpuEventData>(bad).is_err());
        let mut extra = v;
        extra["note"] = "x".into();
        assert!(serde_json::from_value::<GpuEventData>(extra).is_err());
    }
}
