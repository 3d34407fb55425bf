//! `watch --config FILE`: typed TOML, validated before anything starts (docs/watch.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// The evidence archive (SQLite, one file; created if absent).
    pub archive: PathBuf,
    /// `/metrics`, `/livez`, `/readyz`. Loopback by default: the metrics name the fleet.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Most appraisals running at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// One appraisal (connect, handshake, challenge) longer than this is a failure.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Records older than this are pruned; the chain keeps the last pruned record's hash.
    #[serde(default = "default_retain_days")]
    pub retain_days: u64,
    /// Where `on_failure = ["webhook"]` targets' state changes are POSTed.
    pub webhook: Option<WebhookConfig>,
    #[serde(default)]
    pub target: Vec<TargetConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// A file holding the HMAC-SHA256 secret (at least 16 bytes): never the secret itself
    /// in the config.
    pub secret_file: PathBuf,
}

/// What `watch` does when a target starts or stops failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Set the target's metrics (what the alert rules read) and log the change once.
    Alert,
    /// POST a signed JSON event to `[webhook]`, once per change.
    Webhook,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Unique; names the target in metrics and the archive.
    pub name: String,
    /// `https://HOST:PORT` of the agent.
    pub url: String,
    /// The appraisal policy (TOML) the target must pass; archived with each record.
    pub policy: PathBuf,
    /// Trust this root (DER) instead of Intel's: the simulated TD and test PKIs only.
    pub insecure_root: Option<PathBuf>,
    /// GPU roots (PEM, device then RIM) instead of NVIDIA's: simulated GPUs only.
    pub insecure_gpu_roots: Option<PathBuf>,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_on_failure")]
    pub on_failure: Vec<OnFailure>,
}

fn default_on_failure() -> Vec<OnFailure> {
    vec![OnFailure::Alert]
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_concurrency() -> usize {
    16
}
fn default_timeout() -> u64 {
    30
}
fn default_retain_days() -> u64 {
    400
}
fn default_interval() -> u64 {
    300
}

#[derive(Debug, thiserror::Error)]
#[error("watch config {source_name}: {field}: {detail}")]
pub struct WatchConfigError {
    pub source_name: String,
    pub field: String,
    pub detail: String,
}

impl WatchConfig {
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, WatchConfigError> {
        let err = |field: &str, detail: String| WatchConfigError {
            source_name: source_name.to_string(),
            field: field.to_string(),
            detail,
        };
        let c: WatchConfig = toml::from_str(text).map_err(|e| err("toml", e.to_string()))?;
        if c.target.is_empty() {
            return Err(err("target", "no [[target]]: nothing to watch".into()));
        }
        if c.concurrency == 0 {
            return Err(err("concurrency", "must be at least 1".into()));
        }
        if !(1..=600).contains(&c.timeout_secs) {
            return Err(err(
                "timeout_secs",
                format!("{} is outside 1..=600", c.timeout_secs),
            ));
        }
        if c.retain_days == 0 {
            return Err(err("retain_days", "must be at least 1".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in c.target.iter().enumerate() {
            let field = |k: &str| format!("target[{i}].{k}");
            if t.name.is_empty()
                || t.name.len() > 128
                || !t.name.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(err(
                    &field("name"),
                    "1..=128 printable ASCII characters without spaces".into(),
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(err(&field("name"), format!("{:?} is used twice", t.name)));
            }
            tdx_client::Target::parse(&t.url).map_err(|e| err(&field("url"), e.to_string()))?;
            if t.on_failure.contains(&OnFailure::Webhook) && c.webhook.is_none() {
                return Err(err(
                    &field("on_failure"),
                    "\"webhook\" needs a [webhook] table (url, secret_file)".into(),
                ));
            }
            if !(1..=86_400).contains(&t.interval_secs) {
                return Err(err(
                    &field("interval_secs"),
                    format!("{} is outside 1..=86400", t.interval_secs),
                ));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ONE: &str = "archive = \"/a.db\"\n[[target]]\nname = \"a\"\nurl = \"https://10.0.0.5:8443\"\npolicy = \"/p.toml\"\n";

    #[test]
    fn defaults_and_refusals_name_the_field() {
        let c = WatchConfig::from_toml(ONE, "w.toml").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.target[0].interval_secs, 300);
        for (text, needle) in [
            ("archive = \"/a.db\"\n", "no [[target]]"),
            (
                &format!("{ONE}[[target]]\nname = \"a\"\nurl = \"https://x:1\"\npolicy = \"/p\"\n"),
                "used twice",
            ),
            (
                &ONE.replace("https://10.0.0.5:8443", "nope"),
                "target[0].url",
            ),
            (&format!("{ONE}interval_secs = 0\n"), "interval_secs"),
            (&format!("surprise = 1\n{ONE}"), "surprise"),
            (&format!("{ONE}on_fire = true\n"), "on_fire"),
            (&format!("timeout_secs = 0\n{ONE}"), "timeout_secs"),
            (&format!("{ONE}on_failure = [\"webhook\"]\n"), "[webhook]"),
            (&format!("{ONE}on_failure = [\"page\"]\n"), "page"),
        ] {
            let e = WatchConfig::from_toml(text, "w.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
