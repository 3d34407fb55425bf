//! The RIM signing chain from `ds:X509Data` up to NVIDIA's pinned CoRIM root: as for the
//! device chain (../chain.rs), the document's own last certificate (its copy of the root) is
//! replaced by the pinned root, each certificate must be issued and signed by the next, every
//! issuer must be a CA, and every certificate valid at the verification time.

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::RimChainError;
use crate::gpu::link::{LinkMemo, signed_by};

/// Leaf and root at least; real RIMs carry 4 (leaf, L3, CA, root).
pub const MIN_CHAIN_LEN: usize = 2;

/// `root_der` is trusted as given, its own signature unchecked, as for the device chain.
pub fn verify(
    chain: &[Vec<u8>],
    root_der: &[u8],
    at: i64,
    memo: &dyn LinkMemo,
) -> Result<Vec<String>, RimChainError> {
    let Some((_, below_root)) = chain.split_last().filter(|_| chain.len() >= MIN_CHAIN_LEN) else {
        return Err(RimChainError::Length { found: chain.len() });
    };
    let mut ders: Vec<&[u8]> = below_root.iter().map(Vec::as_slice).collect();
    ders.push(root_der);
    let certs = ders
        .iter()
        .enumerate()
        .map(|(index, der)| match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(cert),
            Ok(_) => Err(RimChainError::Unreadable {
                index,
                detail: "trailing bytes after the certificate".into(),
            }),
            Err(e) => Err(RimChainError::Unreadable {
                index,
                detail: e.to_string(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Signatures and issuers first, validity after: a chain that is both forged and expired
    // is reported as invalid, the stronger finding.
    for (index, cert) in certs.iter().enumerate() {
        let subject = cert.subject().to_string();
        // The root issues itself; every other certificate is issued and signed by the next.
        let next = certs.get(index + 1);
        let issuer = next.unwrap_or(cert);
        if cert.issuer() != issuer.subject() {
            return Err(RimChainError::Issuer {
                index,
                subject,
                issuer: issuer.subject().to_string(),
            });
        }
        if next.is_some() && !signed_by(ders[index], cert, issuer, memo) {
            return Err(RimChainError::Signature { index, subject });
        }
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if index > 0 && !is_ca {
            return Err(RimChainError::NotCa { index, subject });
        }
    }
    for (index, cert) in certs.iter().enumerate() {
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        if at < not_before || at > not_after {
            return Err(RimChainError::Validity {
                index,
                subject: cert.subject().to_string(),
                at: crate::verify::time::format_unix(at),
                not_before: crate::verify::time::format_unix(not_before),
                not_after: crate::verify::time::format_unix(not_after),
            });
        }
    }
    Ok(certs.iter().map(|c| c.subject().to_string()).collect())
}
