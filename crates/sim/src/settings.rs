//! `SimSettings`: the knobs of the simulated TD and PKI, persisted as DIR/settings.json.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use super::SimError;
use tdx_tee::Sha384 as Reg;

/// TD attribute bit 0: the TD runs in debug mode (host can read its memory).
pub const TD_ATTR_DEBUG: u64 = 1 << 0;
/// TD attribute bit 28: EPT violations on pending pages are not turned into #VE.
pub const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

/// TCB statuses dcap-qvl accepts in a TCB info level (others make it reject the collateral).
pub const TCB_STATUSES: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// How long generated collateral (CRLs, TCB info, QE identity) stays valid.
    pub collateral_lifetime_secs: u64,
    /// Delay before each quote; 1000 mimics today's kernels (the driver polls once a second).
    pub quote_delay_ms: u64,
    #[serde(with = "hex48")]
    pub mrtd: Reg,
    #[serde(with = "hex48")]
    pub rtmr0: Reg,
    #[serde(with = "hex48")]
    pub rtmr1: Reg,
    #[serde(with = "hex48")]
    pub rtmr2: Reg,
    #[serde(with = "hex48")]
    pub mrconfigid: Reg,
    #[serde(with = "hex48")]
    pub mrowner: Reg,
    #[serde(with = "hex48")]
    pub mrownerconfig: Reg,
    /// TDATTRIBUTES as a number (bit 0 DEBUG, bit 28 SEPT_VE_DISABLE).
    pub td_attributes: u64,
    pub xfam: u64,
    /// Only a v5 (TD 1.5) quote carries it.
    #[serde(with = "hex48")]
    pub mrservicetd: Reg,
    /// 4 (TD 1.0 body) or 5 (body type 3, TD 1.5).
    pub quote_version: u16,
    /// Status of the platform's TCB level in the generated TCB info.
    pub tcb_status: String,
    pub advisory_ids: Vec<String>,
    pub tcb_evaluation_data_number: u32,
}

/// A fixed, recognisable register value: SHA-384 of a label, so defaults are non-zero and
/// obviously simulated when printed.
pub fn labelled(label: &str) -> Reg {
    Sha384::digest(format!("tdx-agent simulated {label}").as_bytes()).into()
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            collateral_lifetime_secs: 30 * 86400,
            quote_delay_ms: 0,
            mrtd: labelled("MRTD"),
            rtmr0: labelled("RTMR0"),
            rtmr1: labelled("RTMR1"),
            rtmr2: labelled("RTMR2"),
            mrconfigid: labelled("MRCONFIGID"),
            mrowner: labelled("MROWNER"),
            mrownerconfig: labelled("MROWNERCONFIG"),
            td_attributes: TD_ATTR_SEPT_VE_DISABLE,
            xfam: 0x61ae7,
            mrservicetd: [0; 48],
            quote_version: 4,
            tcb_status: "UpToDate".into(),
            advisory_ids: Vec::new(),
            tcb_evaluation_data_number: 17,
        }
    }
}

impl SimSettings {
    /// Reject values that would make the simulation produce evidence no verifier could read.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field, detail: String| Err(SimError::InvalidSetting { field, detail });
        if !matches!(self.quote_version, 4 | 5) {
            return bad(
                "quote_version",
                format!("{} (expected 4 or 5)", self.quote_version),
            );
        }
        if self.quote_version == 4 && self.mrservicetd != [0; 48] {
            return bad(
                "mrservicetd",
                "is non-zero but a v4 quote (TD 1.0 body) has no MRSERVICETD; set quote_version 5"
                    .into(),
            );
        }
        if !TCB_STATUSES.contains(&self.tcb_status.as_str()) {
            return bad(
                "tcb_status",
                format!(
                    "{:?} (expected one of {})",
                    self.tcb_status,
                    TCB_STATUSES.join(", ")
                ),
            );
        }
        if self.collateral_lifetime_secs == 0 {
            return bad("collateral_lifetime_secs", "must be at least 1".into());
        }
        // Far-future dates would overflow the RFC 3339 and ASN.1 time encodings.
        if self.collateral_lifetime_secs > 100 * 365 * 86400 {
            return bad(
                "collateral_lifetime_secs",
                "must be at most 100 years".into(),
            );
        }
        if self.quote_delay_ms > 600_000 {
            return bad(
                "quote_delay_ms",
                "must be at most 600000 (10 minutes)".into(),
            );
        }
        for id in &self.advisory_ids {
            if id.is_empty() || id.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
                return bad("advisory_ids", format!("{id:?} is not a plain advisory ID"));
            }
        }
        Ok(())
    }

    /// Parse settings.json text; unknown fields and invalid values are errors.
    pub fn from_json(text: &str) -> Result<SimSettings, SimError> {
        let s: SimSettings = serde_json::from_str(text).map_err(|e| SimError::InvalidSetting {
            field: "settings.json",
            detail: e.to_string(),
        })?;
        s.validate()?;
        Ok(s)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain fields cannot fail; fall back to an empty object just in case.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into()) + "\n"
    }
}

pub(crate) mod hex48 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; 48], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 48], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text)
            .map_err(|e| D::Error::custom(format!("expected 96 hex digits: {e}")))?;
        bytes
            .try_into()
            .map_err(|b: Vec<u8>| D::Error::custom(format!("expected 48 bytes, got {}", b.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_roundtrip() {
        let s = SimSettings::default();
        s.validate().unwrap();
        assert_eq!(SimSettings::from_json(&s.to_json()).unwrap(), s);
        assert_eq!(s.td_attributes, 1 << 28);
        assert_ne!(s.mrtd, [0; 48]);
    }

    #[test]
    fn rejects_bad_values() {
        let s = SimSettings {
            quote_version: 6,
            ..Default::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("quote_version") && e.contains('6'), "{e}");

        let s = SimSettings {
            tcb_status: "Fine".into(),
            ..Default::default()
        };
        assert!(s.validate().is_err());

        let s = SimSettings {
            mrservicetd: [1; 48],
            ..Default::default()
        };
        assert!(s.validate().is_err());

        assert!(SimSettings::from_json(r#"{"quote_version":4,"bogus":1}"#).is_err());
        assert!(SimSettings::from_json(r#"{"mrtd":"abcd"}"#).is_err());
        // Missing fields take their defaults.
        let s = SimSettings::from_json(r#"{"quote_version":5}"#).unwrap();
        assert_eq!(s.quote_version, 5);
        assert_eq!(s.xfam, 0x61ae7);
    }
}
