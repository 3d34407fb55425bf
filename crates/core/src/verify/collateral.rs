//! Intel-signed collateral for one quote, and the JSON bundle file that carries it.
//!
//! The bundle is the JSON form dcap-qvl and the shared vectors use: the nine fields of
//! `QuoteCollateralV3`, text fields as text and binary fields (CRLs, signatures) as hex.

use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer as _;

/// The DCAP collateral (dcap-qvl's `QuoteCollateralV3` fields) in raw form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collateral {
    /// PEM chain (PCK CA, root) that signed the PCK CRL.
    pub pck_crl_issuer_chain: String,
    /// DER of the root CA's CRL.
    pub root_ca_crl: Vec<u8>,
    /// DER of the PCK (processor or platform) CA's CRL.
    pub pck_crl: Vec<u8>,
    /// PEM chain (TCB signing cert, root) that signed the TCB info.
    pub tcb_info_issuer_chain: String,
    /// The exact signed JSON text of the `tcbInfo` object.
    pub tcb_info: String,
    /// Raw 64-byte ECDSA P-256 r||s over `tcb_info`.
    pub tcb_info_signature: Vec<u8>,
    /// PEM chain that signed the QE identity.
    pub qe_identity_issuer_chain: String,
    /// The exact signed JSON text of the `enclaveIdentity` object.
    pub qe_identity: String,
    /// Raw 64-byte ECDSA P-256 r||s over `qe_identity`.
    pub qe_identity_signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CollateralError {
    #[error("collateral bundle {source_name}: {detail}")]
    Bundle { source_name: String, detail: String },
    #[error("collateral bundle {source_name}: field {field:?} is {detail}")]
    Field {
        source_name: String,
        field: &'static str,
        detail: String,
    },
    #[error("collateral {item} (field {field}): {detail}")]
    Item {
        item: &'static str,
        field: &'static str,
        detail: String,
    },
}

/// The bundle's on-disk shape.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    pck_crl_issuer_chain: String,
    root_ca_crl: String,
    pck_crl: String,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: String,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: String,
    /// dcap-qvl writes this for PCK cert type 3 quotes. TD quotes carry their own chain
    /// (type 5), which is the one we verify, so a chain here is accepted and ignored.
    #[serde(default, skip_serializing)]
    #[allow(dead_code)]
    pck_certificate_chain: Option<String>,
}

impl Collateral {
    /// Parse a bundle file's text; `source_name` names it in errors.
    pub fn from_bundle_json(text: &str, source_name: &str) -> Result<Self, CollateralError> {
        let b: Bundle = serde_json::from_str(text).map_err(|e| CollateralError::Bundle {
            source_name: source_name.to_string(),
            detail: e.to_string(),
        })?;
        let hex_field = |field: &'static str, value: &str| {
            hex::decode(value.trim()).map_err(|e| CollateralError::Field {
                source_name: source_name.to_string(),
                field,
                detail: format!("not hex: {e}"),
            })
        };
        let sig_field = |field: &'static str, value: &str| {
            let sig = hex_field(field, value)?;
            if sig.len() != 64 {
                return Err(CollateralError::Field {
                    source_name: source_name.to_string(),
                    field,
                    detail: format!("{} bytes, expected a 64-byte r||s signature", sig.len()),
                });
            }
            Ok(sig)
        };
        let c = Collateral {
            root_ca_crl: hex_field("root_ca_crl", &b.root_ca_crl)?,
            pck_crl: hex_field("pck_crl", &b.pck_crl)?,
            tcb_info_signature: sig_field("tcb_info_signature", &b.tcb_info_signature)?,
            qe_identity_signature: sig_field("qe_identity_signature", &b.qe_identity_signature)?,
            pck_crl_issuer_chain: b.pck_crl_issuer_chain,
            tcb_info_issuer_chain: b.tcb_info_issuer_chain,
            tcb_info: b.tcb_info,
            qe_identity_issuer_chain: b.qe_identity_issuer_chain,
            qe_identity: b.qe_identity,
        };
        // Catch a malformed field now, naming it, rather than deep inside verification.
        c.window()
            .and_then(|_| c.tcb_evaluation_data_number())
            .map_err(|e| CollateralError::Bundle {
                source_name: source_name.to_string(),
                detail: e.to_string(),
            })?;
        for (field, pem) in [
            ("pck_crl_issuer_chain", &c.pck_crl_issuer_chain),
            ("tcb_info_issuer_chain", &c.tcb_info_issuer_chain),
            ("qe_identity_issuer_chain", &c.qe_identity_issuer_chain),
        ] {
            crate::quote::pem_certificates(pem.as_bytes()).map_err(|e| CollateralError::Field {
                source_name: source_name.to_string(),
                field,
                detail: e.to_string(),
            })?;
        }
        Ok(c)
    }

    pub fn to_bundle_json(&self) -> String {
        let b = Bundle {
            pck_crl_issuer_chain: self.pck_crl_issuer_chain.clone(),
            root_ca_crl: hex::encode(&self.root_ca_crl),
            pck_crl: hex::encode(&self.pck_crl),
            tcb_info_issuer_chain: self.tcb_info_issuer_chain.clone(),
            tcb_info: self.tcb_info.clone(),
            tcb_info_signature: hex::encode(&self.tcb_info_signature),
            qe_identity_issuer_chain: self.qe_identity_issuer_chain.clone(),
            qe_identity: self.qe_identity.clone(),
            qe_identity_signature: hex::encode(&self.qe_identity_signature),
            pck_certificate_chain: None,
        };
        // A struct of strings always serialises.
        serde_json::to_string_pretty(&b).unwrap_or_default()
    }

    /// The validity of each dated item; the collateral is usable in
    /// `[latest issue, earliest next update)`.
    pub fn window(&self) -> Result<Window, CollateralError> {
        let tcb = signed_json_dates(&self.tcb_info, TCB_INFO)?;
        let qe = signed_json_dates(&self.qe_identity, QE_IDENTITY)?;
        let root_crl = crl_dates(&self.root_ca_crl, ("root CA CRL", "root_ca_crl"))?;
        let pck_crl = crl_dates(&self.pck_crl, ("PCK CRL", "pck_crl"))?;
        Ok(Window {
            items: vec![tcb, qe, root_crl, pck_crl],
        })
    }

    /// `tcbEvaluationDataNumber` of the TCB info and the QE identity, the smaller of the two.
    pub fn tcb_evaluation_data_number(&self) -> Result<u32, CollateralError> {
        let tcb = json_u32(&self.tcb_info, TCB_INFO, "tcbEvaluationDataNumber")?;
        let qe = json_u32(&self.qe_identity, QE_IDENTITY, "tcbEvaluationDataNumber")?;
        Ok(tcb.min(qe))
    }
}

/// Collateral read once and kept ready for repeated appraisals: its window, evaluation data
/// number and dcap-qvl form are computed when it is prepared, not per quote.
#[derive(Clone, Debug)]
pub struct PreparedCollateral {
    raw: Collateral,
    dcap: dcap_qvl::QuoteCollateralV3,
    window: Window,
    tcb_evaluation_data_number: u32,
}

impl PreparedCollateral {
    pub fn new(raw: Collateral) -> Result<Self, CollateralError> {
        Ok(Self {
            dcap: (&raw).into(),
            window: raw.window()?,
            tcb_evaluation_data_number: raw.tcb_evaluation_data_number()?,
            raw,
        })
    }

    pub fn raw(&self) -> &Collateral {
        &self.raw
    }

    pub fn dcap(&self) -> &dcap_qvl::QuoteCollateralV3 {
        &self.dcap
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    pub fn tcb_evaluation_data_number(&self) -> u32 {
        self.tcb_evaluation_data_number
    }
}

impl Collateral {
    /// Compute everything an appraisal needs once; fails, naming the field, on malformed dates.
    pub fn prepare(self) -> Result<PreparedCollateral, CollateralError> {
        PreparedCollateral::new(self)
    }
}

impl From<&Collateral> for dcap_qvl::QuoteCollateralV3 {
    fn from(c: &Collateral) -> Self {
        dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: c.pck_crl_issuer_chain.clone(),
            root_ca_crl: c.root_ca_crl.clone(),
            pck_crl: c.pck_crl.clone(),
            tcb_info_issuer_chain: c.tcb_info_issuer_chain.clone(),
            tcb_info: c.tcb_info.clone(),
            tcb_info_signature: c.tcb_info_signature.clone(),
            qe_identity_issuer_chain: c.qe_identity_issuer_chain.clone(),
            qe_identity: c.qe_identity.clone(),
            qe_identity_signature: c.qe_identity_signature.clone(),
            pck_certificate_chain: None,
        }
    }
}

/// Cut a signed collateral body `{"<key>": {...}, "signature": "<hex r||s>"}` (as a PCCS
/// serves it and DCAP staples it) into the exact signed text of `<key>` and the 64-byte
/// signature. `key` is `"tcbInfo"` or `"enclaveIdentity"`.
pub fn split_signed_body(text: &str, key: &str) -> Result<(String, Vec<u8>), String> {
    #[derive(Deserialize)]
    struct Signed<'a> {
        #[serde(borrow, rename = "tcbInfo")]
        tcb_info: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow, rename = "enclaveIdentity")]
        enclave_identity: Option<&'a serde_json::value::RawValue>,
        signature: String,
    }
    let signed: Signed<'_> =
        serde_json::from_str(text).map_err(|e| format!("not the signed JSON body: {e}"))?;
    let raw = match key {
        "tcbInfo" => signed.tcb_info,
        _ => signed.enclave_identity,
    }
    .ok_or_else(|| format!("no {key:?} member"))?;
    let sig =
        hex::decode(signed.signature.trim()).map_err(|e| format!("signature is not hex: {e}"))?;
    if sig.len() != 64 {
        return Err(format!(
            "signature is {} bytes, expected a 64-byte r||s",
            sig.len()
        ));
    }
    // The signature covers these exact bytes: never re-serialise them.
    Ok((raw.get().to_string(), sig))
}

/// One dated collateral item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Dated {
    pub item: &'static str,
    /// Unix seconds.
    pub issued: i64,
    /// Unix seconds; the item has expired at this instant (half-open window).
    pub next_update: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    pub items: Vec<Dated>,
}

impl Window {
    pub fn not_before(&self) -> i64 {
        self.items
            .iter()
            .map(|d| d.issued)
            .max()
            .unwrap_or(i64::MAX)
    }

    pub fn next_update(&self) -> i64 {
        self.items
            .iter()
            .map(|d| d.next_update)
            .min()
            .unwrap_or(i64::MIN)
    }

    /// The item that puts `now` outside the window: the earliest to expire, or else the
    /// latest to be issued.
    pub fn violation(&self, now: i64) -> Option<&Dated> {
        let expired = self
            .items
            .iter()
            .filter(|d| now >= d.next_update)
            .min_by_key(|d| d.next_update);
        expired.or_else(|| {
            self.items
                .iter()
                .filter(|d| now < d.issued)
                .max_by_key(|d| d.issued)
        })
    }
}

/// (what people call it, the bundle field that holds it)
type ItemName = (&'static str, &'static str);
const TCB_INFO: ItemName = ("TCB info", "tcb_info");
const QE_IDENTITY: ItemName = ("QE identity", "qe_identity");

fn item_error((item, field): ItemName, detail: String) -> CollateralError {
    CollateralError::Item {
        item,
        field,
        detail,
    }
}

fn json_value(text: &str, item: ItemName) -> Result<serde_json::Value, CollateralError> {
    serde_json::from_str(text).map_err(|e| item_error(item, format!("not JSON: {e}")))
}

fn json_u32(text: &str, item: ItemName, key: &str) -> Result<u32, CollateralError> {
    json_value(text, item)?
        .get(key)
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| item_error(item, format!("{key} is missing or not a 32-bit number")))
}

fn signed_json_dates(text: &str, item: ItemName) -> Result<Dated, CollateralError> {
    let v = json_value(text, item)?;
    let date = |key: &str| {
        let s = v
            .get(key)
            .and_then(|d| d.as_str())
            .ok_or_else(|| item_error(item, format!("{key} is missing")))?;
        crate::verify::time::parse_rfc3339(s)
            .map_err(|e| item_error(item, format!("{key} {s:?}: {e}")))
    };
    Ok(Dated {
        item: item.0,
        issued: date("issueDate")?,
        next_update: date("nextUpdate")?,
    })
}

fn crl_dates(der: &[u8], item: ItemName) -> Result<Dated, CollateralError> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
        .map_err(|e| item_error(item, format!("not a DER CRL: {e}")))?;
    let next = crl
        .next_update()
        .ok_or_else(|| item_error(item, "has no nextUpdate".into()))?;
    Ok(Dated {
        item: item.0,
        issued: crl.last_update().timestamp(),
        next_update: next.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::vector_text;

    #[test]
    fn reads_the_vector_bundles() {
        for path in [
            "phala-dcap-qvl/tdx_quote_collateral.json",
            "phala-dcap-qvl/tdx_quote_outdated_collateral.json",
            "google-go-tdx-guest/tdx_prod_quote_SPR_E4_collateral.json",
        ] {
            let c = Collateral::from_bundle_json(&vector_text(path), path).unwrap();
            let again = Collateral::from_bundle_json(&c.to_bundle_json(), "roundtrip").unwrap();
            assert_eq!(c, again);
        }
    }

    #[test]
    fn window_is_half_open() {
        let path = "phala-dcap-qvl/tdx_quote_collateral.json";
        let c = Collateral::from_bundle_json(&vector_text(path), path).unwrap();
        let w = c.window().unwrap();
        assert_eq!(w.next_update(), 1_752_919_235);
        assert!(w.violation(1_752_919_234).is_none());
        // The earliest item to expire is named, whatever the order of the items.
        let first = w.violation(1_752_919_235).unwrap();
        assert_eq!(first.next_update, w.next_update());
        assert_eq!(
            w.violation(1_785_888_000).unwrap().next_update,
            w.next_update()
        );
        assert!(w.violation(w.not_before() - 1).is_some());
    }

    #[test]
    fn missing_or_malformed_fields_are_named() {
        let path = "phala-dcap-qvl/tdx_quote_collateral.json";
        let text = vector_text(path);
        let full: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<String> = full.as_object().unwrap().keys().cloned().collect();
        for key in &keys {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(key);
            let err = Collateral::from_bundle_json(&v.to_string(), "b.json").unwrap_err();
            assert!(err.to_string().contains(key.as_str()), "{key}: {err}");

            let mut v = full.clone();
            v[key.as_str()] = serde_json::Value::String("zz-not-valid".into());
            let err = Collateral::from_bundle_json(&v.to_string(), "b.json").unwrap_err();
            assert!(err.to_string().contains("b.json"), "{key}: {err}");
        }
        let mut v = full.clone();
        v["surprise"] = serde_json::Value::Null;
        assert!(Collateral::from_bundle_json(&v.to_string(), "b.json").is_err());
    }
}
