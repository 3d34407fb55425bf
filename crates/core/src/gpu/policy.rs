//! The `[gpu]` table of the policy file: which GPU architectures, drivers and VBIOS builds are
//! acceptable, how old a stapled OCSP answer may be, and the three `insecure_` switches for
//! evidence captured without RIMs, revocation answers or an FWID.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A GPU architecture in confidential-computing mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Hopper,
    Blackwell,
}

impl Architecture {
    /// The architecture a device chain's leaf names: `GH100 A01 GSP FMC LF` is Hopper,
    /// `GB100 …`/`GB20X …` Blackwell.
    pub fn from_leaf_subject(subject: &str) -> Option<Self> {
        let cn = subject
            .split(',')
            .map(str::trim)
            .find_map(|rdn| rdn.strip_prefix("CN="))?;
        let chip = cn.split_whitespace().next()?;
        if chip.starts_with("GH1") {
            Some(Self::Hopper)
        } else if chip.starts_with("GB1") || chip.starts_with("GB2") {
            Some(Self::Blackwell)
        } else {
            None
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hopper => "hopper",
            Self::Blackwell => "blackwell",
        })
    }
}

/// A driver version as NVIDIA writes it (`550.90.07`), ordered component by component as
/// numbers, so `550.100.1` is newer than `550.90.07`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DriverVersion {
    parts: Vec<u32>,
    text: String,
}

impl DriverVersion {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts = s
            .split('.')
            .map(|p| {
                if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    Err(format!(
                        "{s:?} is not a driver version (dot-separated numbers, e.g. \"550.90.07\")"
                    ))
                } else {
                    p.parse::<u32>().map_err(|e| format!("{s:?}: {e}"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if parts.len() < 2 {
            return Err(format!(
                "{s:?} is not a driver version (at least major.minor, e.g. \"550.90.07\")"
            ));
        }
        Ok(Self {
            parts,
            text: s.to_string(),
        })
    }
}

impl Ord for DriverVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl PartialOrd for DriverVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DriverVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for DriverVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A VBIOS version, five two-digit hex groups (`96.00.9F.00.01`), kept in lower case because
/// NVIDIA compares it case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VbiosVersion(String);

impl VbiosVersion {
    pub fn parse(s: &str) -> Result<Self, String> {
        let groups: Vec<&str> = s.split('.').collect();
        let ok = groups.len() == 5
            && groups
                .iter()
                .all(|g| g.len() == 2 && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{s:?} is not a VBIOS version (five two-digit hex groups, e.g. \"96.00.9F.00.01\")"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VbiosVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VbiosVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for VbiosVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// NVIDIA's responder signs answers valid for about a day; a week tolerates a weekend of
/// failed refreshes without accepting an answer from before a revocation long ago.
pub const DEFAULT_OCSP_MAX_AGE_SECS: u64 = 7 * 24 * 3600;
/// Beyond a month an answer no longer says much about revocation (answers without nextUpdate
/// would be good for as long as the setting says): that is `insecure_skip_ocsp`, by name.
pub const MAX_OCSP_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuPolicy {
    /// How many GPUs a server must attest with its TD (`attest`, `connect`, `verify`); each
    /// must pass every check below. 0 (the default): GPUs are not required and not checked.
    /// `verify-gpu` appraises the one GPU it is given.
    pub count: u32,
    /// Accepted architectures; never empty.
    pub architectures: BTreeSet<Architecture>,
    /// The oldest driver accepted, where set.
    pub min_driver_version: Option<DriverVersion>,
    /// When set, the only VBIOS versions accepted.
    pub vbios_versions: Option<BTreeSet<VbiosVersion>>,
    /// The oldest a stapled OCSP answer's thisUpdate may be at the verification time.
    pub ocsp_max_age_secs: u64,
    /// Skip the RIM checks and the measurement comparison (reported as skipped).
    pub insecure_skip_rims: bool,
    /// Skip revocation (reported as skipped).
    pub insecure_skip_ocsp: bool,
    /// Accept a report without an FWID field (drivers before 550 do not write one).
    pub insecure_allow_missing_fwid: bool,
}

impl Default for GpuPolicy {
    fn default() -> Self {
        Self {
            count: 0,
            architectures: BTreeSet::from([Architecture::Hopper, Architecture::Blackwell]),
            min_driver_version: None,
            vbios_versions: None,
            ocsp_max_age_secs: DEFAULT_OCSP_MAX_AGE_SECS,
            insecure_skip_rims: false,
            insecure_skip_ocsp: false,
            insecure_allow_missing_fwid: false,
        }
    }
}

impl GpuPolicy {
    /// Why this table could not mean what it says: (key, reason).
    pub(crate) fn invalid(&self) -> Option<(&'static str, &'static str)> {
        if self.architectures.is_empty() {
            return Some((
                "gpu.architectures",
                "is empty, so no GPU could ever pass; list \"hopper\" and/or \"blackwell\"",
            ));
        }
        if self.vbios_versions.as_ref().is_some_and(BTreeSet::is_empty) {
            return Some((
                "gpu.vbios_versions",
                "is empty, so no GPU could ever pass; leave it out to accept any VBIOS NVIDIA signed a RIM for",
            ));
        }
        if usize::try_from(self.count).map_or(true, |c| c > crate::gpu::MAX_GPUS) {
            return Some((
                "gpu.count",
                "is more GPUs than any server can attest (at most 64)",
            ));
        }
        if self.ocsp_max_age_secs == 0 {
            return Some((
                "gpu.ocsp_max_age_secs",
                "is 0, so no OCSP answer could ever be fresh; use insecure_skip_ocsp to skip revocation",
            ));
        }
        if self.ocsp_max_age_secs > MAX_OCSP_MAX_AGE_SECS {
            return Some((
                "gpu.ocsp_max_age_secs",
                "is over 30 days (2592000): an answer that old may predate a revocation; use insecure_skip_ocsp to skip revocation by name",
            ));
        }
        None
    }

    /// The insecure switches that are on, for the report's warnings.
    pub fn insecure_switches(&self) -> Vec<&'static str> {
        [
            ("gpu.insecure_skip_rims", self.insecure_skip_rims),
            ("gpu.insecure_skip_ocsp", self.insecure_skip_ocsp),
            (
                "gpu.insecure_allow_missing_fwid",
                self.insecure_allow_missing_fwid,
            ),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect()
    }
}
