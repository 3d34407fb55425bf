//! Runs dcap-qvl, the one quote verifier, and names the check that a failure belongs to.
//!
//! dcap-qvl reports failures as error text. Its steps run in a fixed order (collateral
//! signatures, PCK chain, QE report, attestation key, QE identity, quote signature, TCB
//! level, module identity), so a failure at one step means every earlier step passed. The
//! text is matched against the messages of the pinned 0.7 line; tests flip each part of a
//! quote and assert the name, so a dcap-qvl upgrade that changes a message fails loudly.

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::collateral::{Collateral, PreparedCollateral};

/// dcap-qvl's steps, in the order it runs them, as our report names them.
pub const STEPS: [&str; 11] = [
    CRLS,
    TCB_INFO,
    QE_IDENTITY_SIG,
    PCK_CHAIN,
    QE_REPORT_SIG,
    AK_BINDING,
    QE_IDENTITY,
    QUOTE_SIG,
    TCB_LEVEL,
    MODULE_IDENTITY,
    TD_ATTRIBUTES,
];

pub const CRLS: &str = "CRLs";
pub const TCB_INFO: &str = "TCB info signature";
pub const QE_IDENTITY_SIG: &str = "QE identity signature";
pub const PCK_CHAIN: &str = "PCK chain to the pinned root";
pub const QE_REPORT_SIG: &str = "QE report signature";
pub const AK_BINDING: &str = "attestation key binding";
pub const QE_IDENTITY: &str = "QE identity";
pub const QUOTE_SIG: &str = "quote signature";
pub const TCB_LEVEL: &str = "TCB level";
pub const MODULE_IDENTITY: &str = "TDX module identity";
pub const TD_ATTRIBUTES: &str = "TD attributes";
/// Also the name of our policy check on the status dcap-qvl returns.
pub const TCB_STATUS: &str = "TCB status";
const UNCLASSIFIED: &str = "DCAP verification";

/// Message fragments per check, most specific first.
const PATTERNS: &[(&str, &[&str])] = &[
    (
        TCB_STATUS,
        &["TCB status is invalid", "Unrecognized TCB status"],
    ),
    (
        TCB_LEVEL,
        &[
            "Fmspc mismatch",
            "No matching TCB level",
            "non-TDX TCB info",
            "TDX module TCB level",
            "current TDX TCB",
            "TD10 report",
        ],
    ),
    (MODULE_IDENTITY, &["TDX module", "tdxModule"]),
    (
        TD_ATTRIBUTES,
        &[
            "Debug mode",
            "SEPT_VE_DISABLE",
            "TD profiling",
            "Reserved bits in TD attributes",
            "TD migration",
            "SERVTD_EXT",
            "MR service TD",
            "TD attributes",
        ],
    ),
    (
        QE_IDENTITY,
        &[
            "QE MRSIGNER",
            "QE ISVPRODID",
            "QE MISCSELECT",
            "QE ATTRIBUTES",
            "QE ISVSVN",
            "QE report validation",
            "in QE Identity",
            "Unsupported QE Identity id/version",
        ],
    ),
    (AK_BINDING, &["QE report hash mismatch", "QE auth data"]),
    (QE_REPORT_SIG, &["qe_report in quote", "decode QE report"]),
    (QUOTE_SIG, &["ISV enclave report signature"]),
    (TCB_INFO, &["TCBInfo", "TCB Info", "tcb_info", "TcbInfo"]),
    (
        QE_IDENTITY_SIG,
        &["QE Identity", "qe_identity", "QeIdentity"],
    ),
    (
        PCK_CHAIN,
        &[
            "PCK",
            "Certificate chain is too short in quote",
            "Intel extension",
            "Fmspc",
            "CpuSvn",
            "PceSvn",
            "Failed to load root ca",
            "Failed to decode quote",
        ],
    ),
    (CRLS, &["CRL", "Revoked", "revocation", "Revocation"]),
];

/// What dcap-qvl concluded.
pub enum Outcome {
    Verified {
        tcb_status: String,
        advisory_ids: Vec<String>,
    },
    Failed {
        /// The check the failure belongs to (one of [`STEPS`] or "DCAP verification").
        check: &'static str,
        message: String,
    },
}

pub fn run(raw_quote: &[u8], prepared: &PreparedCollateral, now: i64, root_der: &[u8]) -> Outcome {
    // Debug TDs and service-TD bindings are decided by our policy layer, so the report
    // names that check instead of a generic verifier error.
    let verifier = dcap_qvl::verify::QuoteVerifier::new(root_der.to_vec())
        .allow_debug(true)
        .allow_service_td(true);
    let now = u64::try_from(now).unwrap_or(0);
    match verifier.verify(raw_quote, prepared.dcap(), now) {
        Ok(r) => Outcome::Verified {
            tcb_status: r.status,
            advisory_ids: r.advisory_ids,
        },
        Err(e) => {
            let message = format!("{e:#}");
            Outcome::Failed {
                check: classify(&message, prepared.raw(), root_der, now),
                message,
            }
        }
    }
}

fn classify(message: &str, collateral: &Collateral, root_der: &[u8], now: u64) -> &'static str {
    // dcap-qvl refuses SEPT_VE_DISABLE = 0 itself, as the last of its attribute rules: name
    // our policy's check so the report reads the same whoever caught it.
    if message.contains("SEPT_VE_DISABLE is not enabled") {
        return super::CHECK_SEPT;
    }
    for (check, fragments) in PATTERNS {
        if fragments.iter().any(|f| message.contains(f)) {
            return check;
        }
    }
    if message.contains("Failed to verify certificate chain") {
        // The same text comes from the TCB info, QE identity and PCK chains, checked in that
        // order: find the first collateral chain that does not reach the root.
        if !issuer_chain_ok(&collateral.tcb_info_issuer_chain, root_der, now) {
            return TCB_INFO;
        }
        if !issuer_chain_ok(&collateral.qe_identity_issuer_chain, root_der, now) {
            return QE_IDENTITY_SIG;
        }
        return PCK_CHAIN;
    }
    UNCLASSIFIED
}

/// Whether a collateral signing chain's leaf is signed by the root and valid at `now`.
fn issuer_chain_ok(pem: &str, root_der: &[u8], now: u64) -> bool {
    let Ok(certs) = crate::quote::pem_certificates(pem.as_bytes()) else {
        return false;
    };
    let (Some(leaf_der), Ok((_, root))) = (certs.first(), X509Certificate::from_der(root_der))
    else {
        return false;
    };
    let Ok((_, leaf)) = X509Certificate::from_der(leaf_der) else {
        return false;
    };
    let Ok(at) = x509_parser::time::ASN1Time::from_timestamp(now as i64) else {
        return false;
    };
    leaf.verify_signature(Some(root.public_key())).is_ok() && leaf.validity().is_valid_at(at)
}
