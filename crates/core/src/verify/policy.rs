//! The appraisal policy: which TCB statuses, TD attributes and measurements are acceptable.
//!
//! Parsed from TOML into typed values (`deny_unknown_fields`, hex fields of the exact width),
//! so a policy that loads is a policy that means what it says.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A TCB status as Intel's collateral names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    UpToDate,
    SWHardeningNeeded,
    ConfigurationNeeded,
    ConfigurationAndSWHardeningNeeded,
    OutOfDate,
    OutOfDateConfigurationNeeded,
    TDRelaunchAdvised,
    TDRelaunchAdvisedConfigurationNeeded,
    Revoked,
}

impl TcbStatus {
    pub fn from_dcap(s: &str) -> Option<Self> {
        Some(match s {
            "UpToDate" => Self::UpToDate,
            "SWHardeningNeeded" => Self::SWHardeningNeeded,
            "ConfigurationNeeded" => Self::ConfigurationNeeded,
            "ConfigurationAndSWHardeningNeeded" => Self::ConfigurationAndSWHardeningNeeded,
            "OutOfDate" => Self::OutOfDate,
            "OutOfDateConfigurationNeeded" => Self::OutOfDateConfigurationNeeded,
            "TDRelaunchAdvised" => Self::TDRelaunchAdvised,
            "TDRelaunchAdvisedConfigurationNeeded" => Self::TDRelaunchAdvisedConfigurationNeeded,
            "Revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `N` bytes written as hex in the policy file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HexBytes<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Debug for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> fmt::Display for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for HexBytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::encoding::hex_array::<N>(&s)
            .map(HexBytes)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl<const N: usize> Serialize for HexBytes<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

pub type Hex48 = HexBytes<48>;

/// A 64-bit attribute mask written as hex (`"0x61ae7"`) in the policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HexU64(pub u64);

impl<'de> Deserialize<'de> for HexU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        // One optional 0x, then hex digits only: `from_str_radix` alone would take a sign,
        // and stripping the prefix repeatedly would take "0x0x1".
        let digits = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(serde::de::Error::custom(format!(
                "{s:?} is not a hex u64: hex digits, with an optional 0x"
            )));
        }
        u64::from_str_radix(digits, 16)
            .map(HexU64)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a hex u64: {e}")))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub tcb: TcbPolicy,
    pub td: TdPolicy,
    pub measurements: MeasurementPolicy,
    pub rtmr3_events: EventPolicy,
    /// Only read where GPU evidence is appraised (`verify-gpu`, and the TD's GPUs).
    pub gpu: crate::gpu::GpuPolicy,
}

impl Policy {
    /// Whether the policy pins anything about what runs: a register or a runtime event.
    /// Without that, any genuine TD on an accepted platform passes.
    pub fn pins_anything(&self) -> bool {
        self.measurements.pins_anything() || self.rtmr3_events.pins_anything()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcbPolicy {
    /// TCB statuses accepted. Default: UpToDate only.
    pub accepted_statuses: BTreeSet<TcbStatus>,
    /// Advisory IDs (e.g. "INTEL-SA-00837") that are tolerated when a non-UpToDate status
    /// is accepted. Empty = any advisory of an accepted status is tolerated.
    pub accepted_advisory_ids: BTreeSet<String>,
    /// Refuse collateral older than this TCB recovery event. Default 0 (any).
    pub min_tcb_evaluation_data_number: u32,
}

impl Default for TcbPolicy {
    fn default() -> Self {
        Self {
            accepted_statuses: BTreeSet::from([TcbStatus::UpToDate]),
            accepted_advisory_ids: BTreeSet::new(),
            min_tcb_evaluation_data_number: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TdPolicy {
    /// Accept a debuggable TD (its memory is readable by the host). Default false.
    pub insecure_allow_debug: bool,
    /// Require TDATTRIBUTES.SEPT_VE_DISABLE. Default true; dcap-qvl 0.7 refuses quotes without
    /// it whatever we say, so `false` is rejected when the policy loads.
    pub require_sept_ve_disable: bool,
    /// Accepted MRSERVICETD values. Default: only all zeros (no service TD bound).
    pub allowed_mrservicetd: Vec<Hex48>,
    /// Accepted XFAM values. Empty = any.
    pub allowed_xfam: Vec<HexU64>,
    /// Accepted MRSEAM (TDX module measurement) values. Empty = any.
    pub allowed_mrseam: Vec<Hex48>,
    /// Minimum TEE_TCB_SVN, compared byte by byte. Absent = any.
    pub min_tee_tcb_svn: Option<HexBytes<16>>,
}

impl Default for TdPolicy {
    fn default() -> Self {
        Self {
            insecure_allow_debug: false,
            require_sept_ve_disable: true,
            allowed_mrservicetd: vec![HexBytes([0; 48])],
            allowed_xfam: Vec::new(),
            allowed_mrseam: Vec::new(),
            min_tee_tcb_svn: None,
        }
    }
}

/// Allowed values per register; an empty list leaves that register unpinned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasurementPolicy {
    pub mrtd: Vec<Hex48>,
    pub rtmr0: Vec<Hex48>,
    pub rtmr1: Vec<Hex48>,
    pub rtmr2: Vec<Hex48>,
    pub rtmr3: Vec<Hex48>,
    pub mrconfigid: Vec<Hex48>,
    pub mrowner: Vec<Hex48>,
    pub mrownerconfig: Vec<Hex48>,
}

impl MeasurementPolicy {
    /// (register name, allowed values) for every register.
    pub fn pins(&self) -> [(&'static str, &[Hex48]); 8] {
        [
            ("MRTD", &self.mrtd),
            ("RTMR0", &self.rtmr0),
            ("RTMR1", &self.rtmr1),
            ("RTMR2", &self.rtmr2),
            ("RTMR3", &self.rtmr3),
            ("MRCONFIGID", &self.mrconfigid),
            ("MROWNER", &self.mrowner),
            ("MROWNERCONFIG", &self.mrownerconfig),
        ]
    }

    pub fn pins_anything(&self) -> bool {
        self.pins().iter().any(|(_, v)| !v.is_empty())
    }

    /// The registers that identify the TD image (firmware, its configuration and the ACPI
    /// tables, boot loader and kernel, command line and initrd) which this policy leaves
    /// unpinned. Only these are fixed before the image's own code runs: RTMR3 and its events
    /// can be extended to any value by whatever runs in the TD, and the owner registers are
    /// chosen by the host, so pinning only those accepts any image that replays them.
    pub fn unpinned_image_registers(&self) -> Vec<&'static str> {
        const IMAGE: [&str; 4] = ["MRTD", "RTMR0", "RTMR1", "RTMR2"];
        self.pins()
            .into_iter()
            .filter(|(name, v)| IMAGE.contains(name) && v.is_empty())
            .map(|(name, _)| name)
            .collect()
    }
}

/// Which runtime events (the RTMR3 event log, docs/design.md §7) are acceptable. With no pins the log
/// is only replayed against RTMR3; with pins, every logged event must be one they allow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventPolicy {
    pub pin: Vec<EventPin>,
    /// With pins: also accept event types no pin names. Default false: an event nobody
    /// anticipated means the TD runs something the policy author did not review.
    pub insecure_allow_unlisted: bool,
    /// Insecure settings of the agent (the `insecure` list of its agent-config event) to
    /// accept although no other check judges what they weaken, e.g.
    /// `upstream.insecure_allow_non_loopback` (the model server may be outside the TD). By
    /// default an agent running with such a setting is refused (check `agent insecure
    /// settings`).
    pub insecure_accept_agent_settings: Vec<String>,
}

impl EventPolicy {
    pub fn pins_anything(&self) -> bool {
        !self.pin.is_empty()
    }
}

/// One event type and the `data` values accepted for it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventPin {
    #[serde(rename = "type")]
    pub kind: String,
    /// Accepted `data`, each matched as a subset: every key it gives must be equal in the
    /// event (so `{ manifest_sha256 = "..." }` pins the model and ignores the file count).
    /// Absent or empty: any data.
    #[serde(default)]
    pub allowed: Vec<serde_json::Map<String, serde_json::Value>>,
    /// The log need not contain this type. Default false: a pinned event must be present.
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {source_name}: {detail}")]
    Parse { source_name: String, detail: String },
    #[error("policy {source_name}: {field}: {detail}")]
    Invalid {
        source_name: String,
        field: &'static str,
        detail: String,
    },
}

impl Policy {
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            source_name: source_name.to_string(),
            detail: parse_error_without_source(text, &e),
        })?;
        policy.validate(source_name)?;
        Ok(policy)
    }

    fn validate(&self, source_name: &str) -> Result<(), PolicyError> {
        let invalid = |field, detail: &str| PolicyError::Invalid {
            source_name: source_name.to_string(),
            field,
            detail: detail.to_string(),
        };
        if self.tcb.accepted_statuses.is_empty() {
            return Err(invalid(
                "tcb.accepted_statuses",
                "is empty, so no quote could ever pass; list at least \"UpToDate\"",
            ));
        }
        if self.tcb.accepted_statuses.contains(&TcbStatus::Revoked) {
            return Err(invalid(
                "tcb.accepted_statuses",
                "lists Revoked: a revoked platform's keys are compromised and is never accepted",
            ));
        }
        if !self.td.require_sept_ve_disable {
            return Err(invalid(
                "td.require_sept_ve_disable",
                "cannot be false: the quote verifier (dcap-qvl 0.7) always refuses a TD without SEPT_VE_DISABLE",
            ));
        }
        if self.td.allowed_mrservicetd.is_empty() {
            return Err(invalid(
                "td.allowed_mrservicetd",
                "is empty, so no quote could ever pass; leave it out to allow only all zeros",
            ));
        }
        if let Some((field, detail)) = self.gpu.invalid() {
            return Err(invalid(field, detail));
        }
        let mut seen = BTreeSet::new();
        for pin in &self.rtmr3_events.pin {
            if pin.kind.is_empty() {
                return Err(invalid("rtmr3_events.pin.type", "is empty"));
            }
            if !seen.insert(pin.kind.as_str()) {
                return Err(PolicyError::Invalid {
                    source_name: source_name.to_string(),
                    field: "rtmr3_events.pin.type",
                    detail: format!(
                        "{:?} is pinned twice; list every accepted value under one pin",
                        pin.kind
                    ),
                });
            }
            if pin.allowed.iter().any(|a| a.is_empty()) {
                return Err(PolicyError::Invalid {
                    source_name: source_name.to_string(),
                    field: "rtmr3_events.pin.allowed",
                    detail: format!(
                        "an empty table under {:?} would accept anything; leave `allowed` out to say that",
                        pin.kind
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A TOML error as "line L, column C: message", without the line of text that toml's own
/// rendering quotes: the file named as a policy may be something else (a secret, by mistake
/// or by someone who may only write the path), and these errors reach logs and a watcher's
/// unauthenticated `/readyz`.
fn parse_error_without_source(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_strict() {
        let p = Policy::from_toml("", "empty").unwrap();
        assert_eq!(p, Policy::default());
        assert_eq!(
            p.tcb.accepted_statuses,
            BTreeSet::from([TcbStatus::UpToDate])
        );
        assert!(!p.td.insecure_allow_debug);
        assert_eq!(p.td.allowed_mrservicetd, vec![HexBytes([0; 48])]);
        assert!(!p.measurements.pins_anything());
        assert!(p.gpu.insecure_switches().is_empty());
        assert_eq!(
            p.gpu.ocsp_max_age_secs,
            crate::gpu::DEFAULT_OCSP_MAX_AGE_SECS
        );
    }

    #[test]
    fn parse_errors_name_the_place_but_never_quote_the_file() {
        // A secret named as the policy by mistake must not come back in the error.
        let e = Policy::from_toml("# a comment\nsupersecret-token-123\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("supersecret"), "{e}");
        assert!(
            e.contains("p.toml") && e.contains("line 2, column 22"),
            "{e}"
        );
        let e = Policy::from_toml("[td]\nno_such_key = 1\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("no_such_key"), "{e}");
    }

    #[test]
    fn parses_a_gpu_table_into_typed_versions() {
        use crate::gpu::{Architecture, DriverVersion, VbiosVersion};
        let p = Policy::from_toml(
            r#"
[gpu]
architectures = ["hopper"]
min_driver_version = "550.90.07"
vbios_versions = ["96.00.9F.00.01", "96.00.88.00.11"]
ocsp_max_age_secs = 3600
insecure_allow_missing_fwid = true
"#,
            "p.toml",
        )
        .unwrap();
        assert_eq!(p.gpu.architectures, BTreeSet::from([Architecture::Hopper]));
        let min = p.gpu.min_driver_version.clone().unwrap();
        // Numeric, component by component: 550.100 is newer than 550.90.07, 545.99 older.
        assert!(DriverVersion::parse("550.100.1").unwrap() > min);
        assert!(DriverVersion::parse("550.90.07").unwrap() >= min);
        assert!(DriverVersion::parse("545.99.99").unwrap() < min);
        let vbios = p.gpu.vbios_versions.clone().unwrap();
        assert!(vbios.contains(&VbiosVersion::parse("96.00.9f.00.01").unwrap()));
        assert_eq!(
            p.gpu.insecure_switches(),
            vec!["gpu.insecure_allow_missing_fwid"]
        );
    }

    #[test]
    fn parses_a_full_policy() {
        let text = format!(
            r#"
[tcb]
accepted_statuses = ["UpToDate", "SWHardeningNeeded"]
min_tcb_evaluation_data_number = 17
[td]
allowed_xfam = ["0x61ae7"]
min_tee_tcb_svn = "{svn}"
[measurements]
mrtd = ["{h}"]
rtmr3 = ["{h}", "{z}"]
"#,
            svn = "03".repeat(16),
            h = "ab".repeat(48),
            z = "00".repeat(48)
        );
        let p = Policy::from_toml(&text, "p.toml").unwrap();
        assert!(
            p.tcb
                .accepted_statuses
                .contains(&TcbStatus::SWHardeningNeeded)
        );
        assert_eq!(p.td.allowed_xfam, vec![HexU64(0x61ae7)]);
        assert_eq!(p.measurements.rtmr3.len(), 2);
        assert!(p.measurements.pins_anything());
    }

    #[test]
    fn refuses_unknown_keys_bad_hex_and_meaningless_policies() {
        for (text, needle) in [
            ("surprise = 1", "surprise"),
            ("[td]\nallow_debug = true", "allow_debug"),
            ("[measurements]\nmrtd = [\"abcd\"]", "expected 48"),
            ("[measurements]\nrtmr0 = [\"zz\"]", "not hex"),
            ("[tcb]\naccepted_statuses = [\"Fine\"]", "Fine"),
            ("[tcb]\naccepted_statuses = []", "accepted_statuses"),
            ("[tcb]\naccepted_statuses = [\"Revoked\"]", "Revoked"),
            ("[td]\nrequire_sept_ve_disable = false", "SEPT_VE_DISABLE"),
            ("[td]\nallowed_mrservicetd = []", "allowed_mrservicetd"),
            ("[[rtmr3_events.pin]]\ntype = \"\"", "empty"),
            (
                "[[rtmr3_events.pin]]\ntype = \"m\"\n[[rtmr3_events.pin]]\ntype = \"m\"",
                "twice",
            ),
            (
                "[[rtmr3_events.pin]]\ntype = \"m\"\nallowed = [{}]",
                "accept anything",
            ),
            ("[[rtmr3_events.pin]]\ntype = \"m\"\nalowed = []", "alowed"),
            ("[gpu]\narchitectures = []", "gpu.architectures"),
            ("[gpu]\narchitectures = [\"ampere\"]", "ampere"),
            (
                "[gpu]\nmin_driver_version = \"550\"",
                "at least major.minor",
            ),
            (
                "[gpu]\nmin_driver_version = \"550.x\"",
                "not a driver version",
            ),
            (
                "[gpu]\nvbios_versions = [\"96.00.9F.00\"]",
                "not a VBIOS version",
            ),
            ("[gpu]\nvbios_versions = []", "gpu.vbios_versions"),
            ("[gpu]\nocsp_max_age_secs = 0", "insecure_skip_ocsp"),
            ("[gpu]\nocsp_max_age_secs = 2592001", "over 30 days"),
            ("[td]\nallowed_xfam = [\"0x0x61ae7\"]", "not a hex u64"),
            ("[td]\nallowed_xfam = [\"+61ae7\"]", "not a hex u64"),
            ("[td]\nallowed_xfam = [\"0x\"]", "not a hex u64"),
            ("[gpu]\nskip_ocsp = true", "skip_ocsp"),
        ] {
            let err = Policy::from_toml(text, "p.toml").unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
            assert!(err.contains("p.toml"), "{err}");
        }
    }
}
