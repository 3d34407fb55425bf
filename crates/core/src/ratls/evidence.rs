//! The CCC "interoperable RA-TLS" evidence extension (OID 2.23.133.5.4.9) and its claims.
//!
//! extnValue = the CBOR bytes themselves (no inner OCTET STRING):
//! `tag 60000([bstr quote, bstr claims])`, claims = a CBOR map with text keys and byte-string
//! values: `"pubkey-hash"` = bstr(CBOR `[hash-alg-id, hash of the SubjectPublicKeyInfo DER]`)
//! and optionally `"nonce"` and (ours) `"rtmr3-event-log"`. The quote's REPORTDATA is SHA-256(claims) followed by 32 zero
//! bytes; Intel's TDX ttls uses SHA-384(claims) followed by 16 zeros, which we also read.

use sha2::{Digest as _, Sha256, Sha384, Sha512};

use super::cbor::{self, Value};
use super::{CBOR_TAG_RATLS, RaTlsError};
use crate::encoding::hex;

pub const EVIDENCE_OID: &[u64] = &[2, 23, 133, 5, 4, 9];
pub const CLAIM_PUBKEY_HASH: &str = "pubkey-hash";
pub const CLAIM_NONCE: &str = "nonce";
/// tdx-agent's own claim: the RTMR3 event log (JSON lines) the quote's RTMR3 replays from, so
/// a client can appraise runtime events during the handshake. Other stacks ignore it.
pub const CLAIM_EVENT_LOG: &str = "rtmr3-event-log";
/// SHA-256 of the GPU evidence the agent serves beside the certificate (docs/formats.md §13).
pub const CLAIM_GPU_EVIDENCE: &str = "gpu-evidence-sha256";

/// The hash algorithms of a pubkey-hash, by their IANA "Named Information Hash Algorithm"
/// identifiers, which is what the claim carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    pub fn id(self) -> u64 {
        match self {
            HashAlg::Sha256 => 1,
            HashAlg::Sha384 => 7,
            HashAlg::Sha512 => 8,
        }
    }

    pub fn from_id(id: u64) -> Option<Self> {
        match id {
            1 => Some(HashAlg::Sha256),
            7 => Some(HashAlg::Sha384),
            8 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha384 => "SHA-384",
            HashAlg::Sha512 => "SHA-512",
        }
    }

    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// The claims the quote's REPORTDATA commits to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub pubkey_hash_alg: HashAlg,
    pub pubkey_hash: Vec<u8>,
    pub nonce: Option<Vec<u8>>,
    pub event_log: Option<Vec<u8>>,
    pub gpu_evidence_sha256: Option<[u8; 32]>,
}

impl Claims {
    /// Claims binding the key whose SubjectPublicKeyInfo is `spki_der`, hashed with `alg`.
    pub fn for_spki(alg: HashAlg, spki_der: &[u8], nonce: Option<&[u8]>) -> Self {
        Claims {
            pubkey_hash_alg: alg,
            pubkey_hash: alg.digest(spki_der),
            nonce: nonce.map(<[u8]>::to_vec),
            event_log: None,
            gpu_evidence_sha256: None,
        }
    }

    /// The same claims, also carrying the RTMR3 event log.
    pub fn with_event_log(mut self, log: &[u8]) -> Self {
        self.event_log = Some(log.to_vec());
        self
    }

    /// The same claims, also committing to the served GPU evidence by its digest.
    pub fn with_gpu_evidence(mut self, digest: Option<[u8; 32]>) -> Self {
        self.gpu_evidence_sha256 = digest;
        self
    }

    /// The claims map in deterministic CBOR (RFC 8949 §4.2.1: keys ordered by their encoded
    /// bytes, so "nonce" precedes "pubkey-hash"); these are the bytes REPORTDATA hashes.
    pub fn to_cbor(&self) -> Vec<u8> {
        let hash = cbor::encode(&Value::Array(vec![
            Value::Uint(self.pubkey_hash_alg.id()),
            Value::Bytes(self.pubkey_hash.clone()),
        ]));
        let mut entries = Vec::new();
        if let Some(n) = &self.nonce {
            entries.push((CLAIM_NONCE.to_string(), Value::Bytes(n.clone())));
        }
        entries.push((CLAIM_PUBKEY_HASH.to_string(), Value::Bytes(hash)));
        if let Some(log) = &self.event_log {
            entries.push((CLAIM_EVENT_LOG.to_string(), Value::Bytes(log.clone())));
        }
        if let Some(d) = &self.gpu_evidence_sha256 {
            entries.push((CLAIM_GPU_EVIDENCE.to_string(), Value::Bytes(d.to_vec())));
        }
        cbor::encode(&Value::Map(entries))
    }

    /// Read claims another stack wrote: any key order, extra byte-string claims ignored.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, RaTlsError> {
        let bad = |d: String| RaTlsError::Evidence(format!("claims: {d}"));
        let v = cbor::decode(bytes).map_err(|e| bad(e.to_string()))?;
        let map = v
            .as_map()
            .ok_or_else(|| bad(format!("a {} where a map belongs", v.kind())))?;
        let mut hash = None;
        let mut nonce = None;
        let mut event_log = None;
        let mut gpu_evidence_sha256 = None;
        for (key, value) in map {
            let b = value.as_bytes().ok_or_else(|| {
                bad(format!(
                    "claim {key:?} is a {}, but claim values are byte strings",
                    value.kind()
                ))
            })?;
            match key.as_str() {
                CLAIM_PUBKEY_HASH => hash = Some(b),
                CLAIM_NONCE => nonce = Some(b.to_vec()),
                CLAIM_EVENT_LOG => event_log = Some(b.to_vec()),
                CLAIM_GPU_EVIDENCE => {
                    gpu_evidence_sha256 = Some(<[u8; 32]>::try_from(b).map_err(|_| {
                        bad(format!(
                            "{CLAIM_GPU_EVIDENCE:?} is {} bytes, expected 32",
                            b.len()
                        ))
                    })?)
                }
                _ => {}
            }
        }
        let hash = hash.ok_or_else(|| bad(format!("no {CLAIM_PUBKEY_HASH:?} claim")))?;
        let inner = cbor::decode(hash).map_err(|e| bad(format!("pubkey-hash: {e}")))?;
        let (id, digest) = match inner.as_array() {
            Some([id, digest]) => (id.as_uint(), digest.as_bytes()),
            _ => (None, None),
        };
        let (Some(id), Some(digest)) = (id, digest) else {
            return Err(bad(
                "pubkey-hash is not the array [hash-alg-id, bstr digest]".into(),
            ));
        };
        let alg = HashAlg::from_id(id).ok_or_else(|| {
            bad(format!(
                "pubkey-hash uses hash algorithm id {id}; accepted: 1 (SHA-256), 7 (SHA-384), 8 (SHA-512)"
            ))
        })?;
        if digest.len() != alg.digest_len() {
            return Err(bad(format!(
                "pubkey-hash {} digest is {} bytes, expected {}",
                alg.name(),
                digest.len(),
                alg.digest_len()
            )));
        }
        Ok(Claims {
            pubkey_hash_alg: alg,
            pubkey_hash: digest.to_vec(),
            nonce,
            event_log,
            gpu_evidence_sha256,
        })
    }

    /// Does the pubkey-hash name the key whose SubjectPublicKeyInfo is `spki_der`?
    pub fn check_key(&self, spki_der: &[u8]) -> Result<(), RaTlsError> {
        let actual = self.pubkey_hash_alg.digest(spki_der);
        if actual == self.pubkey_hash {
            return Ok(());
        }
        Err(RaTlsError::KeyBinding {
            alg: self.pubkey_hash_alg.name(),
            claimed: hex(&self.pubkey_hash),
            actual: hex(&actual),
        })
    }
}

/// REPORTDATA as we write it: SHA-256(claims) || 32 zero bytes.
pub fn report_data_sha256(claims: &[u8]) -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(&Sha256::digest(claims));
    rd
}

/// REPORTDATA as Intel's TDX ttls writes it: SHA-384(claims) || 16 zero bytes.
pub fn report_data_sha384(claims: &[u8]) -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..48].copy_from_slice(&Sha384::digest(claims));
    rd
}

/// The REPORTDATA the verifier holds `quote` to: the SHA-384 form when the quote carries
/// exactly that, otherwise the SHA-256 form (so a mismatch is reported against what we
/// write ourselves).
pub fn expected_report_data(claims: &[u8], quote: &[u8]) -> [u8; 64] {
    let sha384 = report_data_sha384(claims);
    match crate::quote::parse_head_only(quote) {
        Ok((_, body)) if body.report_data == sha384 => sha384,
        _ => report_data_sha256(claims),
    }
}

/// The content of the evidence extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub quote: Vec<u8>,
    pub claims: Vec<u8>,
}

impl Evidence {
    /// The extnValue bytes: `tag 60000([bstr quote, bstr claims])`.
    pub fn to_cbor(&self) -> Vec<u8> {
        cbor::encode(&Value::Tag(
            CBOR_TAG_RATLS,
            Box::new(Value::Array(vec![
                Value::Bytes(self.quote.clone()),
                Value::Bytes(self.claims.clone()),
            ])),
        ))
    }

    pub fn from_cbor(bytes: &[u8]) -> Result<Self, RaTlsError> {
        let bad = |d: String| RaTlsError::Evidence(d);
        let inner = Value::decode_tagged(bytes, CBOR_TAG_RATLS).map_err(bad)?;
        match inner.as_array() {
            Some([Value::Bytes(quote), Value::Bytes(claims)]) => Ok(Evidence {
                quote: quote.clone(),
                claims: claims.clone(),
            }),
            _ => Err(bad(format!(
                "tag {CBOR_TAG_RATLS} holds a {} that is not [bstr quote, bstr claims]",
                inner.kind()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Claims::from_cbor(&bytes);
            let _ = Evidence::from_cbor(&bytes);
            let _ = super::super::endorsements::decode(&bytes);
            let _ = expected_report_data(&bytes, &bytes);
        }

        #[test]
        fn a_flipped_byte_in_claims_never_panics(at in 0usize..200, bit in 0u8..8) {
            let mut bytes = Claims::for_spki(HashAlg::Sha256, b"spki", Some(b"n")).to_cbor();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            let _ = Claims::from_cbor(&bytes);
        }
    }

    fn claims_value(entries: Vec<(&str, Value)>) -> Vec<u8> {
        cbor::encode(&Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ))
    }

    fn pubkey_hash(id: u64, digest: Vec<u8>) -> Value {
        Value::Bytes(cbor::encode(&Value::Array(vec![
            Value::Uint(id),
            Value::Bytes(digest),
        ])))
    }

    #[test]
    fn claims_round_trip_for_each_algorithm() {
        for alg in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
            for nonce in [None, Some(&b"n"[..])] {
                let c = Claims::for_spki(alg, b"spki", nonce);
                let back = Claims::from_cbor(&c.to_cbor()).unwrap();
                assert_eq!(back, c);
                back.check_key(b"spki").unwrap();
                let err = back.check_key(b"other").unwrap_err().to_string();
                assert!(err.contains("key binding"), "{err}");
            }
        }
    }

    #[test]
    fn claims_from_other_stacks_are_read() {
        // pubkey-hash first, an extra claim we do not know.
        let bytes = claims_value(vec![
            (CLAIM_PUBKEY_HASH, pubkey_hash(1, vec![7; 32])),
            ("vendor-extra", Value::Bytes(vec![1, 2])),
            (CLAIM_NONCE, Value::Bytes(vec![9])),
        ]);
        let c = Claims::from_cbor(&bytes).unwrap();
        assert_eq!(c.pubkey_hash, vec![7; 32]);
        assert_eq!(c.nonce, Some(vec![9]));
    }

    #[test]
    fn malformed_claims_are_named() {
        for (bytes, needle) in [
            (
                claims_value(vec![(CLAIM_PUBKEY_HASH, pubkey_hash(2, vec![0; 32]))]),
                "hash algorithm id 2",
            ),
            (
                claims_value(vec![(CLAIM_PUBKEY_HASH, pubkey_hash(1, vec![0; 31]))]),
                "31 bytes",
            ),
            (
                claims_value(vec![(CLAIM_NONCE, Value::Bytes(vec![]))]),
                "no \"pubkey-hash\"",
            ),
            (
                claims_value(vec![
                    (CLAIM_PUBKEY_HASH, pubkey_hash(1, vec![0; 32])),
                    (CLAIM_NONCE, Value::Text("n".into())),
                ]),
                "byte strings",
            ),
            (
                claims_value(vec![(CLAIM_PUBKEY_HASH, Value::Bytes(vec![0x01]))]),
                "[hash-alg-id",
            ),
            (cbor::encode(&Value::Array(vec![])), "map"),
            (vec![0xff], "CBOR"),
        ] {
            let err = Claims::from_cbor(&bytes).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn evidence_round_trips_and_refuses_other_shapes() {
        let e = Evidence {
            quote: vec![1, 2, 3],
            claims: vec![4],
        };
        let bytes = e.to_cbor();
        assert_eq!(&bytes[..3], &[0xd9, 0xea, 0x60]);
        assert_eq!(Evidence::from_cbor(&bytes).unwrap(), e);
        let untagged = cbor::encode(&Value::Array(vec![
            Value::Bytes(vec![1]),
            Value::Bytes(vec![2]),
        ]));
        assert!(Evidence::from_cbor(&untagged).is_err());
        let wrong_tag = cbor::encode(&Value::Tag(1, Box::new(Value::Array(vec![]))));
        assert!(Evidence::from_cbor(&wrong_tag).is_err());
        let three = cbor::encode(&Value::Tag(
            CBOR_TAG_RATLS,
            Box::new(Value::Array(vec![
                Value::Bytes(vec![1]),
                Value::Bytes(vec![2]),
                Value::Bytes(vec![3]),
            ])),
        ));
        assert!(Evidence::from_cbor(&three).is_err());
    }

    #[test]
    fn report_data_forms() {
        let rd = report_data_sha256(b"x");
        assert_eq!(&rd[..32], &Sha256::digest(b"x")[..]);
        assert_eq!(rd[32..], [0u8; 32]);
        let rd = report_data_sha384(b"x");
        assert_eq!(&rd[..48], &Sha384::digest(b"x")[..]);
        assert_eq!(rd[48..], [0u8; 16]);
        // Not a quote: the SHA-256 form is what the verifier then expects.
        assert_eq!(expected_report_data(b"x", b""), report_data_sha256(b"x"));
    }
}
