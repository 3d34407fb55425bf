//! The GPU collateral bundle (docs/formats.md §12): RIMs filed under their RIM service ids and
//! stapled OCSP answers, for one or more GPUs, gathered once and carried with the evidence as
//! DCAP collateral is. Also the readers for the loose files `verify-gpu` takes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::verify::{GpuCollateral, RimFile};

/// The `format` value of this version of the bundle.
pub const GPU_COLLATERAL_FORMAT: &str = "tdx-agent/gpu-collateral/v1";
/// No real RIM is above 100 KiB, nor OCSP answer above 8 KiB: a bundle above this is hostile.
pub const MAX_BUNDLE_BYTES: usize = 16 << 20;
/// NVIDIA's answers number about nine per host and one more per GPU (its BROM certificate):
/// 256 covers 64 GPUs with room. Each answer can cost a P-384 verification per certificate
/// it names, so the count, not only the bytes, is bounded.
pub const MAX_OCSP_ANSWERS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuCollateralError {
    #[error("GPU collateral {source_name}: {detail}")]
    Parse { source_name: String, detail: String },
    #[error("GPU collateral {source_name}: {field}: {detail}")]
    Field {
        source_name: String,
        field: String,
        detail: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleRim {
    id: String,
    /// Base64 of the RIM XML as NVIDIA's RIM service returns it.
    xml: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    format: String,
    #[serde(default)]
    rims: Vec<BundleRim>,
    /// Base64 of DER OCSPResponse.
    #[serde(default)]
    ocsp: Vec<String>,
}

/// A RIM service id: `NV_GPU_…`, letters, digits, `_` and `.` only (it becomes a file name
/// in caches and a URL path segment).
pub fn valid_rim_id(id: &str) -> bool {
    id.starts_with("NV_GPU_")
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

impl GpuCollateral {
    pub fn from_bundle_json(text: &[u8], source_name: &str) -> Result<Self, GpuCollateralError> {
        let parse = |detail: String| GpuCollateralError::Parse {
            source_name: source_name.to_string(),
            detail,
        };
        let field = |field: String, detail: String| GpuCollateralError::Field {
            source_name: source_name.to_string(),
            field,
            detail,
        };
        if text.len() > MAX_BUNDLE_BYTES {
            return Err(parse(format!(
                "{} bytes, more than the {MAX_BUNDLE_BYTES} a bundle may have",
                text.len()
            )));
        }
        let b: Bundle = serde_json::from_slice(text).map_err(|e| parse(e.to_string()))?;
        if b.format != GPU_COLLATERAL_FORMAT {
            return Err(field(
                "format".into(),
                format!("{:?}, expected {GPU_COLLATERAL_FORMAT:?}", b.format),
            ));
        }
        let mut rims = Vec::with_capacity(b.rims.len());
        for (i, r) in b.rims.into_iter().enumerate() {
            if !valid_rim_id(&r.id) {
                return Err(field(
                    format!("rims[{i}].id"),
                    format!("{:?} is not a RIM service id (NV_GPU_…)", r.id),
                ));
            }
            if rims
                .iter()
                .any(|f: &RimFile| f.id.as_deref() == Some(r.id.as_str()))
            {
                return Err(field(
                    format!("rims[{i}].id"),
                    format!("{} appears twice", r.id),
                ));
            }
            let xml = STANDARD
                .decode(r.xml.as_bytes())
                .map_err(|e| field(format!("rims[{i}].xml"), format!("not base64: {e}")))?;
            rims.push(RimFile {
                id: Some(r.id),
                xml,
            });
        }
        if b.ocsp.len() > MAX_OCSP_ANSWERS {
            return Err(field(
                "ocsp".into(),
                format!(
                    "{} answers, at most {MAX_OCSP_ANSWERS} (about nine per host and one per GPU is what NVIDIA's responder gives)",
                    b.ocsp.len()
                ),
            ));
        }
        let ocsp = b
            .ocsp
            .iter()
            .enumerate()
            .map(|(i, o)| {
                STANDARD
                    .decode(o.as_bytes())
                    .map_err(|e| field(format!("ocsp[{i}]"), format!("not base64: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rims, ocsp })
    }

    pub fn to_bundle_json(&self) -> String {
        let b = Bundle {
            format: GPU_COLLATERAL_FORMAT.to_string(),
            rims: self
                .rims
                .iter()
                .filter_map(|r| {
                    Some(BundleRim {
                        id: r.id.clone()?,
                        xml: STANDARD.encode(&r.xml),
                    })
                })
                .collect(),
            ocsp: self.ocsp.iter().map(|o| STANDARD.encode(o)).collect(),
        };
        // Strings only: serialisation cannot fail.
        serde_json::to_string_pretty(&b).unwrap_or_default()
    }

    /// Add what `other` has that this bundle lacks (RIMs by id, answers by bytes).
    pub fn merge(&mut self, other: GpuCollateral) {
        for r in other.rims {
            let known = self
                .rims
                .iter()
                .any(|f| (r.id.is_some() && f.id == r.id) || f.xml == r.xml);
            if !known {
                self.rims.push(r);
            }
        }
        for o in other.ocsp {
            if !self.ocsp.contains(&o) {
                self.ocsp.push(o);
            }
        }
    }
}

/// A report file as the public vectors and NVML dumps come: raw bytes, or hex text (optional
/// `0x`, whitespace anywhere). A raw report starts with 0x11, never a hex digit.
pub fn decode_report_file(bytes: Vec<u8>) -> Vec<u8> {
    decode_text_or(bytes, |t| {
        let t = t.strip_prefix("0x").unwrap_or(t);
        hex::decode(t).ok()
    })
}

/// An OCSP answer file: DER, or base64 text (how go-nvattest-tools keeps them). DER starts
/// with 0x30, never a base64 character.
pub fn decode_ocsp_file(bytes: Vec<u8>) -> Vec<u8> {
    decode_text_or(bytes, |t| STANDARD.decode(t).ok())
}

fn decode_text_or(bytes: Vec<u8>, decode: impl Fn(&str) -> Option<Vec<u8>>) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return bytes;
    };
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return bytes;
    }
    decode(&compact).unwrap_or(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_of_ocsp_answers_is_bounded_not_only_their_bytes() {
        let bundle = |n: usize| {
            serde_json::json!({
                "format": GPU_COLLATERAL_FORMAT,
                "ocsp": vec![STANDARD.encode(b"x"); n],
            })
            .to_string()
        };
        let at_most = GpuCollateral::from_bundle_json(bundle(MAX_OCSP_ANSWERS).as_bytes(), "b")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(at_most.ocsp.len(), MAX_OCSP_ANSWERS);
        let err = GpuCollateral::from_bundle_json(bundle(MAX_OCSP_ANSWERS + 1).as_bytes(), "b")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ocsp") && err.contains("at most 256"), "{err}");
    }
}
