//! The daemon's configuration: TOML parsed into typed values and validated before any port
//! is bound. Command-line flags override the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

mod gpu;
pub use gpu::{GpuConfig, GpuRequired, GpuSourceKind};

/// `tdx-agent serve` configuration. Every field is documented in docs/configuration.md.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The one TLS listener serving HTTPS and gRPC.
    pub listen: SocketAddr,
    pub tee: TeeConfig,
    pub collateral: CollateralConfig,
    /// Appraisal policy file (TOML). Absent: the default policy (pins no measurement).
    pub policy: Option<PathBuf>,
    pub tls: TlsConfig,
    pub audit: AuditConfig,
    pub challenge: ChallengeConfig,
    pub limits: LimitsConfig,
    /// The model server the front door forwards `/v1/` to. Absent: attestation only.
    pub upstream: UpstreamConfig,
    /// What is measured into RTMR3 before the agent reports ready.
    pub model: ModelConfig,
    /// The GPUs attested with the TD (docs/gpu.md). Absent: this TD has no GPU, and the
    /// agent refuses to start where it sees one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuConfig>,
    /// Runtime state (tmpfs: vanishes at reboot, exactly when the RTMRs reset).
    pub state_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            tee: TeeConfig::default(),
            collateral: CollateralConfig::default(),
            policy: None,
            tls: TlsConfig::default(),
            audit: AuditConfig::default(),
            challenge: ChallengeConfig::default(),
            limits: LimitsConfig::default(),
            upstream: UpstreamConfig::default(),
            model: ModelConfig::default(),
            gpu: None,
            state_dir: PathBuf::from("/run/tdx-agent"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeKindConfig {
    Configfs,
    Sim,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeeConfig {
    pub kind: TeeKindConfig,
    /// With kind = "sim": the simulation directory (`tdx-agent sim pki --sim-dir DIR`).
    pub sim_dir: Option<PathBuf>,
    /// With kind = "sim": overrides the simulation's quote delay.
    pub sim_quote_delay_ms: Option<u64>,
    /// A quote that takes longer counts as a failed TEE: the certificate re-issue or the
    /// challenge batch waiting for it fails with an error naming this limit.
    pub quote_timeout_secs: u64,
    pub tsm_report_dir: PathBuf,
    pub measurements_dir: PathBuf,
    pub ccel_data: PathBuf,
}

impl Default for TeeConfig {
    fn default() -> Self {
        Self {
            kind: TeeKindConfig::Configfs,
            sim_dir: None,
            sim_quote_delay_ms: None,
            quote_timeout_secs: DEFAULT_QUOTE_TIMEOUT_SECS,
            tsm_report_dir: PathBuf::from(tdx_tee::configfs::DEFAULT_REPORT_DIR),
            measurements_dir: PathBuf::from(tdx_tee::sysfs::DEFAULT_MEASUREMENTS_DIR),
            ccel_data: PathBuf::from(tdx_tee::configfs::DEFAULT_CCEL_DATA),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollateralConfig {
    /// PCCS (v4 API) to fetch collateral from. Required on real hardware; with the simulated
    /// TD, absent means "take it from the simulated PKI directly".
    pub pccs_url: Option<String>,
    /// On-disk cache of fetched collateral.
    pub cache_dir: PathBuf,
    /// Root CA (DER) to verify our own evidence against instead of Intel's production root.
    /// Only for the simulated TD and test PKIs.
    pub insecure_root: Option<PathBuf>,
}

impl Default for CollateralConfig {
    fn default() -> Self {
        Self {
            pccs_url: None,
            cache_dir: PathBuf::from("/var/cache/tdx-agent/collateral"),
            insecure_root: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// RA-TLS certificate lifetime; at most 24 h.
    pub cert_lifetime_secs: u64,
    /// Re-issue this long before the certificate expires.
    pub renew_before_secs: u64,
    /// DNS names and IP addresses for the certificate's subjectAltName.
    pub subject_alt_names: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_lifetime_secs: 86_400,
            renew_before_secs: 3_600,
            subject_alt_names: vec!["localhost".into()],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Directory of the hash-chained audit log.
    pub dir: PathBuf,
    /// Rotate the active file past this size.
    pub max_bytes: u64,
    /// Files kept, the active one included: after a rotation the oldest beyond this are
    /// deleted. At least 1 (the active file is never deleted); default 16.
    pub keep: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/tdx-agent/audit"),
            max_bytes: 64 << 20,
            keep: 16,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengeConfig {
    /// Most nonces in one quote's Merkle tree.
    pub max_batch: usize,
    /// Most callers waiting for a quote; more get 503.
    pub max_waiting: usize,
    /// Milliseconds an idle agent waits after a first challenge so a burst shares one quote
    /// (longer while challenges keep arriving, at most four times this in all).
    pub gather_ms: u64,
}

impl Default for ChallengeConfig {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            max_waiting: 100_000,
            gather_ms: 50,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Time allowed for a client to finish the TLS handshake and send request headers.
    pub header_read_timeout_secs: u64,
    /// Largest request body accepted on the attestation routes.
    pub max_request_body_bytes: usize,
    /// Most concurrent connections; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Grace period for in-flight requests on SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Threads that serve connections (each owns its connections from handshake to close).
    /// Absent: one per CPU the agent may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_threads: Option<std::num::NonZeroUsize>,
    /// A connection thread about to sleep with nothing to do first yields its CPU to whatever
    /// else is runnable there (`server::shards`): more throughput when the agent and the
    /// programs it talks to share few CPUs, more time waiting for a CPU per request when many
    /// threads compete (docs/benchmarks.md).
    pub yield_before_sleep: bool,
}

impl LimitsConfig {
    /// `connection_threads`, or one per CPU the agent may use (its affinity and cgroup quota).
    pub fn connection_threads(&self) -> usize {
        self.connection_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            std::num::NonZeroUsize::get,
        )
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            max_request_body_bytes: 64 << 10,
            max_connections: 10_000,
            shutdown_grace_secs: 10,
            connection_threads: None,
            yield_before_sleep: true,
        }
    }
}

/// The model server's base URL: plain `http://HOST:PORT` (it is reached over loopback inside
/// the TD; TLS to it would protect nothing the TD boundary does not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub authority: String,
    text: String,
    loopback: bool,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: axum::http::Uri = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{s:?}: expected http://HOST:PORT (the model server listens on loopback inside the TD)"
            ));
        }
        let authority = uri
            .authority()
            .filter(|a| a.port_u16().is_some())
            .ok_or_else(|| format!("{s:?}: expected http://HOST:PORT with an explicit port"))?;
        if authority.port_u16() == Some(0) {
            return Err(format!("{s:?}: port 0 names no server"));
        }
        // Credentials in the URL would be sent to the model server with every request, and
        // `u@h` reads too easily as host `u`.
        if authority.as_str().contains('@') {
            return Err(format!(
                "{s:?}: no user information (USER@); give only scheme, host and port"
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{s:?}: give only scheme, host and port; request paths are forwarded as they come"
            ));
        }
        let host = authority.host();
        let loopback = tdx_net::is_loopback_host(host);
        // `localhost` is connected to as 127.0.0.1: asking the resolver would let DNS, which
        // the host answers where /etc/hosts has no line for it, send prompts off the TD.
        let connect_to = if host.eq_ignore_ascii_case("localhost") {
            format!("127.0.0.1:{}", authority.port_u16().unwrap_or_default())
        } else {
            authority.to_string()
        };
        Ok(UpstreamUrl {
            authority: connect_to,
            text: format!("http://{authority}"),
            loopback,
        })
    }

    /// A loopback IP literal (127.0.0.0/8, ::1) or `localhost`: an address that cannot leave
    /// the TD. Any other name is resolved through DNS, which the host controls.
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// `http://HOST:PORT`, no trailing slash.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `HOST:PORT` as the URL names it, for the `Host` header (`authority` is where the
    /// agent connects, which for `localhost` is 127.0.0.1).
    pub fn host_header(&self) -> &str {
        self.text.strip_prefix("http://").unwrap_or(&self.text)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UpstreamUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// SHA-256 of an API key, hex in the file: the config never holds a usable key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ApiKeyHash(pub [u8; 32]);

impl<'de> Deserialize<'de> for ApiKeyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        tdx_core::encoding::hex_array::<32>(&s)
            .map(ApiKeyHash)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "an API key hash is 64 hex digits (`tdx-agent config hash-api-key`): {e}"
                ))
            })
    }
}

impl Serialize for ApiKeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The model server, e.g. `http://127.0.0.1:8000`. Absent: no front door, and readiness
    /// has no upstream stage.
    pub url: Option<UpstreamUrl>,
    /// Polled to decide the `upstream_healthy` readiness stage (vLLM: `/health`).
    pub health_path: String,
    pub health_interval_ms: u64,
    /// Time allowed to open a connection to the upstream.
    pub connect_timeout_ms: u64,
    /// A kept-alive connection to the upstream idle for longer is closed instead of reused.
    /// Below the upstream's own keep-alive (uvicorn, vLLM's server: 5 s), so that no request
    /// goes out on a connection the upstream is closing at that moment. 0: a new connection
    /// for every request.
    pub keepalive_idle_ms: u64,
    /// Time allowed for the upstream to start its answer once it has the whole request (a
    /// long prompt's prefill counts, the client's upload does not).
    pub response_header_timeout_secs: u64,
    /// A request or response body that moves no byte for this long is cut. A response
    /// stream that keeps sending is never cut, however long it lasts.
    pub idle_timeout_secs: u64,
    /// Time allowed for the client to send its whole request body (408 beyond), however
    /// steadily it moves: a large body streams upstream while it holds one of the
    /// max_concurrent_requests slots, which a trickle must not keep for ever. It only cuts
    /// while the agent waits on the client, so a model server slow to read is not blamed on
    /// the client (a write it takes nothing of for response_header_timeout_secs gets 504).
    pub request_body_timeout_secs: u64,
    /// Largest request body forwarded (413 beyond).
    pub max_request_body_bytes: u64,
    /// Most requests forwarded at once; more get 503.
    pub max_concurrent_requests: usize,
    /// SHA-256 (hex) of each accepted API key, sent as `Authorization: Bearer KEY`. Empty:
    /// no key needed (the attestation is the gate). The header is not forwarded when set.
    pub api_key_sha256: Vec<ApiKeyHash>,
    /// Accept an `url` that is not loopback. The front door forwards decrypted requests to it
    /// in plaintext, so it must still be inside the TD (a container on a bridge inside it);
    /// the agent cannot check that. Left out of the measured configuration while false, so
    /// configurations written before this key measure as they did.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_allow_non_loopback: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: None,
            health_path: "/health".into(),
            health_interval_ms: 2_000,
            connect_timeout_ms: 2_000,
            keepalive_idle_ms: 4_000,
            response_header_timeout_secs: 300,
            idle_timeout_secs: 300,
            request_body_timeout_secs: 300,
            max_request_body_bytes: 32 << 20,
            max_concurrent_requests: 1_024,
            api_key_sha256: Vec::new(),
            insecure_allow_non_loopback: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The model directory; its manifest digest is extended into RTMR3 (docs/formats.md).
    pub dir: Option<PathBuf>,
    /// The model server's command line as its unit runs it; extended into RTMR3 as given.
    pub vllm_cmdline: Vec<String>,
    /// Front a model server (`upstream.url`) without `dir`: no model event is measured, so a
    /// client that pins the image but not the model cannot tell which model answers. Left out
    /// of the measured configuration while false (configurations before it measure as they
    /// did).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_unmeasured: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {source_name}: {detail}")]
    Parse { source_name: String, detail: String },
    #[error("config {source_name}: {field}: {detail}")]
    Invalid {
        source_name: String,
        field: &'static str,
        detail: String,
    },
}

/// The most an RA-TLS certificate may live (docs/design.md §5).
pub const MAX_CERT_LIFETIME_SECS: u64 = 86_400;

/// Longest timeout, interval or grace the config accepts: a week. Longer is a typo, and far
/// longer overflows the clock it is added to.
const MAX_DURATION_MS: u64 = 7 * 86_400 * 1000;

/// Most `limits.max_connections`: far above what file descriptors allow on any machine we
/// run on, and far below what tokio's semaphore can count.
const MAX_CONNECTIONS: usize = 1 << 24;

/// Default `tee.quote_timeout_secs`: above the kernel's own 30 s limit on a configfs-tsm
/// quote, so a slow but working quoting enclave is never cut short.
pub const DEFAULT_QUOTE_TIMEOUT_SECS: u64 = 45;
/// Longest accepted `tee.quote_timeout_secs`: a caller waiting longer than ten minutes for
/// evidence is better told the TEE is broken.
pub const MAX_QUOTE_TIMEOUT_SECS: u64 = 600;

impl Config {
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            source_name: source_name.to_string(),
            detail: e.to_string(),
        })?;
        c.validate(source_name)?;
        Ok(c)
    }

    /// Everything that can be checked without touching the TEE or the network.
    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, detail: String| {
            Err(ConfigError::Invalid {
                source_name: source_name.to_string(),
                field,
                detail,
            })
        };
        match self.tee.kind {
            #[cfg(not(feature = "sim"))]
            TeeKindConfig::Sim => {
                return invalid("tee.kind", tdx_tee::SIM_NOT_BUILT.into());
            }
            #[cfg(feature = "sim")]
            TeeKindConfig::Sim if self.tee.sim_dir.is_none() => {
                return invalid(
                    "tee.sim_dir",
                    "kind = \"sim\" needs sim_dir (create it with `tdx-agent sim pki --sim-dir DIR`)".into(),
                );
            }
            TeeKindConfig::Configfs if self.tee.sim_dir.is_some() => {
                return invalid("tee.sim_dir", "only meaningful with kind = \"sim\"".into());
            }
            TeeKindConfig::Configfs if self.collateral.pccs_url.is_none() => {
                return invalid(
                    "collateral.pccs_url",
                    "is required on real hardware: without collateral no client can verify this TD"
                        .into(),
                );
            }
            _ => {}
        }
        if self.tee.kind != TeeKindConfig::Sim && self.tee.sim_quote_delay_ms.is_some() {
            return invalid(
                "tee.sim_quote_delay_ms",
                "only meaningful with kind = \"sim\"".into(),
            );
        }
        if !(1..=MAX_QUOTE_TIMEOUT_SECS).contains(&self.tee.quote_timeout_secs) {
            return invalid(
                "tee.quote_timeout_secs",
                format!(
                    "{} is outside 1..={MAX_QUOTE_TIMEOUT_SECS}",
                    self.tee.quote_timeout_secs
                ),
            );
        }
        if let Some(Err(e)) = self
            .collateral
            .pccs_url
            .as_deref()
            .map(tdx_net::pccs::PccsClient::new)
        {
            return invalid("collateral.pccs_url", e.to_string());
        }
        if self.tls.cert_lifetime_secs == 0 || self.tls.cert_lifetime_secs > MAX_CERT_LIFETIME_SECS
        {
            return invalid(
                "tls.cert_lifetime_secs",
                format!(
                    "{} is outside 1..={MAX_CERT_LIFETIME_SECS}",
                    self.tls.cert_lifetime_secs
                ),
            );
        }
        if self.tls.renew_before_secs >= self.tls.cert_lifetime_secs {
            return invalid(
                "tls.renew_before_secs",
                "must be shorter than tls.cert_lifetime_secs".into(),
            );
        }
        if self.tls.subject_alt_names.is_empty() {
            return invalid("tls.subject_alt_names", "list at least one name".into());
        }
        // Here and not when the certificate is built: by then RTMR3 holds this configuration,
        // and a corrected one would need a reboot of the TD.
        for name in &self.tls.subject_alt_names {
            if let Err(why) = check_subject_alt_name(name) {
                return invalid("tls.subject_alt_names", format!("{name:?}: {why}"));
            }
        }
        if self.challenge.gather_ms > 1000 {
            return invalid(
                "challenge.gather_ms",
                format!(
                    "{} ms delays every first challenge; at most 1000",
                    self.challenge.gather_ms
                ),
            );
        }
        if self.challenge.max_batch == 0 || self.challenge.max_waiting == 0 {
            return invalid(
                "challenge",
                "max_batch and max_waiting must be positive".into(),
            );
        }
        if self.limits.max_connections == 0 || self.limits.header_read_timeout_secs == 0 {
            return invalid(
                "limits",
                "max_connections and header_read_timeout_secs must be positive".into(),
            );
        }
        if self.limits.max_request_body_bytes == 0 {
            return invalid(
                "limits.max_request_body_bytes",
                "0 refuses every challenge and gRPC request; give a size in bytes".into(),
            );
        }
        if self.limits.max_connections > MAX_CONNECTIONS {
            return invalid(
                "limits.max_connections",
                format!(
                    "{} is more than {MAX_CONNECTIONS}",
                    self.limits.max_connections
                ),
            );
        }
        let u = &self.upstream;
        let bounded = [
            (
                "limits.header_read_timeout_secs",
                self.limits.header_read_timeout_secs,
                1000,
            ),
            (
                "limits.shutdown_grace_secs",
                self.limits.shutdown_grace_secs,
                1000,
            ),
            (
                "upstream.response_header_timeout_secs",
                u.response_header_timeout_secs,
                1000,
            ),
            ("upstream.idle_timeout_secs", u.idle_timeout_secs, 1000),
            (
                "upstream.request_body_timeout_secs",
                u.request_body_timeout_secs,
                1000,
            ),
            ("upstream.health_interval_ms", u.health_interval_ms, 1),
            ("upstream.connect_timeout_ms", u.connect_timeout_ms, 1),
            ("upstream.keepalive_idle_ms", u.keepalive_idle_ms, 1),
            (
                "tee.sim_quote_delay_ms",
                self.tee.sim_quote_delay_ms.unwrap_or(0),
                1,
            ),
        ];
        for (field, value, ms_per_unit) in bounded {
            if value.saturating_mul(ms_per_unit) > MAX_DURATION_MS {
                return invalid(
                    field,
                    format!(
                        "{value} is more than a week ({} {})",
                        MAX_DURATION_MS / ms_per_unit,
                        if ms_per_unit == 1 { "ms" } else { "s" }
                    ),
                );
            }
        }
        if !u.health_path.starts_with('/') {
            return invalid("upstream.health_path", "must start with /".into());
        }
        if u.health_interval_ms == 0
            || u.connect_timeout_ms == 0
            || u.response_header_timeout_secs == 0
            || u.idle_timeout_secs == 0
            || u.request_body_timeout_secs == 0
            || u.max_concurrent_requests == 0
        {
            return invalid(
                "upstream",
                "intervals, timeouts and max_concurrent_requests must be positive".into(),
            );
        }
        if u.max_request_body_bytes == 0 {
            return invalid(
                "upstream.max_request_body_bytes",
                "0 refuses every model request with a body; give a size in bytes".into(),
            );
        }
        match (&u.url, &self.model.dir, self.model.insecure_unmeasured) {
            (Some(url), None, false) => {
                return invalid(
                    "model.dir",
                    format!(
                        "the front door would serve the model at {} unmeasured: give the model's \
                         directory (model.dir, --model-dir) so its manifest is extended into \
                         RTMR3 and clients can pin it, or set model.insecure_unmeasured = true \
                         (--insecure-unmeasured-model)",
                        url.as_str()
                    ),
                );
            }
            (_, Some(_), true) => {
                return invalid(
                    "model.insecure_unmeasured",
                    "model.dir (or --model-dir) is set, so the model is measured: remove \
                     model.insecure_unmeasured (or --insecure-unmeasured-model)"
                        .into(),
                );
            }
            (None, None, true) => {
                return invalid(
                    "model.insecure_unmeasured",
                    "only meaningful with upstream.url".into(),
                );
            }
            _ => {}
        }
        match (&u.url, u.insecure_allow_non_loopback) {
            (Some(url), false) if !url.is_loopback() => {
                return invalid(
                    "upstream.url",
                    format!(
                        "{}: not loopback (127.0.0.0/8, ::1 or localhost); the front door forwards decrypted requests to it in plaintext, and a name is resolved through DNS, which the host controls. A model server elsewhere inside the TD needs upstream.insecure_allow_non_loopback = true",
                        url.as_str()
                    ),
                );
            }
            (None, true) => {
                return invalid(
                    "upstream.insecure_allow_non_loopback",
                    "only meaningful with upstream.url".into(),
                );
            }
            (Some(url), true) if url.is_loopback() => {
                return invalid(
                    "upstream.insecure_allow_non_loopback",
                    format!(
                        "{} is loopback: nothing to allow; remove the key",
                        url.as_str()
                    ),
                );
            }
            _ => {}
        }
        if u.url.is_none() && !u.api_key_sha256.is_empty() {
            return invalid(
                "upstream.api_key_sha256",
                "API keys guard the model routes, which need upstream.url".into(),
            );
        }
        if self.model.vllm_cmdline.iter().any(|a| a.contains('\0')) {
            return invalid("model.vllm_cmdline", "an argument contains NUL".into());
        }
        if self.audit.max_bytes < 4096 {
            return invalid("audit.max_bytes", "must be at least 4096".into());
        }
        if self.audit.keep == 0 {
            return invalid(
                "audit.keep",
                "must be at least 1 (it counts the file being written)".into(),
            );
        }
        if let Some((field, detail)) = self
            .gpu
            .as_ref()
            .and_then(|g| g.invalid(self.tee.kind == TeeKindConfig::Sim))
        {
            return invalid(field, detail);
        }
        Ok(())
    }

    /// Every setting in effect that weakens what this agent's attestation or front door
    /// promises: (its switch, as the `agent-config` RTMR3 event lists it for clients; `key =
    /// value` for the log). `serve` logs them at start, so that an operator reading the log
    /// sees them, and measures the switches, so that a client's policy can refuse them.
    pub fn insecure_settings(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.tee.kind == TeeKindConfig::Sim {
            out.push((
                "tee.kind=sim",
                "tee.kind = \"sim\" (a simulated TD: its evidence proves nothing)".into(),
            ));
        }
        if let Some(p) = &self.collateral.insecure_root {
            out.push((
                "collateral.insecure_root",
                format!("collateral.insecure_root = {}", p.display()),
            ));
        }
        if let Some(url) = self
            .upstream
            .url
            .as_ref()
            .filter(|_| self.upstream.insecure_allow_non_loopback)
        {
            out.push((
                "upstream.insecure_allow_non_loopback",
                format!(
                    "upstream.insecure_allow_non_loopback = true (plaintext to {})",
                    url.as_str()
                ),
            ));
        }
        if self.model.insecure_unmeasured {
            out.push((
                "model.insecure_unmeasured",
                "model.insecure_unmeasured = true (the model served is not measured)".into(),
            ));
        }
        if let Some(g) = &self.gpu {
            if g.source == GpuSourceKind::Sim {
                out.push((
                    "gpu.source=sim",
                    "gpu.source = \"sim\" (simulated GPUs)".into(),
                ));
            }
            if let Some(p) = &g.insecure_roots {
                out.push((
                    "gpu.insecure_roots",
                    format!("gpu.insecure_roots = {}", p.display()),
                ));
            }
            if let Some(p) = &g.insecure_sim_dir {
                out.push((
                    "gpu.insecure_sim_dir",
                    format!("gpu.insecure_sim_dir = {}", p.display()),
                ));
            }
            if g.insecure_serve_unattested {
                out.push((
                    "gpu.insecure_serve_unattested",
                    "gpu.insecure_serve_unattested = true".into(),
                ));
            }
        }
        out
    }
}

/// Longest DNS name (RFC 1035), and longest label.
const MAX_DNS_NAME: usize = 253;
const MAX_DNS_LABEL: usize = 63;

/// A subjectAltName entry: an IP address, or a DNS name of ASCII letters, digits, hyphens and
/// dots (a leading `*.` allowed), as a certificate's dNSName must be.
fn check_subject_alt_name(name: &str) -> Result<(), String> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if name.len() > MAX_DNS_NAME {
        return Err(format!(
            "{} characters; a DNS name has at most {MAX_DNS_NAME}",
            name.len()
        ));
    }
    let labels = name.strip_prefix("*.").unwrap_or(name);
    for label in labels.split('.') {
        if label.is_empty() || label.len() > MAX_DNS_LABEL {
            return Err(format!(
                "neither an IP address nor a DNS name: each dot-separated label has 1..={MAX_DNS_LABEL} characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(
                "neither an IP address nor a DNS name: only ASCII letters, digits, '-' and '.' (a leading \"*.\" allowed; write an internationalised name in its xn-- form)"
                    .into(),
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "neither an IP address nor a DNS name: label {label:?} starts or ends with '-'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_a_pccs_on_real_hardware() {
        let err = Config::from_toml("", "c.toml").unwrap_err().to_string();
        assert!(err.contains("pccs_url"), "{err}");
        let c =
            Config::from_toml("[collateral]\npccs_url = \"https://pccs:8081\"", "c.toml").unwrap();
        assert_eq!(c.listen.port(), 8443);
        assert_eq!(c.tee.quote_timeout_secs, 45);
        for secs in [1, 600] {
            let text = format!("[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\nquote_timeout_secs = {secs}");
            assert_eq!(
                Config::from_toml(&text, "c.toml")
                    .unwrap()
                    .tee
                    .quote_timeout_secs,
                secs
            );
        }
    }

    #[test]
    fn connection_threads_yield_before_sleep_unless_told_not_to() {
        let sim = "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n";
        let c = Config::from_toml(sim, "c.toml").unwrap();
        assert!(c.limits.yield_before_sleep);
        let c = Config::from_toml(
            &format!("{sim}[limits]\nyield_before_sleep = false"),
            "c.toml",
        )
        .unwrap();
        assert!(!c.limits.yield_before_sleep);
        let err = Config::from_toml(&format!("{sim}[limits]\nyield_before_sleep = 1"), "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("yield_before_sleep"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        for (text, needle) in [
            ("surprise = 1", "surprise"),
            ("[tee]\nkind = \"sgx\"", "sgx"),
            ("[tee]\nkind = \"sim\"", "sim_dir"),
            ("[collateral]\npccs_url = \"ftp://x\"", "pccs_url"),
            (
                "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n[tls]\ncert_lifetime_secs = 90000",
                "cert_lifetime_secs",
            ),
            ("listen = \"nope\"", "listen"),
            (
                "[upstream]\nurl = \"https://127.0.0.1:8000\"",
                "http://HOST:PORT",
            ),
            ("[upstream]\nurl = \"http://127.0.0.1\"", "explicit port"),
            (
                "[upstream]\nurl = \"http://127.0.0.1:8000/v1\"",
                "only scheme",
            ),
            ("[upstream]\napi_key_sha256 = [\"ab\"]", "64 hex"),
            (
                "[collateral]\npccs_url = \"https://p:1\"\n[upstream]\nhealth_path = \"health\"",
                "health_path",
            ),
            ("[model]\ndirr = \"/m\"", "dirr"),
            (
                "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\nquote_timeout_secs = 0",
                "quote_timeout_secs",
            ),
            (
                "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\nquote_timeout_secs = 601",
                "quote_timeout_secs",
            ),
            // Far past any sensible value, and past what the clock can add: refused, not a
            // panic on the first request.
            (
                "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n[upstream]\nidle_timeout_secs = 18446744073709551615",
                "upstream.idle_timeout_secs",
            ),
            (
                "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n[limits]\nheader_read_timeout_secs = 604801",
                "limits.header_read_timeout_secs",
            ),
            (
                "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n[upstream]\nkeepalive_idle_ms = 604800001",
                "upstream.keepalive_idle_ms",
            ),
            (
                "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n[limits]\nmax_connections = 18446744073709551615",
                "limits.max_connections",
            ),
        ] {
            let err = Config::from_toml(text, "c.toml").unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
    const SIM: &str = "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n";
    const REAL: &str = "[collateral]\npccs_url = \"https://pccs:8081\"\n";
    /// The simulated TD fronting a model it does not measure.
    const SIM_FRONT: &str =
        "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n[model]\ninsecure_unmeasured = true\n";

    #[test]
    fn a_model_server_is_fronted_only_with_its_model_measured_or_said_not_to_be() {
        let up = "[upstream]\nurl = \"http://127.0.0.1:8000\"\n";
        let err = refusal(&format!("{SIM}{up}"));
        assert!(
            err.contains("model.dir") && err.contains("--insecure-unmeasured-model"),
            "{err}"
        );
        let measured = Config::from_toml(&format!("{SIM}[model]\ndir = \"/m\"\n{up}"), "c.toml");
        assert!(measured.is_ok(), "{measured:?}");
        let c = Config::from_toml(&format!("{SIM_FRONT}{up}"), "c.toml").unwrap();
        assert!(
            c.insecure_settings()
                .iter()
                .any(|(k, _)| *k == "model.insecure_unmeasured"),
            "{:?}",
            c.insecure_settings()
        );
        for (text, needle) in [
            (
                format!("{SIM}[model]\ndir = \"/m\"\ninsecure_unmeasured = true\n{up}"),
                "remove model.insecure_unmeasured",
            ),
            (SIM_FRONT.to_string(), "only meaningful with upstream.url"),
        ] {
            let err = refusal(&text);
            assert!(
                err.contains("model.insecure_unmeasured") && err.contains(needle),
                "{err}"
            );
        }
        // Left out of the measured configuration unless set.
        let json = serde_json::to_value(Config::from_toml(SIM, "c.toml").unwrap()).unwrap();
        assert!(json["model"].get("insecure_unmeasured").is_none(), "{json}");
    }

    fn refusal(text: &str) -> String {
        match Config::from_toml(text, "c.toml") {
            Ok(_) => panic!("accepted: {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn upstream_must_be_loopback_unless_told_otherwise() {
        for url in [
            "http://127.0.0.1:8000",
            "http://127.3.4.5:8000",
            "http://[::1]:8000",
            "http://localhost:8000",
            "http://LOCALHOST:8000/",
        ] {
            let c = Config::from_toml(&format!("{SIM_FRONT}[upstream]\nurl = \"{url}\""), "c.toml")
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(c.upstream.url.unwrap().is_loopback(), "{url}");
        }
        // The name is never resolved: DNS is the host's.
        let c = Config::from_toml(
            &format!("{SIM_FRONT}[upstream]\nurl = \"http://LocalHost:8000\""),
            "c.toml",
        )
        .unwrap();
        let url = c.upstream.url.unwrap();
        assert_eq!(url.authority, "127.0.0.1:8000");
        assert_eq!(url.host_header(), "LocalHost:8000");
        for url in [
            "http://10.0.0.7:8000",
            "http://vllm:8000",
            "http://localhost.evil.example:8000",
            "http://[::ffff:10.0.0.7]:8000",
            "http://0.0.0.0:8000",
        ] {
            let err = refusal(&format!("{SIM_FRONT}[upstream]\nurl = \"{url}\""));
            assert!(
                err.contains("upstream.url") && err.contains("insecure_allow_non_loopback"),
                "{url}: {err}"
            );
            let c = Config::from_toml(
                &format!(
                    "{SIM_FRONT}[upstream]\nurl = \"{url}\"\ninsecure_allow_non_loopback = true"
                ),
                "c.toml",
            )
            .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(
                c.insecure_settings()
                    .iter()
                    .any(|(k, s)| *k == "upstream.insecure_allow_non_loopback"
                        && s.starts_with("upstream.insecure_allow_non_loopback = true")),
                "{url}"
            );
        }
        for (text, needle) in [
            ("url = \"http://127.0.0.1:0\"", "port 0"),
            ("url = \"http://u@127.0.0.1:8000\"", "user information"),
            ("url = \"http://u:p@127.0.0.1:8000\"", "user information"),
            (
                "insecure_allow_non_loopback = true",
                "upstream.insecure_allow_non_loopback: only meaningful",
            ),
            (
                "url = \"http://127.0.0.1:8000\"\ninsecure_allow_non_loopback = true",
                "nothing to allow",
            ),
        ] {
            let base = if text.contains("url") { SIM_FRONT } else { SIM };
            let err = refusal(&format!("{base}[upstream]\n{text}"));
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        // Left out of the measured configuration unless set.
        let c = Config::from_toml(SIM, "c.toml").unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert!(
            json["upstream"]
                .get("insecure_allow_non_loopback")
                .is_none()
        );
    }

    #[test]
    fn subject_alt_names_are_checked_before_anything_is_measured() {
        let long_label = "a".repeat(63);
        let long_name = [long_label.as_str(); 4].join("."); // 255 characters
        let longest = format!("{}.{}", [long_label.as_str(); 3].join("."), "a".repeat(61));
        assert_eq!(longest.len(), 253);
        for good in [
            "localhost",
            "agent.example",
            "*.agent.example",
            "xn--modle-6ra.example",
            "a-b.c1",
            "10.0.0.1",
            "::1",
            long_label.as_str(),
            longest.as_str(),
        ] {
            let text = format!("{SIM}[tls]\nsubject_alt_names = [\"{good}\"]");
            Config::from_toml(&text, "c.toml").unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "modèle.example".to_string(),
            "a b".into(),
            String::new(),
            "a..b".into(),
            "example.".into(),
            "-a.example".into(),
            "a-.example".into(),
            "*".into(),
            "a.*.example".into(),
            "under_score.example".into(),
            format!("{long_label}a.example"),
            long_name.clone(),
        ] {
            let text = format!("{SIM}[tls]\nsubject_alt_names = [\"localhost\", \"{bad}\"]");
            let err = refusal(&text);
            assert!(err.contains("tls.subject_alt_names"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn meaningless_or_refuse_everything_settings_are_refused() {
        for (text, needle) in [
            (
                format!("{REAL}[tee]\nsim_quote_delay_ms = 10"),
                "tee.sim_quote_delay_ms: only meaningful",
            ),
            (
                format!("{SIM}[limits]\nmax_request_body_bytes = 0"),
                "limits.max_request_body_bytes",
            ),
            (
                format!("{SIM}[upstream]\nmax_request_body_bytes = 0"),
                "upstream.max_request_body_bytes",
            ),
            (format!("{SIM}[audit]\nkeep = 0"), "audit.keep"),
        ] {
            let err = refusal(&text);
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let c = Config::from_toml(&format!("{SIM}sim_quote_delay_ms = 10"), "c.toml").unwrap();
        assert_eq!(c.tee.sim_quote_delay_ms, Some(10));
        let c = Config::from_toml(&format!("{SIM}[audit]\nkeep = 1"), "c.toml").unwrap();
        assert_eq!(c.audit.keep, 1);
        assert_eq!(Config::from_toml(SIM, "c.toml").unwrap().audit.keep, 16);
    }

    #[test]
    fn insecure_settings_are_listed() {
        let c = Config::from_toml(REAL, "c.toml").unwrap();
        assert!(
            c.insecure_settings().is_empty(),
            "{:?}",
            c.insecure_settings()
        );
        let c = Config::from_toml(
            "[collateral]\npccs_url = \"https://pccs:8081\"\ninsecure_root = \"/r.der\"\n\
             [gpu]\nsource = \"sim\"\ninsecure_roots = \"/g.pem\"\ninsecure_sim_dir = \"/sim\"\n\
             insecure_serve_unattested = true",
            "c.toml",
        )
        .unwrap();
        let list: Vec<String> = c.insecure_settings().into_iter().map(|(_, s)| s).collect();
        for key in [
            "collateral.insecure_root = /r.der",
            "gpu.source = \"sim\"",
            "gpu.insecure_roots = /g.pem",
            "gpu.insecure_sim_dir = /sim",
            "gpu.insecure_serve_unattested = true",
        ] {
            assert!(list.iter().any(|s| s.starts_with(key)), "{key}: {list:?}");
        }
        assert!(!list.iter().any(|s| s.starts_with("tee.kind")), "{list:?}");
        let c = Config::from_toml(SIM, "c.toml").unwrap();
        assert_eq!(c.insecure_settings()[0].0, "tee.kind=sim");
        assert!(c.insecure_settings()[0].1.starts_with("tee.kind = \"sim\""));
    }
}
