//! `[gpu]` in the serve configuration (docs/gpu.md): how many GPUs must be attested, where
//! their evidence comes from, and where their collateral comes from. Absent means "this TD
//! has no GPU"; the agent refuses to start if it then sees one.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// How many GPUs must pass before the agent is ready: a number, or every GPU found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuRequired {
    Count(u32),
    All,
}

impl GpuRequired {
    /// `2` or `all` (the `--gpus` flag and the TOML value).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(GpuRequired::All);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is neither a number of GPUs nor \"all\""))?;
        GpuRequired::count(n)
    }

    fn count(n: u32) -> Result<Self, String> {
        let max = u32::try_from(tdx_core::gpu::MAX_GPUS).unwrap_or(u32::MAX);
        if n == 0 || n > max {
            return Err(format!(
                "{n} is outside 1..={max} (to serve with GPUs unattested, set gpu.insecure_serve_unattested = true instead)"
            ));
        }
        Ok(GpuRequired::Count(n))
    }
}

impl<'de> Deserialize<'de> for GpuRequired {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => u32::try_from(n)
                .map_err(|_| format!("{n} is not a number of GPUs"))
                .and_then(GpuRequired::count),
            Raw::S(s) => GpuRequired::parse(&s),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Serialize for GpuRequired {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuRequired::Count(n) => s.serialize_u32(*n),
            GpuRequired::All => s.serialize_str("all"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuSourceKind {
    /// libnvidia-ml, loaded at run time.
    Nvml,
    /// The simulated GPUs of the simulation directory (`sim pki --gpus N`).
    Sim,
}

use tdx_net::nvidia::{DEFAULT_OCSP_RESPONDER, DEFAULT_RIM_SERVICE};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// GPUs that must pass before the agent is ready: `N` or `"all"`. Every GPU found is
    /// attested either way, and any failing one keeps the agent not ready.
    pub required: Option<GpuRequired>,
    pub source: GpuSourceKind,
    /// A source call (NVML) slower than this fails the GPU; it cannot be cancelled, so no
    /// other call starts until it returns.
    pub timeout_secs: u64,
    /// How often the GPUs are collected and verified again between certificate rotations.
    pub recheck_secs: u64,
    /// NVIDIA's RIM service (`/v1/rim/<id>` below it).
    pub rim_service: String,
    pub ocsp_responder: String,
    /// RIMs on disk (`<id>.xml`), consulted before the RIM service: for air-gapped sites.
    pub rim_dir: Option<PathBuf>,
    /// Cache of fetched RIMs and OCSP answers.
    pub cache_dir: PathBuf,
    /// Where NVIDIA GPUs are looked for on the PCI bus.
    pub pci_devices_dir: PathBuf,
    /// A device root then a RIM root (PEM) instead of NVIDIA's: for the simulated GPUs and
    /// test PKIs only. With `source = "sim"` it defaults to the simulation's gpu-roots.pem.
    pub insecure_roots: Option<PathBuf>,
    /// `source = "sim"` beside a real TD: the simulation directory whose GPUs to use (to
    /// try the agent on a TD without GPUs). With the simulated TD its own directory is used.
    pub insecure_sim_dir: Option<PathBuf>,
    /// Serve although GPUs are present and none is attested.
    pub insecure_serve_unattested: bool,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            required: None,
            source: GpuSourceKind::Nvml,
            timeout_secs: 30,
            recheck_secs: 60,
            rim_service: DEFAULT_RIM_SERVICE.into(),
            ocsp_responder: DEFAULT_OCSP_RESPONDER.into(),
            rim_dir: None,
            cache_dir: PathBuf::from("/var/cache/tdx-agent/gpu"),
            pci_devices_dir: PathBuf::from(tdx_gpu::pci::DEFAULT_PCI_DEVICES_DIR),
            insecure_roots: None,
            insecure_sim_dir: None,
            insecure_serve_unattested: false,
        }
    }
}

impl GpuConfig {
    /// (field, why) for a table that cannot mean what it says.
    pub(super) fn invalid(&self, simulated_td: bool) -> Option<(&'static str, String)> {
        match (self.required, self.insecure_serve_unattested) {
            (None, false) => {
                return Some((
                    "gpu.required",
                    "say how many GPUs must be attested (a number or \"all\"), or set gpu.insecure_serve_unattested = true to serve with unattested GPUs".into(),
                ));
            }
            (Some(_), true) => {
                return Some((
                    "gpu.insecure_serve_unattested",
                    "contradicts gpu.required; keep one".into(),
                ));
            }
            _ => {}
        }
        if self.source == GpuSourceKind::Sim {
            if cfg!(not(feature = "sim")) {
                return Some(("gpu.source", tdx_tee::SIM_NOT_BUILT.into()));
            }
            if !simulated_td && self.insecure_sim_dir.is_none() {
                return Some((
                    "gpu.source",
                    "\"sim\" beside a real TD needs gpu.insecure_sim_dir (the simulation directory holding the GPUs)".into(),
                ));
            }
        }
        if self.source == GpuSourceKind::Nvml && self.insecure_sim_dir.is_some() {
            return Some((
                "gpu.insecure_sim_dir",
                "only meaningful with source = \"sim\"".into(),
            ));
        }
        // The parser the agent fetches with, so that `config check` refuses what the start
        // would, and before the start has written anything.
        if let Err(e) = tdx_net::nvidia::NvidiaServices::new(
            &self.rim_service,
            &self.ocsp_responder,
            None,
            None,
        ) {
            let field = match &e {
                tdx_net::nvidia::GpuFetchError::Url {
                    what: "OCSP responder",
                    ..
                } => "gpu.ocsp_responder",
                _ => "gpu.rim_service",
            };
            return Some((field, e.to_string()));
        }
        if !(1..=600).contains(&self.timeout_secs) {
            return Some((
                "gpu.timeout_secs",
                format!("{} is outside 1..=600", self.timeout_secs),
            ));
        }
        if !(1..=86_400).contains(&self.recheck_secs) {
            return Some((
                "gpu.recheck_secs",
                format!("{} is outside 1..=86400", self.recheck_secs),
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const SIM: &str = "[tee]\nkind = \"sim\"\nsim_dir = \"/x\"\n";

    #[test]
    fn required_is_a_count_or_all() {
        for (value, want) in [
            ("2", GpuRequired::Count(2)),
            ("\"all\"", GpuRequired::All),
            ("\"8\"", GpuRequired::Count(8)),
        ] {
            let c = Config::from_toml(
                &format!("{SIM}[gpu]\nrequired = {value}\nsource = \"sim\""),
                "c.toml",
            )
            .unwrap();
            assert_eq!(c.gpu.unwrap().required, Some(want), "{value}");
        }
        assert_eq!(GpuRequired::parse("all"), Ok(GpuRequired::All));
        assert!(GpuRequired::parse("some").is_err());
    }

    #[test]
    fn bad_gpu_tables_name_the_setting() {
        for (table, needle) in [
            ("", "gpu.required"),
            ("required = 0", "outside 1..=64"),
            ("required = 65", "outside 1..=64"),
            ("required = -1", "not a number of GPUs"),
            ("required = \"most\"", "neither a number"),
            (
                "required = 1\ninsecure_serve_unattested = true",
                "gpu.insecure_serve_unattested",
            ),
            ("required = 1\ntimeout_secs = 0", "gpu.timeout_secs"),
            ("required = 1\nrecheck_secs = 0", "gpu.recheck_secs"),
            ("required = 1\nsource = \"cuda\"", "cuda"),
            ("required = 1\nsurprise = true", "surprise"),
            (
                "required = 1\nrim_service = \"ftp://rim.example\"",
                "gpu.rim_service",
            ),
            ("required = 1\nrim_service = \"\"", "gpu.rim_service"),
            (
                "required = 1\nocsp_responder = \"ocsp.example\"",
                "gpu.ocsp_responder",
            ),
            (
                "required = 1\ninsecure_sim_dir = \"/sim\"",
                "gpu.insecure_sim_dir: only meaningful",
            ),
        ] {
            let err = Config::from_toml(&format!("{SIM}[gpu]\n{table}"), "c.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{table:?}: {err}");
        }
        // The simulated GPUs beside a real TD only with the insecure key.
        let real = "[collateral]\npccs_url = \"https://pccs:8081\"\n[gpu]\nrequired = 1\nsource = \"sim\"\n";
        let err = Config::from_toml(real, "c.toml").unwrap_err().to_string();
        assert!(err.contains("gpu.insecure_sim_dir"), "{err}");
        #[cfg(feature = "sim")]
        Config::from_toml(&format!("{real}insecure_sim_dir = \"/sim\""), "c.toml").unwrap();
    }
}
