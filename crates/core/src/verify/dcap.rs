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
    // dcap-qvl's own refusal of a revoked status, after the module identity. (An unknown
    // status name is refused where the structure carrying it is read: see its step below.)
    (TCB_STATUS, &["TCB status is invalid"]),
    (
        TCB_LEVEL,
        &[
            "in TCB Info",
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
        ],
    ),
    (AK_BINDING, &["QE report hash mismatch", "QE auth data"]),
    (QE_REPORT_SIG, &["qe_report in quote", "decode QE report"]),
    (QUOTE_SIG, &["ISV enclave report signature"]),
    (TCB_INFO, &["TCBInfo", "TCB Info", "tcb_info", "TcbInfo"]),
    (
        // Also "Unsupported QE Identity id/version", checked right after the signature.
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

/// For a dcap-qvl failure under `check`: the steps that ran and passed before it, and those
/// that never ran. A check outside [`STEPS`] is placed where dcap-qvl raises it: its refusal
/// of a revoked status after the module identity, the SEPT_VE_DISABLE rule as the last of its
/// attribute rules (so the other attribute rules passed), and a failure it cannot place
/// before every step (none is said to have passed).
pub fn steps_around(check: &str) -> (&'static [&'static str], &'static [&'static str]) {
    let at = |step: &str| STEPS.iter().position(|s| *s == step).unwrap_or(0);
    if let Some(pos) = STEPS.iter().position(|s| *s == check) {
        return (&STEPS[..pos], &STEPS[pos + 1..]);
    }
    if check == TCB_STATUS {
        let pos = at(TD_ATTRIBUTES);
        return (&STEPS[..pos], &STEPS[pos..]);
    }
    if check == super::CHECK_SEPT {
        return (&STEPS, &[]);
    }
    (&[], &STEPS)
}

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
    if let Some(check) = classify_text(message) {
        return check;
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

/// The check a dcap-qvl message names by its text alone.
fn classify_text(message: &str) -> Option<&'static str> {
    // dcap-qvl refuses SEPT_VE_DISABLE = 0 itself, as the last of its attribute rules: name
    // our policy's check so the report reads the same whoever caught it.
    if message.contains("SEPT_VE_DISABLE is not enabled") {
        return Some(super::CHECK_SEPT);
    }
    PATTERNS
        .iter()
        .find(|(_, fragments)| fragments.iter().any(|f| message.contains(f)))
        .map(|(check, _)| *check)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// dcap-qvl's messages for failures raised outside their structure's own step go to the
    /// step that raises them: an unknown status name where the structure is matched, an
    /// unsupported QE identity right after its signature.
    #[test]
    fn messages_are_named_by_the_step_that_raises_them() {
        for (message, check) in [
            ("TCB status is invalid: Revoked", TCB_STATUS),
            ("Unrecognized TCB status Foo in TCB Info", TCB_LEVEL),
            ("Unrecognized TCB status Foo in QE Identity", QE_IDENTITY),
            (
                "Unrecognized TCB status Foo in TDX module identity",
                MODULE_IDENTITY,
            ),
            (
                "Unsupported QE Identity id/version for the quote TEE type: QE version 2 (expected TD_QE version [2, 3])",
                QE_IDENTITY_SIG,
            ),
            ("TD profiling is enabled", TD_ATTRIBUTES),
            ("SEPT_VE_DISABLE is not enabled", super::super::CHECK_SEPT),
        ] {
            assert_eq!(classify_text(message), Some(check), "{message}");
        }
        assert_eq!(classify_text("something new"), None);
    }

    /// No step is said to have passed that did not run.
    #[test]
    fn a_failure_passes_only_the_steps_before_it() {
        let (passed, never) = steps_around(QE_IDENTITY_SIG);
        assert_eq!(passed, &[CRLS, TCB_INFO]);
        assert_eq!(never.len(), STEPS.len() - 3);
        // A revoked status is refused after the module identity, before the attributes.
        let (passed, never) = steps_around(TCB_STATUS);
        assert_eq!(passed.last(), Some(&MODULE_IDENTITY));
        assert_eq!(never, &[TD_ATTRIBUTES]);
        // SEPT_VE_DISABLE is the last attribute rule: the others passed.
        let (passed, never) = steps_around(super::super::CHECK_SEPT);
        assert_eq!((passed.len(), never.len()), (STEPS.len(), 0));
        // What cannot be placed passes nothing.
        let (passed, never) = steps_around(UNCLASSIFIED);
        assert_eq!((passed.len(), never.len()), (0, STEPS.len()));
    }
}
