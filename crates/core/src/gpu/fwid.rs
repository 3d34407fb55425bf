//! The firmware identity: the FWID the report carries (opaque field 20) must equal the one
//! in the leaf certificate's TCG DICE TcbInfo extension. Hopper and Blackwell place it
//! differently (docs/design.md §14): Hopper's extension (2.23.133.5.4.1) ends with the 48-byte
//! digest; Blackwell's DiceTcbInfo (2.23.133.5.4.1.1) holds it as `fwids[0].digest`.

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{SpdmReport, opaque};

const HOPPER_TCB_INFO: &str = "2.23.133.5.4.1";
const BLACKWELL_TCB_INFO: &str = "2.23.133.5.4.1.1";
pub const FWID_LEN: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuFwidError {
    /// Old drivers (535, 545) report no FWID: a named failure, unless the policy says
    /// `insecure_allow_missing_fwid`.
    #[error("GPU report: no FWID field (opaque type 20); drivers before 550 do not report one")]
    MissingInReport,
    #[error("GPU report: the FWID field is {0} bytes, expected {FWID_LEN}")]
    BadLength(usize),
    #[error("GPU leaf certificate: {0}")]
    Certificate(String),
    #[error("GPU FWID: the report has {report}, the leaf certificate {certificate}")]
    Mismatch { report: String, certificate: String },
}

/// The FWID of the leaf certificate (DER).
pub fn leaf_fwid(leaf_der: &[u8]) -> Result<[u8; FWID_LEN], GpuFwidError> {
    let (_, leaf) = X509Certificate::from_der(leaf_der)
        .map_err(|e| GpuFwidError::Certificate(e.to_string()))?;
    let find = |oid: &str| {
        leaf.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
            .map(|e| e.value)
    };
    let digest = if let Some(v) = find(BLACKWELL_TCB_INFO) {
        dice_tcb_info_fwid(v).ok_or_else(|| {
            GpuFwidError::Certificate(format!(
                "its DiceTcbInfo ({BLACKWELL_TCB_INFO}) has no 48-byte fwids[0].digest"
            ))
        })?
    } else if let Some(v) = find(HOPPER_TCB_INFO) {
        v.get(v.len().saturating_sub(FWID_LEN)..)
            .filter(|d| d.len() == FWID_LEN)
            .ok_or_else(|| {
                GpuFwidError::Certificate(format!(
                    "its TcbInfo ({HOPPER_TCB_INFO}) is shorter than an FWID"
                ))
            })?
    } else {
        return Err(GpuFwidError::Certificate(format!(
            "no TCG DICE TcbInfo extension ({HOPPER_TCB_INFO} or {BLACKWELL_TCB_INFO})"
        )));
    };
    let mut out = [0u8; FWID_LEN];
    out.copy_from_slice(digest);
    Ok(out)
}

/// Check the report's FWID against the leaf certificate's.
pub fn check_fwid(report: &SpdmReport, leaf_der: &[u8]) -> Result<(), GpuFwidError> {
    let reported = report
        .opaque_field(opaque::FWID)
        .ok_or(GpuFwidError::MissingInReport)?;
    if reported.len() != FWID_LEN {
        return Err(GpuFwidError::BadLength(reported.len()));
    }
    let certified = leaf_fwid(leaf_der)?;
    if reported != certified {
        return Err(GpuFwidError::Mismatch {
            report: hex::encode(reported),
            certificate: hex::encode(certified),
        });
    }
    Ok(())
}

/// One DER TLV at the start of `b`: (tag, contents, rest). Only definite lengths, at most 4
/// length bytes; anything else is `None`.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, x| (acc << 8) | usize::from(*x));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `fwids[0].digest` of a DiceTcbInfo: SEQUENCE { ... [6] IMPLICIT SEQUENCE OF FWID ... },
/// FWID ::= SEQUENCE { hashAlg OBJECT IDENTIFIER, digest OCTET STRING }.
fn dice_tcb_info_fwid(ext: &[u8]) -> Option<&[u8]> {
    let (0x30, mut fields, _) = tlv(ext)? else {
        return None;
    };
    while !fields.is_empty() {
        let (tag, contents, rest) = tlv(fields)?;
        fields = rest;
        if tag == 0xa6 {
            let (0x30, fwid, _) = tlv(contents)? else {
                return None;
            };
            let (0x06, _, after_alg) = tlv(fwid)? else {
                return None;
            };
            let (0x04, digest, _) = tlv(after_alg)? else {
                return None;
            };
            return (digest.len() == FWID_LEN).then_some(digest);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn hostile_tcb_info_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = dice_tcb_info_fwid(&bytes);
        }
    }

    #[test]
    fn lengths_past_the_end_or_too_long_are_refused() {
        assert_eq!(tlv(&[0x30, 0x05, 0x01]), None);
        assert_eq!(tlv(&[0x30, 0x85, 1, 0, 0, 0, 0]), None);
        assert_eq!(tlv(&[0x30, 0x81]), None);
        assert_eq!(
            tlv(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((0x04, &[0xaa][..], &[0xbb][..]))
        );
    }
}
