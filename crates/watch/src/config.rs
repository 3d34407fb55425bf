//! `watch --config FILE`: typed TOML, validated before anything starts (docs/watch.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// Cap on the archive's size (MiB): once reached, appraisals are not archived and
    /// `watch` is not ready, rather than filling a disk other services share.
    pub max_archive_mib: Option<u64>,
    /// Where `on_failure = ["webhook"]` targets' state changes are POSTed.
    pub webhook: Option<WebhookConfig>,
    /// A directory of `*.toml` files holding more `[[target]]` tables, re-read while running
    /// (a fleet's deployment tooling drops a file per endpoint). Relative paths in those
    /// files are relative to the directory.
    pub targets_dir: Option<PathBuf>,
    /// How often `targets_dir` is read again.
    #[serde(default = "default_reload")]
    pub targets_reload_secs: u64,
    #[serde(default)]
    pub target: Vec<TargetConfig>,
}

/// One file of `targets_dir`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    #[serde(default)]
    target: Vec<TargetConfig>,
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
fn default_reload() -> u64 {
    10
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
        if !(1..=MAX_CONCURRENCY).contains(&c.concurrency) {
            return Err(err(
                "concurrency",
                format!("{} is outside 1..={MAX_CONCURRENCY}", c.concurrency),
            ));
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&c.timeout_secs) {
            return Err(err(
                "timeout_secs",
                format!("{} is outside 1..={MAX_TIMEOUT_SECS}", c.timeout_secs),
            ));
        }
        if c.retain_days == 0 {
            return Err(err("retain_days", "must be at least 1".into()));
        }
        if c.target.is_empty() && c.targets_dir.is_none() {
            return Err(err(
                "target",
                "no [[target]] and no targets_dir: nothing to watch".into(),
            ));
        }
        if !(1..=3600).contains(&c.targets_reload_secs) {
            return Err(err(
                "targets_reload_secs",
                format!("{} is outside 1..=3600", c.targets_reload_secs),
            ));
        }
        if c.max_archive_mib
            .is_some_and(|m| !(1..=1 << 20).contains(&m))
        {
            return Err(err("max_archive_mib", "must be 1..=1048576 (1 TiB)".into()));
        }
        if let Some(w) = &c.webhook {
            check_webhook_url(&w.url).map_err(|d| err("webhook.url", d))?;
        }
        let has_webhook = c.webhook.is_some();
        for (i, t) in c.target.iter().enumerate() {
            check_target(t, has_webhook).map_err(|(k, d)| err(&format!("target[{i}].{k}"), d))?;
        }
        unique_names(c.target.iter()).map_err(|(i, d)| err(&format!("target[{i}].name"), d))?;
        Ok(c)
    }
}

/// `https://`, or plain `http://` only to this machine: each event names a target and the
/// check it fails, which the HMAC keeps from being forged but not from being read. A plain
/// `http://localhost` is then connected to at 127.0.0.1, not resolved (`tdx_net::webhook`).
fn check_webhook_url(url: &str) -> Result<(), String> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let Some(host) = uri.host() else {
        return Err(format!("{url:?} has no host"));
    };
    let loopback = tdx_net::is_loopback_host(host);
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        Some("http") => Err(format!(
            "{url:?}: plain http:// to another machine would send every event (which target \
             fails which check) unencrypted; use https:// (http:// is accepted only to \
             127.0.0.1, [::1] or localhost, e.g. a local relay)"
        )),
        _ => Err(format!("{url:?}: expected https://HOST[:PORT][/PATH]")),
    }
}

/// One target's own rules; the failing key and why.
fn check_target(t: &TargetConfig, has_webhook: bool) -> Result<(), (&'static str, String)> {
    if t.name.is_empty() || t.name.len() > 128 || !t.name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((
            "name",
            "1..=128 printable ASCII characters without spaces".into(),
        ));
    }
    tdx_client::Target::parse(&t.url).map_err(|e| ("url", e.to_string()))?;
    if t.on_failure.contains(&OnFailure::Webhook) && !has_webhook {
        return Err((
            "on_failure",
            "\"webhook\" needs a [webhook] table (url, secret_file)".into(),
        ));
    }
    if !(1..=86_400).contains(&t.interval_secs) {
        return Err((
            "interval_secs",
            format!("{} is outside 1..=86400", t.interval_secs),
        ));
    }
    Ok(())
}

/// Names must be unique: they key the metrics and the archive. The index of the first
/// repeated one.
fn unique_names<'a>(
    targets: impl Iterator<Item = &'a TargetConfig>,
) -> Result<(), (usize, String)> {
    let mut names = std::collections::BTreeSet::new();
    for (i, t) in targets.enumerate() {
        if !names.insert(t.name.as_str()) {
            return Err((i, format!("{:?} is used twice", t.name)));
        }
    }
    Ok(())
}

/// Why `targets_dir` could not be taken as a whole; `watch` keeps the targets it has.
#[derive(Debug, thiserror::Error)]
pub enum TargetsDirError {
    #[error("targets_dir {dir}: {detail}")]
    Dir { dir: String, detail: String },
    #[error("targets_dir file {file}: {field}: {detail}")]
    File {
        file: String,
        field: String,
        detail: String,
    },
}

/// The most appraisals at once (each holds a connection and a few MiB at most).
pub const MAX_CONCURRENCY: usize = 4096;
/// The longest one appraisal may take (`timeout_secs`): all of its checks ran within this of
/// the record's time, which `reverify` relies on.
pub const MAX_TIMEOUT_SECS: u64 = 600;

/// The largest file `watch` reads as configuration (a targets file, a policy, a root): far
/// above any real one, and a FIFO or a device named by mistake is refused before it is read.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Every `[[target]]` of `dir`'s `*.toml` files (hidden files and others ignored, so an
/// editor's or a deployment tool's temporary file is not read half-written), checked as the
/// main file's are and unique together with `fixed` (the main file's targets).
pub fn load_targets_dir(
    dir: &Path,
    fixed: &[TargetConfig],
    has_webhook: bool,
) -> Result<Vec<TargetConfig>, TargetsDirError> {
    let dir_err = |detail: String| TargetsDirError::Dir {
        dir: dir.display().to_string(),
        detail,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| dir_err(e.to_string()))? {
        let path = entry.map_err(|e| dir_err(e.to_string()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        files.push(path);
    }
    files.sort();
    let mut out = Vec::new();
    let mut origin = Vec::new();
    for file in &files {
        let file_err = |field: String, detail: String| TargetsDirError::File {
            file: file.display().to_string(),
            field,
            detail,
        };
        let bytes = tdx_fsutil::read_regular(file, MAX_CONFIG_FILE_BYTES)
            .map_err(|e| file_err("read".into(), e.to_string()))?;
        let text =
            String::from_utf8(bytes).map_err(|_| file_err("read".into(), "not UTF-8".into()))?;
        let parsed: TargetsFile =
            toml::from_str(&text).map_err(|e| file_err("toml".into(), e.to_string()))?;
        for (i, mut t) in parsed.target.into_iter().enumerate() {
            check_target(&t, has_webhook)
                .map_err(|(k, d)| file_err(format!("target[{i}].{k}"), d))?;
            for p in [
                Some(&mut t.policy),
                t.insecure_root.as_mut(),
                t.insecure_gpu_roots.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
            out.push(t);
            origin.push((file, i));
        }
    }
    unique_names(fixed.iter().chain(out.iter())).map_err(|(i, d)| {
        // The repeated name is the directory's (the main file's are unique already).
        match i.checked_sub(fixed.len()).and_then(|k| origin.get(k)) {
            Some((file, j)) => TargetsDirError::File {
                file: file.display().to_string(),
                field: format!("target[{j}].name"),
                detail: d,
            },
            None => dir_err(d),
        }
    })?;
    Ok(out)
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
            (
                &format!("{ONE}[webhook]\nurl = \"http://10.0.0.9/hook\"\nsecret_file = \"/s\"\n"),
                "webhook.url",
            ),
            (
                &format!("{ONE}[webhook]\nurl = \"ftp://10.0.0.9/hook\"\nsecret_file = \"/s\"\n"),
                "webhook.url",
            ),
        ] {
            let e = WatchConfig::from_toml(text, "w.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn webhooks_are_https_or_plain_http_to_this_machine_only() {
        for (url, ok) in [
            ("https://hooks.example.com/tdx", true),
            ("https://10.0.0.9:8443/hook", true),
            ("http://127.0.0.1:9000/hook", true),
            ("http://127.8.0.1/hook", true),
            ("http://[::1]:9000/hook", true),
            ("http://LocalHost:9000/hook", true),
            ("http://hooks.example.com/tdx", false),
            ("http://10.0.0.9/hook", false),
            ("http://[2001:db8::1]/hook", false),
            ("http://localhost.evil.example/hook", false),
            ("hooks.example.com/tdx", false),
        ] {
            assert_eq!(
                check_webhook_url(url).is_ok(),
                ok,
                "{url}: {:?}",
                check_webhook_url(url)
            );
        }
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    const T: &str = "[[target]]\nname = \"n\"\nurl = \"https://10.0.0.5:8443\"\npolicy = \"p.toml\"\ninsecure_root = \"/abs/root.der\"\n";

    #[test]
    fn a_targets_dir_needs_no_main_target_and_is_bounded() {
        let c = WatchConfig::from_toml("archive = \"/a.db\"\ntargets_dir = \"/t\"\n", "w.toml")
            .unwrap();
        assert_eq!(c.targets_reload_secs, 10);
        for (text, needle) in [
            (
                "archive = \"/a.db\"\ntargets_dir = \"/t\"\ntargets_reload_secs = 0\n",
                "targets_reload_secs",
            ),
            (&format!("max_archive_mib = 0\n{ONE}"), "max_archive_mib"),
            // Above about 2^61 the semaphore that bounds appraisals would panic.
            (&format!("concurrency = 4097\n{ONE}"), "concurrency"),
            (
                &format!("concurrency = 18446744073709551615\n{ONE}"),
                "concurrency",
            ),
        ] {
            let e = WatchConfig::from_toml(text, "w.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn targets_dir_files_resolve_relative_paths_and_skip_what_is_not_theirs() {
        let d = dir_with(&[
            ("a.toml", &T.replace("\"n\"", "\"a\"")),
            ("b.toml", &T.replace("\"n\"", "\"b\"")),
            // Half-written by an editor or a deployment tool, and not TOML at all.
            (".c.toml.swp", "[[target"),
            ("notes.txt", "[[target"),
        ]);
        let t = load_targets_dir(d.path(), &[], false).unwrap();
        let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(t[0].policy, d.path().join("p.toml"));
        assert_eq!(
            t[0].insecure_root.as_deref(),
            Some(Path::new("/abs/root.der"))
        );
    }

    #[test]
    fn targets_dir_refusals_name_the_file_and_key() {
        let fixed = WatchConfig::from_toml(ONE, "w.toml").unwrap().target;
        for (files, file, needle) in [
            (
                vec![("x.toml", format!("{T}surprise = 1\n"))],
                "x.toml",
                "surprise",
            ),
            (
                vec![("x.toml", T.replace("https://10.0.0.5:8443", "http://x"))],
                "x.toml",
                "target[0].url",
            ),
            (
                vec![("x.toml", format!("{T}on_failure = [\"webhook\"]\n"))],
                "x.toml",
                "[webhook]",
            ),
            // Unique with the main file's targets and across files.
            (
                vec![("x.toml", T.replace("\"n\"", "\"a\""))],
                "x.toml",
                "used twice",
            ),
            (
                vec![("x.toml", T.to_string()), ("y.toml", T.to_string())],
                "y.toml",
                "used twice",
            ),
        ] {
            let named: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
            let d = dir_with(&named);
            let e = load_targets_dir(d.path(), &fixed, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(file) && e.contains(needle), "{files:?}: {e}");
        }
        let e = load_targets_dir(Path::new("/nonexistent/targets"), &fixed, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/targets"), "{e}");
    }
}
