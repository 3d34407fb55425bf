//! The TD quote (v4 and v5): strict parsing by declared lengths, decoded fields.
//!
//! dcap-qvl does the cryptography; this parser is the stricter gate in front of it. It reads
//! every length the quote declares and insists they add up, so trailing padding (real quotes
//! carry some) is cut off by the declared length and never mistaken for data, and a quote whose
//! inner lengths disagree is refused before any signature is looked at.

mod error;
pub mod layout;
mod reader;

use std::ops::Range;

pub use error::QuoteError;
use layout::*;
use reader::Reader;

/// A parsed TD quote. Borrowed fields point into the caller's buffer.
#[derive(Clone, Debug)]
pub struct Quote<'a> {
    /// The quote trimmed to its declared length (header, body, signature data).
    pub raw: &'a [u8],
    pub header: Header,
    pub body: TdBody,
    /// Byte ranges of each part in `raw`, for diagnostics and tamper tests.
    pub ranges: Ranges,
    pub attestation_key: [u8; 64],
    pub qe_auth_data: &'a [u8],
    /// The PEM chain of certification data type 5: PCK leaf, intermediate CA, root.
    pub pck_chain_pem: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub attestation_key_type: u16,
    pub tee_type: u32,
    pub qe_vendor_id: [u8; 16],
}

/// Which TD report the body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// TDX 1.0 report (584 bytes): v4 quotes and v5 body type 2.
    Td10,
    /// TDX 1.5 report (648 bytes): v5 body type 3, adds TEE_TCB_SVN2 and MRSERVICETD.
    Td15,
}

/// The decoded TD report body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdBody {
    pub kind: BodyKind,
    pub tee_tcb_svn: [u8; 16],
    pub mrseam: [u8; 48],
    pub mrsignerseam: [u8; 48],
    pub seam_attributes: [u8; 8],
    pub td_attributes: [u8; 8],
    pub xfam: [u8; 8],
    pub mrtd: [u8; 48],
    pub mrconfigid: [u8; 48],
    pub mrowner: [u8; 48],
    pub mrownerconfig: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    /// TD 1.5 only.
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TD 1.5 only; a TD 1.0 report has no service TD, which is the same as all zeros.
    pub mrservicetd: Option<[u8; 48]>,
}

impl TdBody {
    pub fn td_attributes_u64(&self) -> u64 {
        u64::from_le_bytes(self.td_attributes)
    }

    pub fn xfam_u64(&self) -> u64 {
        u64::from_le_bytes(self.xfam)
    }

    pub fn is_debug(&self) -> bool {
        self.td_attributes_u64() & TD_ATTR_DEBUG != 0
    }

    /// The TD-under-debug bits that are set (DEBUG and the profiling bits), by name: each
    /// lets the host read or observe the TD.
    pub fn under_debug(&self) -> Vec<&'static str> {
        let attributes = self.td_attributes_u64();
        std::iter::once((TD_ATTR_DEBUG, "DEBUG"))
            .chain(TD_ATTR_PROFILING)
            .filter(|(bit, _)| attributes & bit != 0)
            .map(|(_, name)| name)
            .collect()
    }

    /// SERVTD_EXT: a service TD may be bound to this TD after its creation, so MRSERVICETD as
    /// quoted need not stay the TD's only service TD.
    pub fn servtd_ext(&self) -> bool {
        self.td_attributes_u64() & TD_ATTR_SERVTD_EXT != 0
    }

    pub fn sept_ve_disabled(&self) -> bool {
        self.td_attributes_u64() & TD_ATTR_SEPT_VE_DISABLE != 0
    }

    /// MRSERVICETD, zeros for a TD 1.0 report.
    pub fn mrservicetd_or_zero(&self) -> [u8; 48] {
        self.mrservicetd.unwrap_or([0; 48])
    }
}

/// Where each part sits in the quote, so diagnostics and tests can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    pub header: Range<usize>,
    pub body: Range<usize>,
    pub signature_data: Range<usize>,
    pub quote_signature: Range<usize>,
    pub attestation_key: Range<usize>,
    pub qe_report: Range<usize>,
    pub qe_report_signature: Range<usize>,
    pub qe_auth_data: Range<usize>,
    pub pck_chain: Range<usize>,
}

impl<'a> Quote<'a> {
    /// Parse a TD quote. Bytes after the declared signature data are ignored (padding);
    /// everything inside it must be accounted for exactly.
    pub fn parse(bytes: &'a [u8]) -> Result<Quote<'a>, QuoteError> {
        let mut r = Reader::new(bytes);
        let (header, body, body_range) = parse_head(&mut r)?;
        let (body_start, body_len) = (body_range.start, body_range.len());

        let sig_len = r.u32("signature data length")? as usize;
        let sig_start = r.pos();
        let sig_bytes = r.take(sig_len, "signature data")?;
        let raw = bytes.get(..r.pos()).ok_or(QuoteError::Truncated {
            field: "quote",
            offset: 0,
            needed: r.pos(),
            available: bytes.len(),
        })?;

        let mut s = Reader::with_base(sig_bytes, sig_start);
        let quote_signature = s.range(64, "quote signature")?;
        let attestation_key_range = s.range(64, "attestation key")?;
        let mut attestation_key = [0u8; 64];
        attestation_key.copy_from_slice(s.slice(bytes, attestation_key_range.clone()));

        let outer_type = s.u16("certification data type")?;
        if outer_type != CERT_DATA_QE_REPORT {
            return Err(QuoteError::CertDataType {
                level: "outer",
                expected: CERT_DATA_QE_REPORT,
                found: outer_type,
            });
        }
        let outer_size = s.u32("certification data size")? as usize;
        if outer_size != s.remaining() {
            return Err(QuoteError::LengthMismatch {
                field: "QE report certification data size",
                declared: outer_size,
                expected: s.remaining(),
            });
        }
        let qe_report = s.range(QE_REPORT_LEN, "QE report")?;
        let qe_report_signature = s.range(64, "QE report signature")?;
        let auth_len = s.u16("QE auth data length")? as usize;
        let qe_auth_data = s.range(auth_len, "QE auth data")?;
        let inner_type = s.u16("PCK certification data type")?;
        if inner_type != CERT_DATA_PCK_CHAIN {
            return Err(QuoteError::CertDataType {
                level: "inner",
                expected: CERT_DATA_PCK_CHAIN,
                found: inner_type,
            });
        }
        let inner_size = s.u32("PCK certification data size")? as usize;
        if inner_size != s.remaining() {
            return Err(QuoteError::LengthMismatch {
                field: "PCK certification data size",
                declared: inner_size,
                expected: s.remaining(),
            });
        }
        let pck_chain = s.range(inner_size, "PCK certificate chain")?;

        Ok(Quote {
            raw,
            header,
            body,
            attestation_key,
            qe_auth_data: s.slice(bytes, qe_auth_data.clone()),
            pck_chain_pem: s.slice(bytes, pck_chain.clone()),
            ranges: Ranges {
                header: 0..HEADER_LEN,
                body: body_start..body_start + body_len,
                signature_data: sig_start..sig_start + sig_len,
                quote_signature,
                attestation_key: attestation_key_range,
                qe_report,
                qe_report_signature,
                qe_auth_data,
                pck_chain,
            },
        })
    }

    /// The certificates of the PCK chain as DER, in quote order (leaf first).
    pub fn pck_chain_der(&self) -> Result<Vec<Vec<u8>>, QuoteError> {
        pem_certificates(self.pck_chain_pem)
    }
}

/// Header and TD report body of a quote, without its signature data. For reading the
/// registers out of a quote the kernel just produced; never a substitute for verification.
pub fn parse_head_only(bytes: &[u8]) -> Result<(Header, TdBody), QuoteError> {
    let mut r = Reader::new(bytes);
    parse_head(&mut r).map(|(h, b, _)| (h, b))
}

fn parse_head(r: &mut Reader<'_>) -> Result<(Header, TdBody, Range<usize>), QuoteError> {
    let header = parse_header(r.take(HEADER_LEN, "header")?)?;
    let kind = match header.version {
        4 => BodyKind::Td10,
        5 => {
            let body_type = r.u16("v5 body type")?;
            let body_size = r.u32("v5 body size")?;
            let (kind, expected) = match body_type {
                V5_BODY_TD10 => (BodyKind::Td10, TD10_BODY_LEN),
                V5_BODY_TD15 => (BodyKind::Td15, TD15_BODY_LEN),
                other => {
                    return Err(QuoteError::Unsupported {
                        field: "v5 body type",
                        found: format!("{other} (expected 2 = TD 1.0 or 3 = TD 1.5)"),
                    });
                }
            };
            if body_size as usize != expected {
                return Err(QuoteError::LengthMismatch {
                    field: "v5 body size",
                    declared: body_size as usize,
                    expected,
                });
            }
            kind
        }
        other => {
            return Err(QuoteError::Unsupported {
                field: "quote version",
                found: other.to_string(),
            });
        }
    };
    let len = match kind {
        BodyKind::Td10 => TD10_BODY_LEN,
        BodyKind::Td15 => TD15_BODY_LEN,
    };
    let start = r.pos();
    let body = parse_body(kind, r.take(len, "TD report body")?);
    Ok((header, body, start..start + len))
}

fn parse_header(h: &[u8]) -> Result<Header, QuoteError> {
    let mut r = Reader::new(h);
    let version = r.u16("header version")?;
    let attestation_key_type = r.u16("attestation key type")?;
    let tee_type = r.u32("TEE type")?;
    r.take(4, "header reserved")?;
    let mut qe_vendor_id = [0u8; 16];
    qe_vendor_id.copy_from_slice(r.take(16, "QE vendor id")?);
    let header = Header {
        version,
        attestation_key_type,
        tee_type,
        qe_vendor_id,
    };
    if tee_type != TEE_TYPE_TDX {
        let what = if tee_type == TEE_TYPE_SGX {
            "an SGX enclave quote"
        } else {
            "an unknown TEE type"
        };
        return Err(QuoteError::NotTdx {
            tee_type,
            version,
            what,
        });
    }
    if version != 4 && version != 5 {
        return Err(QuoteError::Unsupported {
            field: "quote version",
            found: format!("{version} (TDX quotes are version 4 or 5)"),
        });
    }
    if attestation_key_type != ATTESTATION_KEY_ECDSA_P256 {
        return Err(QuoteError::Unsupported {
            field: "attestation key type",
            found: format!("{attestation_key_type} (expected 2 = ECDSA P-256)"),
        });
    }
    Ok(header)
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    // The body slice has the exact length for its kind, checked by the caller.
    if let Some(src) = b.get(off..off + N) {
        out.copy_from_slice(src);
    }
    out
}

fn parse_body(kind: BodyKind, b: &[u8]) -> TdBody {
    let td15 = kind == BodyKind::Td15;
    TdBody {
        kind,
        tee_tcb_svn: arr(b, OFF_TEE_TCB_SVN),
        mrseam: arr(b, OFF_MRSEAM),
        mrsignerseam: arr(b, OFF_MRSIGNERSEAM),
        seam_attributes: arr(b, OFF_SEAM_ATTRIBUTES),
        td_attributes: arr(b, OFF_TD_ATTRIBUTES),
        xfam: arr(b, OFF_XFAM),
        mrtd: arr(b, OFF_MRTD),
        mrconfigid: arr(b, OFF_MRCONFIGID),
        mrowner: arr(b, OFF_MROWNER),
        mrownerconfig: arr(b, OFF_MROWNERCONFIG),
        rtmr: [
            arr(b, OFF_RTMR0),
            arr(b, OFF_RTMR0 + 48),
            arr(b, OFF_RTMR0 + 96),
            arr(b, OFF_RTMR0 + 144),
        ],
        report_data: arr(b, OFF_REPORT_DATA),
        tee_tcb_svn2: td15.then(|| arr(b, OFF_TEE_TCB_SVN2)),
        mrservicetd: td15.then(|| arr(b, OFF_MRSERVICETD)),
    }
}

/// Quotes are binary, but people paste them as hex: accept hex text when the whole file is hex.
pub fn decode_file(bytes: Vec<u8>) -> Vec<u8> {
    match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| crate::encoding::from_hex_loose(t).ok())
    {
        Some(decoded) if !decoded.is_empty() => decoded,
        _ => bytes,
    }
}

/// Split a PEM text into the DER of each CERTIFICATE block.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, QuoteError> {
    use base64::Engine as _;
    let text = std::str::from_utf8(pem).map_err(|_| QuoteError::BadPem {
        detail: "the certificate chain is not text".into(),
    })?;
    // Quotes carry a NUL terminator after the PEM text.
    let text = text.trim_end_matches('\0');
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(PEM_BEGIN) {
        let after = &rest[start + PEM_BEGIN.len()..];
        let end = after.find(PEM_END).ok_or_else(|| QuoteError::BadPem {
            detail: format!("certificate {} has no END line", certs.len() + 1),
        })?;
        let b64: String = after[..end].split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| QuoteError::BadPem {
                detail: format!("certificate {} is not valid base64: {e}", certs.len() + 1),
            })?;
        certs.push(der);
        rest = &after[end + PEM_END.len()..];
    }
    if certs.is_empty() {
        return Err(QuoteError::BadPem {
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

#[cfg(test)]
mod tests;
