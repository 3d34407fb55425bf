//! OCSP (RFC 6960) for NVIDIA GPU evidence, offline: a strict DER parser of OCSP responses,
//! the judgement of a stapled response for one certificate at an explicit time, the chain-wide
//! check NVIDIA's verifier makes (device chain certificates 1..3, RIM signing chains 0..2), the
//! request a fetcher sends, and a response builder for the simulator (docs/design.md §14).
//!
//! Who may sign: RFC 6960 §4.2.2.2 allows the issuing CA itself or a delegated responder whose
//! certificate the issuing CA issued and signed directly with id-kp-OCSPSigning. NVIDIA uses
//! the second form for every certificate (e.g. `NVIDIA OCSP Responder L1-A 02`, issued by the
//! Device Identity CA, answers for `NVIDIA GH100 Identity`), so the trust anchor of a response
//! is the issuer certificate the caller passes: that issuer must already be verified up to a
//! pinned root (chain.rs for the device chain). A responder chained to NVIDIA's root by some
//! other path is deliberately not accepted: that would let any OCSP-signing certificate under
//! the root vouch for any certificate under it.

use std::ops::Range;

use p384::ecdsa::signature::{Signer as _, Verifier as _};
use sha2::{Digest as _, Sha256, Sha384};
use x509_parser::prelude::{FromDer as _, ParsedExtension, X509Certificate};

use crate::verify::time::format_unix;

// OID contents (the bytes after tag and length).
const OID_PKIX_OCSP_BASIC: &[u8] = &[0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
const OID_PKIX_OCSP_NONCE: &[u8] = &[0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
const OID_SHA1: &[u8] = &[0x2B, 0x0E, 0x03, 0x02, 0x1A];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];

const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const ENUMERATED: u8 = 0x0A;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
const CTX_0: u8 = 0xA0;
const CTX_1: u8 = 0xA1;
const CTX_2: u8 = 0xA2;
const CTX_PRIM_0: u8 = 0x80;
const CTX_PRIM_2: u8 = 0x82;

/// RFC 5280 CRLReason certificateHold: a suspension, never accepted as "not revoked".
pub const CRL_REASON_CERTIFICATE_HOLD: u8 = 6;

/// NVIDIA's answers are under 8 KiB (one SingleResponse, the responder's certificate); a
/// larger answer is refused before it is read, which bounds the work any one answer costs.
pub const MAX_OCSP_RESPONSE_LEN: usize = 64 * 1024;
/// Extensions in one Extensions list: NVIDIA's answers have none, a nonce is the one an
/// answer may need.
pub const MAX_OCSP_EXTENSIONS: usize = 16;

/// The hash of a CertID. Only SHA-256 and SHA-384 can be computed here: SHA-1 is not in our
/// dependency tree and NVIDIA's responder answers SHA-384 CertIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OcspHash {
    Sha1,
    Sha256,
    Sha384,
    Other(String),
}

impl OcspHash {
    fn from_oid(oid: &[u8]) -> Self {
        match oid {
            OID_SHA1 => Self::Sha1,
            OID_SHA256 => Self::Sha256,
            OID_SHA384 => Self::Sha384,
            other => Self::Other(oid_string(other)),
        }
    }

    fn oid(&self) -> Option<&'static [u8]> {
        match self {
            Self::Sha256 => Some(OID_SHA256),
            Self::Sha384 => Some(OID_SHA384),
            Self::Sha1 | Self::Other(_) => None,
        }
    }

    /// None where the hash is not supported.
    fn digest(&self, data: &[u8]) -> Option<Vec<u8>> {
        match self {
            Self::Sha256 => Some(Sha256::digest(data).to_vec()),
            Self::Sha384 => Some(Sha384::digest(data).to_vec()),
            Self::Sha1 | Self::Other(_) => None,
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Sha1 => "SHA-1".into(),
            Self::Sha256 => "SHA-256".into(),
            Self::Sha384 => "SHA-384".into(),
            Self::Other(oid) => oid.clone(),
        }
    }
}

/// RFC 6960 CertID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    pub hash: OcspHash,
    pub issuer_name_hash: Vec<u8>,
    pub issuer_key_hash: Vec<u8>,
    /// The INTEGER's content octets, as in the certificate.
    pub serial: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    /// `reason` is the RFC 5280 CRLReason, when the responder gave one.
    Revoked {
        time: i64,
        reason: Option<u8>,
    },
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleResponse {
    pub cert_id: CertId,
    pub status: CertStatus,
    pub this_update: i64,
    pub next_update: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponderId {
    /// The DER of the responder's Name.
    ByName(Vec<u8>),
    /// The SHA-1 of the responder's key (RFC 6960), which NVIDIA also writes as the
    /// certificate's subjectKeyIdentifier.
    ByKey(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OcspSignatureAlgorithm {
    EcdsaSha256,
    EcdsaSha384,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicOcspResponse {
    /// The DER of tbsResponseData, which the signature covers.
    pub tbs: Vec<u8>,
    pub responder_id: ResponderId,
    pub produced_at: i64,
    pub responses: Vec<SingleResponse>,
    /// The nonce extension's value, when present (NVIDIA's stapled responses have none).
    pub nonce: Option<Vec<u8>>,
    pub signature_algorithm: OcspSignatureAlgorithm,
    /// The BIT STRING's bits: a DER ECDSA-Sig-Value for the algorithms we verify.
    pub signature: Vec<u8>,
    /// The DER certificates of `certs`.
    pub certs: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OcspResponse {
    Successful(BasicOcspResponse),
    /// The responseStatus, which is all an unsuccessful response carries.
    Unsuccessful(u8),
}

/// A parsed OCSP request (what the simulator's responder needs from one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspRequest {
    pub cert_ids: Vec<CertId>,
    pub nonce: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct OcspParseError {
    pub field: &'static str,
    pub detail: String,
}

fn perr(field: &'static str, detail: impl Into<String>) -> OcspParseError {
    OcspParseError {
        field,
        detail: detail.into(),
    }
}

/// What a good answer says, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspGood {
    pub subject: String,
    /// Upper-case hex, as OpenSSL prints it.
    pub serial: String,
    /// The subject of the certificate that signed the response.
    pub responder: String,
    pub produced_at: i64,
    pub this_update: i64,
    pub next_update: Option<i64>,
}

/// Each failure names the certificate in question (`cert`: subject and serial) and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    #[error("OCSP: the {role} certificate is unreadable: {detail}")]
    Certificate { role: &'static str, detail: String },
    #[error("OCSP for {cert}: the certificate was not issued by the given issuer ({issuer})")]
    NotIssuedBy { cert: String, issuer: String },
    #[error("OCSP response for {cert}: malformed {field}: {detail}")]
    Malformed {
        cert: String,
        field: &'static str,
        detail: String,
    },
    #[error("OCSP response for {cert}: responseStatus is {status}, not successful")]
    Unsuccessful { cert: String, status: &'static str },
    #[error("OCSP response for {cert}: CertID hashAlgorithm {algorithm} is not supported")]
    UnsupportedHash { cert: String, algorithm: String },
    #[error("OCSP response for {cert}: none of its {count} responses names this certificate")]
    NotInResponse { cert: String, count: usize },
    #[error("OCSP response for {cert}: {count} responses name this certificate")]
    Ambiguous { cert: String, count: usize },
    #[error(
        "OCSP response for {cert}: responderID {responder_id} is neither the issuer nor a certificate in the response"
    )]
    ResponderNotFound { cert: String, responder_id: String },
    #[error("OCSP response for {cert}: signatureAlgorithm {algorithm} is not supported")]
    UnsupportedSignature { cert: String, algorithm: String },
    #[error(
        "OCSP response for {cert}: signature does not verify with the key of {responder}: {detail}"
    )]
    Signature {
        cert: String,
        responder: String,
        detail: &'static str,
    },
    #[error("OCSP response for {cert}: responder certificate {responder} is not authorised: {why}")]
    ResponderNotAuthorized {
        cert: String,
        responder: String,
        why: &'static str,
    },
    #[error(
        "OCSP response for {cert}: responder certificate {responder} is not valid at {at} (valid {not_before} .. {not_after})"
    )]
    ResponderValidity {
        cert: String,
        responder: String,
        at: String,
        not_before: String,
        not_after: String,
    },
    #[error("OCSP response for {cert}: certStatus revoked at {time}, reason {reason}")]
    Revoked {
        cert: String,
        time: String,
        reason: String,
    },
    #[error(
        "OCSP response for {cert}: certStatus revoked at {time} with reason certificateHold (6): a held certificate is not accepted"
    )]
    OnHold { cert: String, time: String },
    #[error("OCSP response for {cert}: certStatus unknown")]
    Unknown { cert: String },
    #[error(
        "OCSP response for {cert}: thisUpdate {this_update} is after the verification time {at} (a response from the future)"
    )]
    NotYetValid {
        cert: String,
        this_update: String,
        at: String,
    },
    #[error(
        "OCSP response for {cert}: thisUpdate {this_update} is more than {max_age_secs} s before the verification time {at}"
    )]
    Stale {
        cert: String,
        this_update: String,
        at: String,
        max_age_secs: u64,
    },
    #[error(
        "OCSP response for {cert}: nextUpdate {next_update} is before the verification time {at}"
    )]
    Expired {
        cert: String,
        next_update: String,
        at: String,
    },
    #[error("OCSP for {cert}: no stapled response names this certificate")]
    MissingResponse { cert: String },
    #[error("OCSP for {cert}: the chain has no issuer certificate after it")]
    NoIssuer { cert: String },
    #[error("OCSP: the chain has {len} certificates, no certificate {index}")]
    NoCertificate { index: usize, len: usize },
    #[error("OCSP: cannot encode {field}: {detail}")]
    Encode { field: &'static str, detail: String },
}

// ---------------------------------------------------------------------------------------------
// A bounded DER reader: definite, minimal lengths; low tag numbers; never reads past its slice.

#[derive(Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
    raw: &'a [u8],
}

struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn next(&mut self, field: &'static str) -> Result<Tlv<'a>, OcspParseError> {
        let input = self.0;
        let (&tag, rest) = input.split_first().ok_or_else(|| perr(field, "missing"))?;
        if tag & 0x1F == 0x1F {
            return Err(perr(field, "high tag number form (not used by OCSP)"));
        }
        let (&first, rest) = rest
            .split_first()
            .ok_or_else(|| perr(field, "no length octet"))?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7F);
            if n == 0 {
                return Err(perr(field, "indefinite length (not DER)"));
            }
            if n > 4 {
                return Err(perr(field, "length of more than four octets"));
            }
            let (octets, rest) = rest
                .split_at_checked(n)
                .ok_or_else(|| perr(field, "truncated length"))?;
            if octets.first() == Some(&0) {
                return Err(perr(field, "length with a leading zero octet (not DER)"));
            }
            let len = octets
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if len < 0x80 {
                return Err(perr(field, "long form for a short length (not DER)"));
            }
            (len, rest)
        };
        let header = input.len().saturating_sub(rest.len());
        let (value, after) = rest
            .split_at_checked(len)
            .ok_or_else(|| perr(field, format!("length {len} beyond the input")))?;
        let raw = input
            .get(..header.saturating_add(len))
            .ok_or_else(|| perr(field, "length beyond the input"))?;
        self.0 = after;
        Ok(Tlv { tag, value, raw })
    }

    fn expect(&mut self, tag: u8, field: &'static str) -> Result<Tlv<'a>, OcspParseError> {
        let tlv = self.next(field)?;
        if tlv.tag != tag {
            return Err(perr(
                field,
                format!("tag {:#04x}, expected {tag:#04x}", tlv.tag),
            ));
        }
        Ok(tlv)
    }

    fn sequence(&mut self, field: &'static str) -> Result<Der<'a>, OcspParseError> {
        self.expect(SEQUENCE, field).map(|t| Der(t.value))
    }

    fn optional(
        &mut self,
        tag: u8,
        field: &'static str,
    ) -> Result<Option<Tlv<'a>>, OcspParseError> {
        if self.0.first() == Some(&tag) {
            self.expect(tag, field).map(Some)
        } else {
            Ok(None)
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn end(&self, field: &'static str) -> Result<(), OcspParseError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(perr(field, format!("{} trailing bytes", self.0.len())))
        }
    }
}

/// The content octets of a DER INTEGER or ENUMERATED, checked to be minimal.
fn integer_content<'a>(tlv: Tlv<'a>, field: &'static str) -> Result<&'a [u8], OcspParseError> {
    match tlv.value {
        [] => Err(perr(field, "empty integer")),
        [0x00, next, ..] if *next < 0x80 => Err(perr(field, "integer not minimal (not DER)")),
        [0xFF, next, ..] if *next >= 0x80 => Err(perr(field, "integer not minimal (not DER)")),
        value => Ok(value),
    }
}

/// A small non-negative INTEGER or ENUMERATED (versions, statuses, reasons).
fn small_uint(tlv: Tlv<'_>, field: &'static str) -> Result<u8, OcspParseError> {
    match integer_content(tlv, field)? {
        [v] if *v < 0x80 => Ok(*v),
        [0x00, v] => Ok(*v),
        _ => Err(perr(field, "value out of range")),
    }
}

/// GeneralizedTime as RFC 5280 profiles it: `YYYYMMDDHHMMSSZ`, no fraction.
fn generalized_time(tlv: Tlv<'_>, field: &'static str) -> Result<i64, OcspParseError> {
    if tlv.tag != GENERALIZED_TIME {
        return Err(perr(field, "not a GeneralizedTime"));
    }
    let text = tlv.value;
    if text.len() != 15 || text.last() != Some(&b'Z') {
        return Err(perr(field, "not of the form YYYYMMDDHHMMSSZ"));
    }
    let digits = text.get(..14).unwrap_or_default();
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(perr(field, "not of the form YYYYMMDDHHMMSSZ"));
    }
    let num = |from: usize, to: usize| -> u32 {
        digits
            .get(from..to)
            .unwrap_or_default()
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let bad = |_| perr(field, "not a valid date and time");
    let year = i32::try_from(num(0, 4)).map_err(|_| perr(field, "year"))?;
    let month = time::Month::try_from(u8::try_from(num(4, 6)).map_err(|_| perr(field, "month"))?)
        .map_err(bad)?;
    let to_u8 = |v: u32| u8::try_from(v).map_err(|_| perr(field, "not a valid date and time"));
    let date = time::Date::from_calendar_date(year, month, to_u8(num(6, 8))?).map_err(bad)?;
    let clock = time::Time::from_hms(to_u8(num(8, 10))?, to_u8(num(10, 12))?, to_u8(num(12, 14))?)
        .map_err(bad)?;
    Ok(time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp())
}

/// Dotted form of an OID's content octets, for error messages.
fn oid_string(content: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for b in content {
        acc = match acc.checked_mul(128) {
            Some(v) => v | u64::from(b & 0x7F),
            None => return format!("OID {}", hex::encode(content)),
        };
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc.saturating_sub(first * 40));
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// AlgorithmIdentifier: the OID's content and the parameters, if any.
fn algorithm<'a>(
    der: &mut Der<'a>,
    field: &'static str,
) -> Result<(&'a [u8], Option<Tlv<'a>>), OcspParseError> {
    let mut seq = der.sequence(field)?;
    let oid = seq.expect(OID, field)?.value;
    let params = if seq.is_empty() {
        None
    } else {
        Some(seq.next(field)?)
    };
    seq.end(field)?;
    Ok((oid, params))
}

fn cert_id(der: &mut Der<'_>) -> Result<CertId, OcspParseError> {
    let mut seq = der.sequence("certID")?;
    let (oid, params) = algorithm(&mut seq, "certID.hashAlgorithm")?;
    // RFC 5754 omits SHA-2 parameters; NVIDIA and OpenSSL write NULL. Both mean "none".
    if let Some(p) = params
        && (p.tag != NULL || !p.value.is_empty())
    {
        return Err(perr("certID.hashAlgorithm", "parameters other than NULL"));
    }
    let hash = OcspHash::from_oid(oid);
    let issuer_name_hash = seq
        .expect(OCTET_STRING, "certID.issuerNameHash")?
        .value
        .to_vec();
    let issuer_key_hash = seq
        .expect(OCTET_STRING, "certID.issuerKeyHash")?
        .value
        .to_vec();
    let serial = integer_content(
        seq.expect(INTEGER, "certID.serialNumber")?,
        "certID.serialNumber",
    )?
    .to_vec();
    seq.end("certID")?;
    Ok(CertId {
        hash,
        issuer_name_hash,
        issuer_key_hash,
        serial,
    })
}

/// Extensions: the nonce's value, if present; an unrecognised critical extension is refused
/// (RFC 5280 §4.2 semantics), and so is a repeated one.
fn extensions(tlv: Tlv<'_>, field: &'static str) -> Result<Option<Vec<u8>>, OcspParseError> {
    let mut outer = Der(tlv.value);
    let mut list = outer.sequence(field)?;
    outer.end(field)?;
    if list.is_empty() {
        return Err(perr(field, "empty Extensions (SIZE 1..MAX)"));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut nonce = None;
    while !list.is_empty() {
        if seen.len() >= MAX_OCSP_EXTENSIONS {
            return Err(perr(
                field,
                format!("more than {MAX_OCSP_EXTENSIONS} extensions"),
            ));
        }
        let mut ext = list.sequence(field)?;
        let oid = ext.expect(OID, field)?.value;
        // DER omits the DEFAULT FALSE; an explicit FALSE is tolerated (no security meaning).
        let critical = match ext.optional(BOOLEAN, field)? {
            None => false,
            Some(b) => match b.value {
                [0x00] => false,
                [0xFF] => true,
                _ => return Err(perr(field, "critical is not a DER BOOLEAN")),
            },
        };
        let value = ext.expect(OCTET_STRING, field)?.value;
        ext.end(field)?;
        if !seen.insert(oid) {
            return Err(perr(
                field,
                format!("extension {} repeated", oid_string(oid)),
            ));
        }
        if oid == OID_PKIX_OCSP_NONCE {
            nonce = Some(value.to_vec());
        } else if critical {
            return Err(perr(
                field,
                format!("unrecognised critical extension {}", oid_string(oid)),
            ));
        }
    }
    Ok(nonce)
}

fn single_response(der: &mut Der<'_>) -> Result<SingleResponse, OcspParseError> {
    let mut seq = der.sequence("SingleResponse")?;
    let cert_id = cert_id(&mut seq)?;
    let status_tlv = seq.next("certStatus")?;
    let status = match status_tlv.tag {
        CTX_PRIM_0 if status_tlv.value.is_empty() => CertStatus::Good,
        CTX_PRIM_2 if status_tlv.value.is_empty() => CertStatus::Unknown,
        CTX_1 => {
            let mut info = Der(status_tlv.value);
            let time = generalized_time(
                info.next("certStatus.revoked.revocationTime")?,
                "certStatus.revoked.revocationTime",
            )?;
            let reason = match info.optional(CTX_0, "certStatus.revoked.revocationReason")? {
                None => None,
                Some(r) => {
                    let mut inner = Der(r.value);
                    let v = small_uint(
                        inner.expect(ENUMERATED, "certStatus.revoked.revocationReason")?,
                        "certStatus.revoked.revocationReason",
                    )?;
                    inner.end("certStatus.revoked.revocationReason")?;
                    Some(v)
                }
            };
            info.end("certStatus.revoked")?;
            CertStatus::Revoked { time, reason }
        }
        _ => return Err(perr("certStatus", "neither good, revoked nor unknown")),
    };
    let this_update = generalized_time(seq.next("thisUpdate")?, "thisUpdate")?;
    let next_update = match seq.optional(CTX_0, "nextUpdate")? {
        None => None,
        Some(t) => {
            let mut inner = Der(t.value);
            let v = generalized_time(inner.next("nextUpdate")?, "nextUpdate")?;
            inner.end("nextUpdate")?;
            Some(v)
        }
    };
    if let Some(ext) = seq.optional(CTX_1, "singleExtensions")? {
        extensions(ext, "singleExtensions")?;
    }
    seq.end("SingleResponse")?;
    Ok(SingleResponse {
        cert_id,
        status,
        this_update,
        next_update,
    })
}

/// Parse a DER OCSPResponse of at most [`MAX_OCSP_RESPONSE_LEN`] bytes. Strict: every
/// length, tag and trailing byte is checked.
pub fn parse_ocsp_response(der: &[u8]) -> Result<OcspResponse, OcspParseError> {
    if der.len() > MAX_OCSP_RESPONSE_LEN {
        return Err(perr(
            "OCSPResponse",
            format!(
                "{} bytes, more than the {MAX_OCSP_RESPONSE_LEN} an answer may have",
                der.len()
            ),
        ));
    }
    let mut top = Der(der);
    let mut resp = top.sequence("OCSPResponse")?;
    top.end("OCSPResponse")?;
    let status = small_uint(resp.expect(ENUMERATED, "responseStatus")?, "responseStatus")?;
    let bytes = resp.optional(CTX_0, "responseBytes")?;
    resp.end("OCSPResponse")?;
    let bytes = match (status, bytes) {
        (0, Some(b)) => b,
        (0, None) => return Err(perr("responseBytes", "missing in a successful response")),
        (s, None) => return Ok(OcspResponse::Unsuccessful(s)),
        (_, Some(_)) => {
            return Err(perr("responseBytes", "present in an unsuccessful response"));
        }
    };
    let mut explicit = Der(bytes.value);
    let mut rb = explicit.sequence("responseBytes")?;
    explicit.end("responseBytes")?;
    let kind = rb.expect(OID, "responseBytes.responseType")?.value;
    if kind != OID_PKIX_OCSP_BASIC {
        return Err(perr(
            "responseBytes.responseType",
            format!("{} is not id-pkix-ocsp-basic", oid_string(kind)),
        ));
    }
    let basic_der = rb.expect(OCTET_STRING, "responseBytes.response")?.value;
    rb.end("responseBytes")?;
    parse_basic(basic_der).map(OcspResponse::Successful)
}

fn parse_basic(der: &[u8]) -> Result<BasicOcspResponse, OcspParseError> {
    let mut top = Der(der);
    let mut basic = top.sequence("BasicOCSPResponse")?;
    top.end("BasicOCSPResponse")?;

    let tbs_tlv = basic.expect(SEQUENCE, "tbsResponseData")?;
    let mut tbs = Der(tbs_tlv.value);
    if let Some(v) = tbs.optional(CTX_0, "tbsResponseData.version")? {
        // DER omits the DEFAULT v1; an explicit v1 is tolerated, any other version refused.
        let mut inner = Der(v.value);
        let version = small_uint(
            inner.expect(INTEGER, "tbsResponseData.version")?,
            "tbsResponseData.version",
        )?;
        inner.end("tbsResponseData.version")?;
        if version != 0 {
            return Err(perr(
                "tbsResponseData.version",
                format!("v{} (only v1 exists)", u16::from(version) + 1),
            ));
        }
    }
    let rid = tbs.next("responderID")?;
    let responder_id = match rid.tag {
        CTX_1 => {
            let mut inner = Der(rid.value);
            let name = inner.expect(SEQUENCE, "responderID.byName")?;
            inner.end("responderID.byName")?;
            ResponderId::ByName(name.raw.to_vec())
        }
        CTX_2 => {
            let mut inner = Der(rid.value);
            let key = inner.expect(OCTET_STRING, "responderID.byKey")?;
            inner.end("responderID.byKey")?;
            ResponderId::ByKey(key.value.to_vec())
        }
        _ => return Err(perr("responderID", "neither byName nor byKey")),
    };
    let produced_at = generalized_time(tbs.next("producedAt")?, "producedAt")?;
    let mut list = tbs.sequence("responses")?;
    let mut responses = Vec::new();
    while !list.is_empty() {
        responses.push(single_response(&mut list)?);
    }
    let nonce = match tbs.optional(CTX_1, "responseExtensions")? {
        Some(ext) => extensions(ext, "responseExtensions")?,
        None => None,
    };
    tbs.end("tbsResponseData")?;

    let (oid, params) = algorithm(&mut basic, "signatureAlgorithm")?;
    let signature_algorithm = match (oid, params) {
        (OID_ECDSA_SHA256, None) => OcspSignatureAlgorithm::EcdsaSha256,
        (OID_ECDSA_SHA384, None) => OcspSignatureAlgorithm::EcdsaSha384,
        (OID_ECDSA_SHA256 | OID_ECDSA_SHA384, Some(_)) => {
            return Err(perr(
                "signatureAlgorithm",
                "ECDSA with parameters (RFC 5758 omits them)",
            ));
        }
        (other, _) => OcspSignatureAlgorithm::Other(oid_string(other)),
    };
    let bits = basic.expect(BIT_STRING, "signature")?.value;
    let signature = match bits.split_first() {
        Some((0, rest)) => rest.to_vec(),
        _ => return Err(perr("signature", "BIT STRING with unused bits or empty")),
    };
    let mut certs = Vec::new();
    if let Some(c) = basic.optional(CTX_0, "certs")? {
        let mut explicit = Der(c.value);
        let mut list = explicit.sequence("certs")?;
        explicit.end("certs")?;
        while !list.is_empty() {
            certs.push(list.expect(SEQUENCE, "certs")?.raw.to_vec());
        }
    }
    basic.end("BasicOCSPResponse")?;
    Ok(BasicOcspResponse {
        tbs: tbs_tlv.raw.to_vec(),
        responder_id,
        produced_at,
        responses,
        nonce,
        signature_algorithm,
        signature,
        certs,
    })
}

/// Parse a DER OCSPRequest (unsigned; a signed request is refused).
pub fn parse_ocsp_request(der: &[u8]) -> Result<OcspRequest, OcspParseError> {
    let mut top = Der(der);
    let mut req = top.sequence("OCSPRequest")?;
    top.end("OCSPRequest")?;
    let mut tbs = req.sequence("tbsRequest")?;
    if req.optional(CTX_0, "optionalSignature")?.is_some() {
        return Err(perr(
            "optionalSignature",
            "signed requests are not supported",
        ));
    }
    req.end("OCSPRequest")?;
    if let Some(v) = tbs.optional(CTX_0, "tbsRequest.version")? {
        let mut inner = Der(v.value);
        let version = small_uint(
            inner.expect(INTEGER, "tbsRequest.version")?,
            "tbsRequest.version",
        )?;
        inner.end("tbsRequest.version")?;
        if version != 0 {
            return Err(perr("tbsRequest.version", "only v1 exists"));
        }
    }
    tbs.optional(CTX_1, "tbsRequest.requestorName")?;
    let mut list = tbs.sequence("requestList")?;
    let mut cert_ids = Vec::new();
    while !list.is_empty() {
        let mut request = list.sequence("Request")?;
        cert_ids.push(cert_id(&mut request)?);
        if let Some(ext) = request.optional(CTX_0, "singleRequestExtensions")? {
            extensions(ext, "singleRequestExtensions")?;
        }
        request.end("Request")?;
    }
    let nonce = match tbs.optional(CTX_2, "requestExtensions")? {
        Some(ext) => extensions(ext, "requestExtensions")?,
        None => None,
    };
    tbs.end("tbsRequest")?;
    Ok(OcspRequest { cert_ids, nonce })
}

// ---------------------------------------------------------------------------------------------
// Judging a response.

fn response_status_name(status: u8) -> &'static str {
    match status {
        0 => "successful",
        1 => "malformedRequest",
        2 => "internalError",
        3 => "tryLater",
        5 => "sigRequired",
        6 => "unauthorized",
        _ => "an undefined value",
    }
}

fn crl_reason_name(reason: Option<u8>) -> String {
    let name = match reason {
        None => return "not given".into(),
        Some(0) => "unspecified",
        Some(1) => "keyCompromise",
        Some(2) => "cACompromise",
        Some(3) => "affiliationChanged",
        Some(4) => "superseded",
        Some(5) => "cessationOfOperation",
        Some(6) => "certificateHold",
        Some(8) => "removeFromCRL",
        Some(9) => "privilegeWithdrawn",
        Some(10) => "aACompromise",
        Some(_) => "undefined",
    };
    format!("{name} ({})", reason.unwrap_or_default())
}

/// Upper-case hex of a serial, without the sign octet DER adds to a positive value.
fn serial_hex(raw: &[u8]) -> String {
    let trimmed = match raw {
        [0x00, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    hex::encode_upper(trimmed)
}

/// The outer frame of a certificate, which its signature does not cover: exact DER, and the
/// outer signatureAlgorithm equal to the signed one (RFC 5280 §4.1.1.2), no unused bits in the
/// signature. x509-parser accepts an altered OID tag there and ignores the unused-bits octet,
/// so a responder certificate could be changed without its signature noticing.
fn certificate_frame(der: &[u8]) -> Result<(), OcspParseError> {
    let mut top = Der(der);
    let mut cert = top.sequence("Certificate")?;
    top.end("Certificate")?;
    let mut tbs = cert.sequence("tbsCertificate")?;
    let outer_algorithm = cert.expect(SEQUENCE, "signatureAlgorithm")?;
    let value = cert.expect(BIT_STRING, "signatureValue")?;
    if value.value.first() != Some(&0) {
        return Err(perr(
            "signatureValue",
            "BIT STRING with unused bits or empty",
        ));
    }
    cert.end("Certificate")?;
    tbs.optional(CTX_0, "tbsCertificate.version")?;
    tbs.expect(INTEGER, "tbsCertificate.serialNumber")?;
    let inner_algorithm = tbs.expect(SEQUENCE, "tbsCertificate.signature")?;
    if inner_algorithm.raw != outer_algorithm.raw {
        return Err(perr(
            "signatureAlgorithm",
            "differs from tbsCertificate.signature",
        ));
    }
    Ok(())
}

fn parse_cert<'a>(der: &'a [u8], role: &'static str) -> Result<X509Certificate<'a>, OcspError> {
    certificate_frame(der).map_err(|e| OcspError::Certificate {
        role,
        detail: e.to_string(),
    })?;
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(OcspError::Certificate {
            role,
            detail: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(OcspError::Certificate {
            role,
            detail: e.to_string(),
        }),
    }
}

fn describe(cert: &X509Certificate<'_>) -> String {
    format!(
        "{} (serial {})",
        cert.subject(),
        serial_hex(cert.raw_serial())
    )
}

fn subject_key_id<'a>(cert: &X509Certificate<'a>) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
            _ => None,
        })
}

/// The DER ECDSA-Sig-Value as fixed-width `r‖s`, refusing non-minimal or oversized integers.
fn ecdsa_fixed(sig: &[u8], width: usize) -> Option<Vec<u8>> {
    let mut top = Der(sig);
    let mut seq = top.sequence("signature").ok()?;
    top.end("signature").ok()?;
    let mut out = Vec::with_capacity(width * 2);
    for _ in 0..2 {
        let int = integer_content(seq.expect(INTEGER, "signature").ok()?, "signature").ok()?;
        let magnitude = match int {
            [first, ..] if *first >= 0x80 => return None,
            [0x00, rest @ ..] => rest,
            other => other,
        };
        let pad = width.checked_sub(magnitude.len())?;
        out.extend(std::iter::repeat_n(0u8, pad));
        out.extend_from_slice(magnitude);
    }
    seq.end("signature").ok()?;
    Some(out)
}

enum SignatureProblem {
    Unsupported(String),
    Mismatch(&'static str),
}

fn verify_response_signature(
    basic: &BasicOcspResponse,
    signer: &X509Certificate<'_>,
) -> Result<(), SignatureProblem> {
    let point = &signer.public_key().subject_public_key.data;
    match &basic.signature_algorithm {
        OcspSignatureAlgorithm::EcdsaSha384 => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| {
                SignatureProblem::Unsupported(
                    "ecdsa-with-SHA384 with a key that is not P-384".into(),
                )
            })?;
            let fixed = ecdsa_fixed(&basic.signature, 48).ok_or(SignatureProblem::Mismatch(
                "not a DER P-384 ECDSA signature",
            ))?;
            let sig = p384::ecdsa::Signature::from_slice(&fixed)
                .map_err(|_| SignatureProblem::Mismatch("r or s out of range"))?;
            if super::p384_sha384::verifies(&key, &basic.tbs, &sig) {
                Ok(())
            } else {
                Err(SignatureProblem::Mismatch("ECDSA verification failed"))
            }
        }
        OcspSignatureAlgorithm::EcdsaSha256 => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| {
                SignatureProblem::Unsupported(
                    "ecdsa-with-SHA256 with a key that is not P-256".into(),
                )
            })?;
            let fixed = ecdsa_fixed(&basic.signature, 32).ok_or(SignatureProblem::Mismatch(
                "not a DER P-256 ECDSA signature",
            ))?;
            let sig = p256::ecdsa::Signature::from_slice(&fixed)
                .map_err(|_| SignatureProblem::Mismatch("r or s out of range"))?;
            key.verify(&basic.tbs, &sig)
                .map_err(|_| SignatureProblem::Mismatch("ECDSA verification failed"))
        }
        OcspSignatureAlgorithm::Other(oid) => Err(SignatureProblem::Unsupported(oid.clone())),
    }
}

fn responder_id_text(id: &ResponderId) -> String {
    match id {
        ResponderId::ByName(name) => match x509_parser::x509::X509Name::from_der(name) {
            Ok((_, n)) => format!("byName {n}"),
            Err(_) => format!("byName {}", hex::encode(name)),
        },
        ResponderId::ByKey(key) => format!("byKey {}", hex::encode_upper(key)),
    }
}

/// What authenticating a response establishes, independent of the time: who signed it (the
/// issuer, or a responder it delegated to) and when that signer is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    subject: String,
    responder: String,
    not_before: i64,
    not_after: i64,
}

/// Remembers [`Authenticated`] verdicts by the digest of (response, certificate, issuer):
/// the signature checks are the costly part of revocation, and the same answers are stapled
/// for every GPU of a server and every rotation.
pub trait OcspMemo {
    fn authenticated(
        &self,
        key: [u8; 32],
        compute: &mut dyn FnMut() -> Result<Authenticated, OcspError>,
    ) -> Result<Authenticated, OcspError>;
}

/// No memory: every check verifies every signature.
pub struct NoMemo;

impl OcspMemo for NoMemo {
    fn authenticated(
        &self,
        _key: [u8; 32],
        compute: &mut dyn FnMut() -> Result<Authenticated, OcspError>,
    ) -> Result<Authenticated, OcspError> {
        compute()
    }
}

/// The signer must be valid at `at`; returns its subject.
fn signer_valid_at(a: &Authenticated, cert: &str, at: i64) -> Result<String, OcspError> {
    if at < a.not_before || at > a.not_after {
        return Err(OcspError::ResponderValidity {
            cert: cert.to_owned(),
            responder: a.responder.clone(),
            at: format_unix(at),
            not_before: format_unix(a.not_before),
            not_after: format_unix(a.not_after),
        });
    }
    Ok(a.subject.clone())
}

/// Find the certificate that signed the response and check it may answer for `issuer`'s
/// certificates (everything but the time: see [`signer_valid_at`]).
fn authenticate(
    basic: &BasicOcspResponse,
    issuer: &X509Certificate<'_>,
    cert: &str,
) -> Result<Authenticated, OcspError> {
    let included = basic
        .certs
        .iter()
        .map(|der| {
            parse_cert(der, "responder").map_err(|e| OcspError::Malformed {
                cert: cert.to_owned(),
                field: "certs",
                detail: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // byKey is matched against the subjectKeyIdentifier (RFC 5280 method 1 makes them equal,
    // and NVIDIA's are): SHA-1, which would recompute it, is not in our tree.
    let named = |c: &X509Certificate<'_>| match &basic.responder_id {
        ResponderId::ByName(name) => c.subject().as_raw() == name.as_slice(),
        ResponderId::ByKey(key) => subject_key_id(c) == Some(key.as_slice()),
    };
    let signer_is_issuer = named(issuer);
    let signer = if signer_is_issuer {
        issuer
    } else {
        included
            .iter()
            .find(|c| named(c))
            .ok_or_else(|| OcspError::ResponderNotFound {
                cert: cert.to_owned(),
                responder_id: responder_id_text(&basic.responder_id),
            })?
    };
    let responder = describe(signer);
    verify_response_signature(basic, signer).map_err(|p| match p {
        SignatureProblem::Unsupported(algorithm) => OcspError::UnsupportedSignature {
            cert: cert.to_owned(),
            algorithm,
        },
        SignatureProblem::Mismatch(detail) => OcspError::Signature {
            cert: cert.to_owned(),
            responder: responder.clone(),
            detail,
        },
    })?;
    if !signer_is_issuer {
        let refuse = |why| OcspError::ResponderNotAuthorized {
            cert: cert.to_owned(),
            responder: responder.clone(),
            why,
        };
        if signer.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(refuse(
                "not issued by the CA that issued the certificate (RFC 6960 §4.2.2.2)",
            ));
        }
        if signer.verify_signature(Some(issuer.public_key())).is_err() {
            return Err(refuse(
                "its signature does not verify with the issuing CA's key",
            ));
        }
        match signer.extended_key_usage() {
            Ok(Some(eku)) if eku.value.ocsp_signing => {}
            Ok(_) => return Err(refuse("no id-kp-OCSPSigning extended key usage")),
            Err(_) => return Err(refuse("unreadable extended key usage")),
        }
        match signer.key_usage() {
            Ok(None) => {}
            Ok(Some(ku)) if ku.value.digital_signature() => {}
            Ok(Some(_)) => return Err(refuse("key usage without digitalSignature")),
            Err(_) => return Err(refuse("unreadable key usage")),
        }
    }
    let validity = signer.validity();
    Ok(Authenticated {
        subject: signer.subject().to_string(),
        responder,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// Judge the stapled `response_der` for `cert_der` (issued by `issuer_der`) at `at` (Unix
/// seconds): successful, exactly one SingleResponse for this certificate, signed by the issuer
/// or by a responder it delegated to and valid at `at`, status good, `thisUpdate` not after
/// `at` and at most `max_age_secs` before it, `nextUpdate` (if any) not before `at`.
///
/// `issuer_der` is the trust anchor of the answer, so it must be the certificate the chain
/// check accepted (for the device chain's last link, the pinned root, not the GPU's copy).
pub fn check_ocsp(
    response_der: &[u8],
    cert_der: &[u8],
    issuer_der: &[u8],
    at: i64,
    max_age_secs: u64,
) -> Result<OcspGood, OcspError> {
    check_ocsp_memo(
        response_der,
        cert_der,
        issuer_der,
        at,
        max_age_secs,
        &NoMemo,
    )
}

/// [`check_ocsp`], with the signature verdicts remembered in `memo`.
pub fn check_ocsp_memo(
    response_der: &[u8],
    cert_der: &[u8],
    issuer_der: &[u8],
    at: i64,
    max_age_secs: u64,
    memo: &dyn OcspMemo,
) -> Result<OcspGood, OcspError> {
    let cert = parse_cert(cert_der, "checked")?;
    let issuer = parse_cert(issuer_der, "issuer")?;
    let subject = Subject::new(cert_der, &cert, issuer_der, &issuer);
    judge(
        &Stapled::parse(response_der),
        &subject,
        at,
        max_age_secs,
        memo,
    )
}

/// A stapled answer and what parsing it gave, so that an appraisal reads each answer once
/// however many certificates it is tried for.
pub struct Stapled<'a> {
    der: &'a [u8],
    parsed: Result<OcspResponse, OcspParseError>,
}

impl<'a> Stapled<'a> {
    pub fn parse(der: &'a [u8]) -> Self {
        Self {
            der,
            parsed: parse_ocsp_response(der),
        }
    }

    /// Every answer of `responses`, parsed.
    pub fn parse_all(responses: &'a [Vec<u8>]) -> Vec<Self> {
        responses.iter().map(|r| Self::parse(r)).collect()
    }
}

/// The certificate an answer is judged for, with its issuer, and the CertID hashes that name
/// it, computed once rather than for every SingleResponse of every answer.
struct Subject<'c, 'd> {
    cert_der: &'d [u8],
    cert: &'c X509Certificate<'d>,
    issuer_der: &'d [u8],
    issuer: &'c X509Certificate<'d>,
    name: String,
    /// (hash, issuerNameHash, issuerKeyHash) for each hash we can compute.
    hashes: Vec<(OcspHash, Vec<u8>, Vec<u8>)>,
}

impl<'c, 'd> Subject<'c, 'd> {
    fn new(
        cert_der: &'d [u8],
        cert: &'c X509Certificate<'d>,
        issuer_der: &'d [u8],
        issuer: &'c X509Certificate<'d>,
    ) -> Self {
        let hashes = [OcspHash::Sha256, OcspHash::Sha384]
            .into_iter()
            .filter_map(|h| {
                let name = h.digest(issuer.subject().as_raw())?;
                let key = h.digest(&issuer.public_key().subject_public_key.data)?;
                Some((h, name, key))
            })
            .collect();
        Self {
            cert_der,
            cert,
            issuer_der,
            issuer,
            name: describe(cert),
            hashes,
        }
    }

    /// Does `id` name this certificate? None when its hash cannot be computed here.
    fn named_by(&self, id: &CertId) -> Option<bool> {
        let (_, name_hash, key_hash) = self.hashes.iter().find(|(h, ..)| *h == id.hash)?;
        Some(
            id.serial == self.cert.raw_serial()
                && id.issuer_name_hash == *name_hash
                && id.issuer_key_hash == *key_hash,
        )
    }

    /// Why `answer` says nothing about this certificate: it is unreadable, unsuccessful, or
    /// names certificates only by a hash we cannot compute. None for a readable answer
    /// about other certificates.
    fn unusable(&self, answer: &Stapled<'_>) -> Option<OcspError> {
        match &answer.parsed {
            Err(e) => Some(OcspError::Malformed {
                cert: self.name.clone(),
                field: e.field,
                detail: e.detail.clone(),
            }),
            Ok(OcspResponse::Unsuccessful(s)) => Some(OcspError::Unsuccessful {
                cert: self.name.clone(),
                status: response_status_name(*s),
            }),
            Ok(OcspResponse::Successful(basic)) => basic
                .responses
                .iter()
                .find(|s| self.named_by(&s.cert_id).is_none())
                .map(|s| OcspError::UnsupportedHash {
                    cert: self.name.clone(),
                    algorithm: s.cert_id.hash.name(),
                }),
        }
    }

    /// Whether `answer` is readable and has a SingleResponse for this certificate.
    fn answered_by(&self, answer: &Stapled<'_>) -> bool {
        match &answer.parsed {
            Ok(OcspResponse::Successful(basic)) => basic
                .responses
                .iter()
                .any(|s| self.named_by(&s.cert_id) == Some(true)),
            _ => false,
        }
    }
}

/// The judgement of [`check_ocsp`] on an answer already parsed.
fn judge(
    answer: &Stapled<'_>,
    subject: &Subject<'_, '_>,
    at: i64,
    max_age_secs: u64,
    memo: &dyn OcspMemo,
) -> Result<OcspGood, OcspError> {
    let (cert, issuer) = (subject.cert, subject.issuer);
    let name = subject.name.clone();
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(OcspError::NotIssuedBy {
            cert: name,
            issuer: issuer.subject().to_string(),
        });
    }
    let basic = match &answer.parsed {
        Ok(OcspResponse::Successful(b)) => b,
        Ok(OcspResponse::Unsuccessful(s)) => {
            return Err(OcspError::Unsuccessful {
                cert: name,
                status: response_status_name(*s),
            });
        }
        Err(e) => {
            return Err(OcspError::Malformed {
                cert: name,
                field: e.field,
                detail: e.detail.clone(),
            });
        }
    };

    let mut unsupported = None;
    let mut matching = Vec::new();
    for single in &basic.responses {
        match subject.named_by(&single.cert_id) {
            Some(true) => matching.push(single),
            Some(false) => {}
            None => unsupported = Some(single.cert_id.hash.name()),
        }
    }
    let single = match matching.as_slice() {
        [one] => *one,
        [] => {
            return Err(match unsupported {
                Some(algorithm) => OcspError::UnsupportedHash {
                    cert: name,
                    algorithm,
                },
                None => OcspError::NotInResponse {
                    cert: name,
                    count: basic.responses.len(),
                },
            });
        }
        more => {
            return Err(OcspError::Ambiguous {
                cert: name,
                count: more.len(),
            });
        }
    };

    let key = {
        let mut h = Sha256::new();
        for part in [answer.der, subject.cert_der, subject.issuer_der] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    };
    let authenticated = memo.authenticated(key, &mut || authenticate(basic, issuer, &name))?;
    let responder = signer_valid_at(&authenticated, &name, at)?;

    match single.status {
        CertStatus::Good => {}
        CertStatus::Revoked {
            time,
            reason: Some(CRL_REASON_CERTIFICATE_HOLD),
        } => {
            return Err(OcspError::OnHold {
                cert: name,
                time: format_unix(time),
            });
        }
        CertStatus::Revoked { time, reason } => {
            return Err(OcspError::Revoked {
                cert: name,
                time: format_unix(time),
                reason: crl_reason_name(reason),
            });
        }
        CertStatus::Unknown => return Err(OcspError::Unknown { cert: name }),
    }
    if single.this_update > at {
        return Err(OcspError::NotYetValid {
            cert: name,
            this_update: format_unix(single.this_update),
            at: format_unix(at),
        });
    }
    let age = u64::try_from(at.saturating_sub(single.this_update)).unwrap_or(u64::MAX);
    if age > max_age_secs {
        return Err(OcspError::Stale {
            cert: name,
            this_update: format_unix(single.this_update),
            at: format_unix(at),
            max_age_secs,
        });
    }
    if let Some(next) = single.next_update
        && next < at
    {
        return Err(OcspError::Expired {
            cert: name,
            next_update: format_unix(next),
            at: format_unix(at),
        });
    }
    Ok(OcspGood {
        subject: cert.subject().to_string(),
        serial: serial_hex(cert.raw_serial()),
        responder,
        produced_at: basic.produced_at,
        this_update: single.this_update,
        next_update: single.next_update,
    })
}

/// Check the certificates `which` of `chain_der` (DER, leaf first, each issued by the next;
/// the last is the pinned root) against the stapled `responses`, as NVIDIA's verifier does
/// (device chain 1..4 leaving out leaf and root, RIM chains 0..3). For each certificate the
/// responses that name it are tried in order: the first good one wins, otherwise the first
/// failure is reported. Where no readable answer names a certificate, the first answer that
/// could not say anything (malformed, unsuccessful, or naming certificates by a hash we cannot
/// compute) is reported for it, since it may have been this certificate's; failing that,
/// [`OcspError::MissingResponse`]. Results are in `which`'s order, each with the
/// certificate's subject.
pub fn check_chain_ocsp(
    chain_der: &[Vec<u8>],
    which: Range<usize>,
    responses: &[Vec<u8>],
    at: i64,
    max_age_secs: u64,
) -> Vec<(String, Result<OcspGood, OcspError>)> {
    check_chain_ocsp_memo(chain_der, which, responses, at, max_age_secs, &NoMemo)
}

/// [`check_chain_ocsp`], with the signature verdicts remembered in `memo`.
pub fn check_chain_ocsp_memo(
    chain_der: &[Vec<u8>],
    which: Range<usize>,
    responses: &[Vec<u8>],
    at: i64,
    max_age_secs: u64,
    memo: &dyn OcspMemo,
) -> Vec<(String, Result<OcspGood, OcspError>)> {
    let stapled = Stapled::parse_all(responses);
    check_chain_stapled(chain_der, which, &stapled, at, max_age_secs, memo)
}

/// How many stapled answers naming one certificate are judged before it is refused.
pub const MAX_JUDGED_PER_CERTIFICATE: usize = 4;

/// [`check_chain_ocsp_memo`] on answers parsed once with [`Stapled::parse_all`].
pub fn check_chain_stapled(
    chain_der: &[Vec<u8>],
    which: Range<usize>,
    stapled: &[Stapled<'_>],
    at: i64,
    max_age_secs: u64,
    memo: &dyn OcspMemo,
) -> Vec<(String, Result<OcspGood, OcspError>)> {
    which
        .map(|index| {
            let Some(cert_der) = chain_der.get(index) else {
                return (
                    format!("certificate {index}"),
                    Err(OcspError::NoCertificate {
                        index,
                        len: chain_der.len(),
                    }),
                );
            };
            let cert = match parse_cert(cert_der, "checked") {
                Ok(c) => c,
                Err(e) => return (format!("certificate {index}"), Err(e)),
            };
            let subject_name = cert.subject().to_string();
            let Some(issuer_der) = index.checked_add(1).and_then(|i| chain_der.get(i)) else {
                return (
                    subject_name,
                    Err(OcspError::NoIssuer {
                        cert: describe(&cert),
                    }),
                );
            };
            let issuer = match parse_cert(issuer_der, "issuer") {
                Ok(c) => c,
                Err(e) => return (subject_name, Err(e)),
            };
            let subject = Subject::new(cert_der, &cert, issuer_der, &issuer);
            let mut first_error = None;
            let mut first_unusable = None;
            let mut judged = 0usize;
            for answer in stapled {
                if !subject.answered_by(answer) {
                    if first_unusable.is_none() {
                        first_unusable = subject.unusable(answer);
                    }
                    continue;
                }
                // Judging an answer can cost a signature verification: a certificate gets a
                // few tries (an old answer stapled beside a fresh one), not one per answer a
                // hostile bundle names it in.
                if judged == MAX_JUDGED_PER_CERTIFICATE {
                    break;
                }
                judged += 1;
                match judge(answer, &subject, at, max_age_secs, memo) {
                    Ok(good) => return (subject_name, Ok(good)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            let error =
                first_error
                    .or(first_unusable)
                    .unwrap_or_else(|| OcspError::MissingResponse {
                        cert: subject.name.clone(),
                    });
            (subject_name, Err(error))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Encoding: the request a fetcher sends, and responses for the simulator.

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(content.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let bytes = content.len().to_be_bytes();
            let significant: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
            out.push(0x80 | u8::try_from(significant.len()).unwrap_or(0x7F));
            out.extend(significant);
        }
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, &parts.concat())
}

fn generalized_time_der(field: &'static str, t: i64) -> Result<Vec<u8>, OcspError> {
    let dt = time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| OcspError::Encode {
        field,
        detail: e.to_string(),
    })?;
    if !(0..=9999).contains(&dt.year()) {
        return Err(OcspError::Encode {
            field,
            detail: format!("year {} does not fit GeneralizedTime", dt.year()),
        });
    }
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    Ok(tlv(GENERALIZED_TIME, text.as_bytes()))
}

/// The CertID of `cert_der` as issued by `issuer_der`, with SHA-256 or SHA-384.
pub fn ocsp_cert_id(
    cert_der: &[u8],
    issuer_der: &[u8],
    hash: &OcspHash,
) -> Result<CertId, OcspError> {
    let cert = parse_cert(cert_der, "checked")?;
    let issuer = parse_cert(issuer_der, "issuer")?;
    let unsupported = || OcspError::UnsupportedHash {
        cert: describe(&cert),
        algorithm: hash.name(),
    };
    Ok(CertId {
        hash: hash.clone(),
        issuer_name_hash: hash
            .digest(issuer.subject().as_raw())
            .ok_or_else(unsupported)?,
        issuer_key_hash: hash
            .digest(&issuer.public_key().subject_public_key.data)
            .ok_or_else(unsupported)?,
        serial: cert.raw_serial().to_vec(),
    })
}

fn cert_id_der(id: &CertId) -> Result<Vec<u8>, OcspError> {
    let oid = id.hash.oid().ok_or_else(|| OcspError::Encode {
        field: "certID.hashAlgorithm",
        detail: format!("{} is not supported", id.hash.name()),
    })?;
    // NULL parameters, as NVIDIA's responder and OpenSSL write them (the CertIDs compare
    // byte for byte).
    Ok(seq(&[
        &seq(&[&tlv(OID, oid), &tlv(NULL, &[])]),
        &tlv(OCTET_STRING, &id.issuer_name_hash),
        &tlv(OCTET_STRING, &id.issuer_key_hash),
        &tlv(INTEGER, &id.serial),
    ]))
}

/// A DER OCSPRequest for one certificate: one SHA-384 CertID, unsigned and without a nonce,
/// as NVIDIA's verifier sends it (a nonce would make the answer unstapleable).
pub fn ocsp_request_der(cert_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, OcspError> {
    let id = cert_id_der(&ocsp_cert_id(cert_der, issuer_der, &OcspHash::Sha384)?)?;
    let request = seq(&[&id]);
    let request_list = seq(&[&request]);
    let tbs_request = seq(&[&request_list]);
    Ok(seq(&[&tbs_request]))
}

/// What the simulator's responder answers for one certificate.
pub struct OcspResponseSpec<'a> {
    pub cert_der: &'a [u8],
    pub issuer_der: &'a [u8],
    /// SHA-256 or SHA-384 (NVIDIA: SHA-384).
    pub hash: OcspHash,
    pub status: CertStatus,
    pub produced_at: i64,
    pub this_update: i64,
    pub next_update: Option<i64>,
    /// The signer: the issuer itself, or a delegated responder the issuer certified.
    pub responder_cert_der: &'a [u8],
    pub responder_key: &'a p384::ecdsa::SigningKey,
}

/// A successful OCSPResponse for `spec`, signed ecdsa-with-SHA384 by the responder key, with
/// the responder certificate in `certs` and the responderID byKey (its subjectKeyIdentifier)
/// as NVIDIA's responder writes it, or byName where the certificate has no key identifier.
pub fn build_ocsp_response(spec: &OcspResponseSpec<'_>) -> Result<Vec<u8>, OcspError> {
    let id = cert_id_der(&ocsp_cert_id(spec.cert_der, spec.issuer_der, &spec.hash)?)?;
    let responder = parse_cert(spec.responder_cert_der, "responder")?;
    let responder_id = match subject_key_id(&responder) {
        Some(key) => tlv(CTX_2, &tlv(OCTET_STRING, key)),
        None => tlv(CTX_1, responder.subject().as_raw()),
    };
    let status = match spec.status {
        CertStatus::Good => tlv(CTX_PRIM_0, &[]),
        CertStatus::Unknown => tlv(CTX_PRIM_2, &[]),
        CertStatus::Revoked { time, reason } => {
            let mut info = generalized_time_der("revocationTime", time)?;
            if let Some(r) = reason {
                let content: &[u8] = if r >= 0x80 { &[0x00, r] } else { &[r] };
                info.extend(tlv(CTX_0, &tlv(ENUMERATED, content)));
            }
            tlv(CTX_1, &info)
        }
    };
    let mut single = [
        id,
        status,
        generalized_time_der("thisUpdate", spec.this_update)?,
    ]
    .concat();
    if let Some(next) = spec.next_update {
        single.extend(tlv(CTX_0, &generalized_time_der("nextUpdate", next)?));
    }
    let tbs = seq(&[
        &responder_id,
        &generalized_time_der("producedAt", spec.produced_at)?,
        &seq(&[&tlv(SEQUENCE, &single)]),
    ]);
    let signature: p384::ecdsa::Signature = spec.responder_key.sign(&tbs);
    let (r, s) = signature.split_bytes();
    let integer = |bytes: &[u8]| {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        match trimmed.first() {
            Some(first) if *first < 0x80 => tlv(INTEGER, &trimmed),
            _ => tlv(INTEGER, &[&[0x00], trimmed.as_slice()].concat()),
        }
    };
    let sig_der = seq(&[&integer(&r), &integer(&s)]);
    let basic = seq(&[
        &tbs,
        &seq(&[&tlv(OID, OID_ECDSA_SHA384)]),
        &tlv(BIT_STRING, &[&[0x00], sig_der.as_slice()].concat()),
        &tlv(CTX_0, &seq(&[spec.responder_cert_der])),
    ]);
    Ok(seq(&[
        &tlv(ENUMERATED, &[0x00]),
        &tlv(
            CTX_0,
            &seq(&[&tlv(OID, OID_PKIX_OCSP_BASIC), &tlv(OCTET_STRING, &basic)]),
        ),
    ]))
}
