//! The GPU's certificate chain up to NVIDIA's pinned device root (docs/design.md §14): five
//! certificates, leaf first; as NVIDIA's verifier does, the chain's own last certificate is
//! replaced by the pinned root, and each certificate must be issued and signed by the next,
//! every issuer must be a CA, and every certificate valid at the verification time.

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::link::{LinkMemo, Unremembered, signed_by};

/// NVIDIA Device Identity CA, pinned (SHA-256 of its DER
/// 102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48), as NVIDIA's local GPU
/// verifier pins it (nvtrust `local_gpu_verifier/src/verifier/certs/verifier_device_root.pem`).
pub const NVIDIA_DEVICE_ROOT_PEM: &[u8] = include_bytes!("nvidia_device_identity_ca.pem");

/// NVIDIA's device chains: leaf, BROM, provisioner ICA, identity, root.
pub const DEVICE_CHAIN_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuChainError {
    #[error("GPU certificate chain: {found} certificates, expected {DEVICE_CHAIN_LEN}")]
    Length { found: usize },
    #[error("GPU certificate chain: certificate {index}: {detail}")]
    Unreadable { index: usize, detail: String },
    #[error(
        "GPU certificate chain: certificate {index} ({subject}) was not issued by the next one ({issuer})"
    )]
    Issuer {
        index: usize,
        subject: String,
        issuer: String,
    },
    #[error(
        "GPU certificate chain: certificate {index} ({subject}): signature does not verify with the next certificate's key"
    )]
    Signature { index: usize, subject: String },
    #[error(
        "GPU certificate chain: certificate {index} ({subject}) issues certificates but is not a CA (basicConstraints CA:TRUE)"
    )]
    NotCa { index: usize, subject: String },
    #[error(
        "GPU certificate chain: certificate {index} ({subject}) is not valid at {at} (valid {not_before} .. {not_after})"
    )]
    Validity {
        index: usize,
        subject: String,
        at: String,
        not_before: String,
        not_after: String,
    },
}

/// Check `chain` (DER, leaf first, as [`super::chain_der`] reads it) against `root_der` at
/// `at` (Unix seconds). Returns the subjects, leaf first, for the report. `root_der` is
/// trusted as given: its own signature is not checked here ([`super::GpuRoots`] checks it
/// once, when the roots are loaded; OpenSSL, under NVIDIA's verifier, does not check a trust
/// anchor's at all).
pub fn verify_device_chain(
    chain: &[Vec<u8>],
    root_der: &[u8],
    at: i64,
) -> Result<Vec<String>, GpuChainError> {
    verify_device_chain_with(chain, root_der, at, &Unremembered)
}

/// [`verify_device_chain`], with its links' signature verdicts kept in `memo`.
pub(crate) fn verify_device_chain_with(
    chain: &[Vec<u8>],
    root_der: &[u8],
    at: i64,
    memo: &dyn LinkMemo,
) -> Result<Vec<String>, GpuChainError> {
    if chain.len() != DEVICE_CHAIN_LEN {
        return Err(GpuChainError::Length { found: chain.len() });
    }
    let mut ders: Vec<&[u8]> = chain[..DEVICE_CHAIN_LEN - 1]
        .iter()
        .map(Vec::as_slice)
        .collect();
    ders.push(root_der);
    let certs = ders
        .iter()
        .enumerate()
        .map(|(index, der)| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|e| GpuChainError::Unreadable {
                    index,
                    detail: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (index, cert) in certs.iter().enumerate() {
        let subject = cert.subject().to_string();
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        if at < not_before || at > not_after {
            return Err(GpuChainError::Validity {
                index,
                subject,
                at: crate::verify::time::format_unix(at),
                not_before: crate::verify::time::format_unix(not_before),
                not_after: crate::verify::time::format_unix(not_after),
            });
        }
        // The root issues itself (its signature is the pinned bytes' business); every other
        // certificate is issued and signed by the next.
        let next = certs.get(index + 1);
        let issuer = next.unwrap_or(cert);
        if cert.issuer() != issuer.subject() {
            return Err(GpuChainError::Issuer {
                index,
                subject,
                issuer: issuer.subject().to_string(),
            });
        }
        if next.is_some() && !signed_by(ders[index], cert, issuer, memo) {
            return Err(GpuChainError::Signature { index, subject });
        }
        // Every certificate above the leaf issues the one below: without this an NVIDIA
        // end-entity key (an FMC leaf's, say) could certify a chain of its own. OpenSSL,
        // under NVIDIA's verifier, refuses a CA:FALSE issuer too (though not one with
        // keyCertSign and no basicConstraints); NVIDIA's all say CA:TRUE, as rim/chain.rs
        // requires of RIM chains.
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if index > 0 && !is_ca {
            return Err(GpuChainError::NotCa { index, subject });
        }
    }
    Ok(certs.iter().map(|c| c.subject().to_string()).collect())
}
