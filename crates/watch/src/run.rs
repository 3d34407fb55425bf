//! The `watch` daemon: every target appraised on its interval (with jitter, bounded
//! concurrency and a timeout) by an RA-TLS handshake and a fresh challenge against its policy,
//! each appraisal archived before its metrics move, and `/metrics`, `/livez`, `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sha2::{Digest as _, Sha256};
use tdx_client::attest::Unattested;
use tdx_client::{Client, ClientError, Target};
use tdx_core::verify::{Policy, Verifier};

use super::archive::{Archive, ArchiveError, LastOf, NewRecord};
use super::config::{OnFailure, TargetConfig, WatchConfig};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Setup(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    target: String,
    check: String,
}

struct Metrics {
    registry: Registry,
    /// 1 accepted, 0 rejected or failed, per target (what alert rules read).
    last_result: Family<TargetLabel, Gauge>,
    last_success: Family<TargetLabel, Gauge>,
    last_appraisal: Family<TargetLabel, Gauge>,
    interval: Family<TargetLabel, Gauge>,
    appraisals: Family<TargetLabel, Counter>,
    /// Not accepted, per target: made at 0 when the target starts, so `increase()` sees its
    /// first failure (a series born at 1 shows no increase).
    failed_appraisals: Family<TargetLabel, Counter>,
    failures: Family<FailureLabel, Counter>,
    measurement_changes: Family<TargetLabel, Counter>,
    seconds: Histogram,
    archive_head_seq: Gauge,
    /// 1 while the archive takes records, 0 after an append failed.
    archive_ok: Gauge,
    /// 1 while `targets_dir` was last read whole, 0 while it holds a file `watch` refuses.
    targets_ok: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("tdx_watch");
        let m = Metrics {
            registry: Registry::default(),
            last_result: Family::default(),
            last_success: Family::default(),
            last_appraisal: Family::default(),
            interval: Family::default(),
            appraisals: Family::default(),
            failed_appraisals: Family::default(),
            failures: Family::default(),
            measurement_changes: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            archive_head_seq: Gauge::default(),
            archive_ok: Gauge::default(),
            targets_ok: Gauge::default(),
        };
        registry.register(
            "last_result",
            "1 when the target's last appraisal was accepted, 0 otherwise",
            m.last_result.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the target last passed",
            m.last_success.clone(),
        );
        registry.register(
            "last_appraisal_timestamp_seconds",
            "When the target was last appraised, whatever the verdict",
            m.last_appraisal.clone(),
        );
        registry.register(
            "interval_seconds",
            "The target's configured appraisal interval (the alert rules compare with it)",
            m.interval.clone(),
        );
        registry.register(
            "appraisals",
            "Appraisals made, per target",
            m.appraisals.clone(),
        );
        registry.register(
            "failed_appraisals",
            "Appraisals not accepted, per target (from 0 when the target starts)",
            m.failed_appraisals.clone(),
        );
        registry.register(
            "failures",
            "Failed appraisals, per target and failed check",
            m.failures.clone(),
        );
        registry.register(
            "measurement_changes",
            "Times the target's measurements (MRTD, RTMR0-3) changed between appraisals",
            m.measurement_changes.clone(),
        );
        registry.register(
            "appraisal_duration_seconds",
            "Time of one appraisal (connect, handshake, challenge)",
            m.seconds.clone(),
        );
        registry.register(
            "archive_head_seq",
            "Sequence number of the archive's last record",
            m.archive_head_seq.clone(),
        );
        registry.register(
            "archive_ok",
            "1 while the archive takes records, 0 after an append failed",
            m.archive_ok.clone(),
        );
        registry.register(
            "targets_config_ok",
            "1 while targets_dir was last read whole, 0 while a file in it is refused",
            m.targets_ok.clone(),
        );
        Metrics { registry, ..m }
    }
}

struct Shared {
    archive: Mutex<Archive>,
    metrics: Metrics,
    /// False once an append failed (disk full, I/O): not ready, and said so.
    archive_ok: AtomicBool,
    archive_error: Mutex<String>,
    /// The last record's sequence number and hash: what an auditor pins (`evidence verify
    /// --head`).
    last_head: Mutex<(i64, [u8; 32])>,
    /// The archive's random id: webhook events and `/readyz` name it with record numbers.
    archive_id: String,
    /// Why `targets_dir` was last refused (the previous targets are still watched).
    targets_error: Mutex<Option<String>>,
}

/// One target, ready to appraise.
struct Watched {
    config: TargetConfig,
    target: Target,
    client: Client,
    policy_text: Vec<u8>,
    last_measurements: Mutex<Option<String>>,
    /// The state receivers were told, to act on changes only.
    announced: Mutex<Announced>,
    webhook: Option<Arc<tdx_net::webhook::Webhook>>,
}

/// A target's state as it was last acted on: each change is acted on once, and a change
/// whose delivery failed is not lost.
#[derive(Debug, Default)]
struct Announced {
    /// What receivers were last told (a target without a webhook: what was last logged),
    /// passing `Some(true)`, failing `Some(false)`; taken up from the archive's last record
    /// of the target when it starts ([`Announced::taken_up`]).
    told: Option<bool>,
    /// `told` came from the archive, not from a delivery: a failing record may be one whose
    /// "failing" was never delivered, so the first appraisal after start sends its state
    /// either way.
    unsure: bool,
    /// A state being delivered now: nothing else is sent while it is, so deliveries cannot
    /// finish out of order and leave `told` at the older state.
    sending: Option<bool>,
    /// The event announcing a change not yet delivered: sent again as it is (the same body,
    /// so the same signature, `at` and `record`), so a receiver de-duplicating by record sees
    /// one event however many times it is tried.
    pending: Option<(bool, serde_json::Value)>,
}

impl Announced {
    /// The state taken up from the target's last archived verdict. A pass was told (its
    /// "recovered" or nothing was news); a failure may not have been: its "failing" is only
    /// in the archive, never in what was delivered, so it is taken up unsure.
    fn taken_up(verdict: Option<&str>) -> Self {
        let told = verdict.map(|v| v == "accepted");
        Self {
            told,
            unsure: told == Some(false),
            ..Self::default()
        }
    }

    /// The event to send for an appraisal that passed (`ok`) or failed, if it is a change
    /// to act on: the one kept from an undelivered attempt at this change, or else a new one
    /// from `event`. Passing with nothing told before is no news; failing is. A change found
    /// is under way until [`Announced::settle`].
    fn change(
        &mut self,
        ok: bool,
        event: impl FnOnce() -> serde_json::Value,
    ) -> Option<serde_json::Value> {
        if self.sending.is_some() {
            return None;
        }
        match self.told {
            Some(told) if told == ok && !self.unsure => {
                // Back in the state receivers know before an undelivered change reached
                // them: that change is over, and a later one is a change of its own.
                self.pending = None;
                None
            }
            None if ok => {
                self.told = Some(true);
                None
            }
            _ => {
                self.sending = Some(ok);
                let event = match self.pending.take() {
                    Some((state, kept)) if state == ok => kept,
                    _ => event(),
                };
                self.pending = Some((ok, event.clone()));
                Some(event)
            }
        }
    }

    /// Acting on the change to `ok` ended. Only a delivered change is told, so when every
    /// attempt failed the next appraisal in that state sends the same event again.
    fn settle(&mut self, ok: bool, delivered: bool) {
        if self.sending == Some(ok) {
            self.sending = None;
        }
        if delivered {
            self.told = Some(ok);
            self.unsure = false;
            if self.pending.as_ref().is_some_and(|(state, _)| *state == ok) {
                self.pending = None;
            }
        }
    }
}

fn setup(e: impl std::fmt::Display) -> WatchError {
    WatchError::Setup(e.to_string())
}

async fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, WatchError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        tdx_fsutil::read_regular(&owned, crate::config::MAX_CONFIG_FILE_BYTES)
    })
    .await
    .map_err(setup)?
    .map_err(|e| setup(format!("{what} {}: {e}", path.display())))
}

/// The files a target names, read once: what its appraisal is built from and what its
/// fingerprint covers.
struct TargetFiles {
    policy: Vec<u8>,
    root: Option<Vec<u8>>,
    gpu_roots: Option<Vec<u8>>,
}

impl TargetFiles {
    async fn read(t: &TargetConfig) -> Result<Self, WatchError> {
        let optional = |p: &Option<std::path::PathBuf>, what: &'static str| {
            let p = p.clone();
            let what = format!("target {}: {what}", t.name);
            async move {
                match p {
                    Some(p) => read(&p, &what).await.map(Some),
                    None => Ok(None),
                }
            }
        };
        Ok(Self {
            policy: read(&t.policy, &format!("target {}: policy", t.name)).await?,
            root: optional(&t.insecure_root, "insecure_root").await?,
            gpu_roots: optional(&t.insecure_gpu_roots, "insecure_gpu_roots").await?,
        })
    }

    /// What the target's appraisal depends on: its table and these files. A change in any
    /// restarts the target.
    fn fingerprint(&self, t: &TargetConfig) -> Result<[u8; 32], WatchError> {
        let mut h = Sha256::new();
        h.update(toml::to_string(t).map_err(setup)?.as_bytes());
        for bytes in [
            Some(&self.policy),
            self.root.as_ref(),
            self.gpu_roots.as_ref(),
        ] {
            // Absent and empty must differ, and each file's bytes stay apart from the next.
            match bytes {
                Some(b) => {
                    h.update([1]);
                    h.update((b.len() as u64).to_be_bytes());
                    h.update(b);
                }
                None => h.update([0]),
            }
        }
        Ok(h.finalize().into())
    }
}

async fn watched(
    t: &TargetConfig,
    files: TargetFiles,
    webhook: Option<&Arc<tdx_net::webhook::Webhook>>,
) -> Result<Watched, WatchError> {
    let text = std::str::from_utf8(&files.policy)
        .map_err(|_| setup(format!("target {}: policy: not UTF-8", t.name)))?;
    let policy = Policy::from_toml(text, &t.policy.display().to_string())
        .map_err(|e| setup(format!("target {}: {e}", t.name)))?;
    let verifier = match files.root {
        Some(root) => Verifier::with_insecure_root(root),
        None => Verifier::production(),
    };
    let mut client = Client::new(verifier, policy).map_err(setup)?;
    if let Some(pem) = &files.gpu_roots {
        let roots = tdx_core::gpu::GpuRoots::insecure_from_pem(pem)
            .map_err(|e| setup(format!("target {}: insecure_gpu_roots: {e}", t.name)))?;
        client = client.with_insecure_gpu_roots(roots);
    }
    Ok(Watched {
        target: Target::parse(&t.url).map_err(setup)?,
        config: t.clone(),
        client,
        policy_text: files.policy,
        last_measurements: Mutex::new(None),
        announced: Mutex::new(Announced::default()),
        webhook: t
            .on_failure
            .contains(&OnFailure::Webhook)
            .then(|| webhook.cloned())
            .flatten(),
    })
}

/// The webhook secret signs what receivers act on: a file others may read is refused, as ssh
/// refuses a readable private key.
fn secret_file_is_private(path: &std::path::Path) -> Result<(), WatchError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|e| setup(format!("webhook.secret_file {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(setup(format!(
            "webhook.secret_file {}: mode {:o} lets other users read or change the secret; \
             chmod 600 it (owned by the user watch runs as)",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// Run until `shutdown` completes. Prints `tdx-agent watch listening on ADDR` once serving.
pub async fn run(
    config: WatchConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), WatchError> {
    let webhook = match &config.webhook {
        Some(w) => {
            secret_file_is_private(&w.secret_file)?;
            let secret = read(&w.secret_file, "webhook.secret_file").await?;
            let secret = secret.trim_ascii().to_vec();
            Some(Arc::new(
                tdx_net::webhook::Webhook::new(&w.url, secret).map_err(setup)?,
            ))
        }
        None => None,
    };
    let mut targets = Vec::new();
    for t in &config.target {
        let files = TargetFiles::read(t).await?;
        targets.push(Arc::new(watched(t, files, webhook.as_ref()).await?));
    }
    // The directory's targets are taken whole at start, like the main file's: a refused
    // file stops `watch` before it binds anything.
    let mut from_dir = Vec::new();
    if let Some(dir) = &config.targets_dir {
        for t in read_targets_dir(dir, &config).await.map_err(setup)? {
            let files = TargetFiles::read(&t).await?;
            let fingerprint = files.fingerprint(&t)?;
            from_dir.push((
                Arc::new(watched(&t, files, webhook.as_ref()).await?),
                fingerprint,
            ));
        }
    }
    let path = config.archive.clone();
    let max_mib = config.max_archive_mib;
    let (archive, (head_seq, head)) = tokio::task::spawn_blocking(move || {
        let a = Archive::open(&path)?;
        if let Some(mib) = max_mib {
            a.set_max_bytes(mib << 20)?;
        }
        let head = a.head()?;
        Ok::<_, ArchiveError>((a, head))
    })
    .await
    .map_err(setup)?
    .map_err(setup)?;
    let archive_id = archive.id().to_string();
    tracing::info!(head_seq, head = %hex::encode(head), archive_id = %archive_id, "archive opened; pin this head to detect deletions");
    let shared = Arc::new(Shared {
        archive_id,
        archive: Mutex::new(archive),
        metrics: Metrics::new(),
        archive_ok: AtomicBool::new(true),
        archive_error: Mutex::new(String::new()),
        last_head: Mutex::new((head_seq, head)),
        targets_error: Mutex::new(None),
    });
    shared.metrics.archive_head_seq.set(head_seq);
    shared.metrics.archive_ok.set(1);
    shared.metrics.targets_ok.set(1);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| setup(format!("listen {}: {e}", config.listen)))?;
    let local: SocketAddr = listener.local_addr().map_err(setup)?;
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/livez", axum::routing::get(|| async { "alive" }))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(Arc::clone(&shared));
    println!("tdx-agent watch listening on {local}");
    let runner = Arc::new(Runner {
        shared: Arc::clone(&shared),
        permits: Arc::new(tokio::sync::Semaphore::new(config.concurrency)),
        timeout: Duration::from_secs(config.timeout_secs),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for w in targets {
        runner.spawn(&mut tasks, w);
    }
    let mut running = std::collections::HashMap::new();
    for (w, fingerprint) in from_dir {
        let name = w.config.name.clone();
        running.insert(name, (fingerprint, runner.spawn(&mut tasks, w)));
    }
    tasks.spawn(prune_loop(Arc::clone(&shared), config.retain_days));
    let reload = config.targets_dir.clone().map(|dir| {
        tokio::spawn(reload_loop(
            dir,
            config.clone(),
            webhook.clone(),
            Arc::clone(&runner),
            running,
        ))
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(shutdown);
    let result = server.await.map_err(setup);
    if let Some(r) = reload {
        r.abort();
    }
    tasks.abort_all();
    result
}

/// Starts targets' loops, all sharing one concurrency bound, timeout and archive.
struct Runner {
    shared: Arc<Shared>,
    permits: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

impl Runner {
    fn spawn(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        w: Arc<Watched>,
    ) -> tokio::task::AbortHandle {
        self.shared
            .metrics
            .interval
            .get_or_create(&TargetLabel {
                target: w.config.name.clone(),
            })
            .set(i64::try_from(w.config.interval_secs).unwrap_or(i64::MAX));
        tasks.spawn(watch_target(
            w,
            Arc::clone(&self.shared),
            Arc::clone(&self.permits),
            self.timeout,
        ))
    }

    /// A target no longer watched leaves no series behind for the alert rules to read.
    fn forget(&self, name: &str) {
        let label = TargetLabel {
            target: name.to_string(),
        };
        let m = &self.shared.metrics;
        m.last_result.remove(&label);
        m.last_success.remove(&label);
        m.last_appraisal.remove(&label);
        m.interval.remove(&label);
    }
}

async fn read_targets_dir(
    dir: &std::path::Path,
    config: &WatchConfig,
) -> Result<Vec<TargetConfig>, super::config::TargetsDirError> {
    let owned = dir.to_path_buf();
    let fixed = config.target.clone();
    let has_webhook = config.webhook.is_some();
    tokio::task::spawn_blocking(move || {
        super::config::load_targets_dir(&owned, &fixed, has_webhook)
    })
    .await
    .unwrap_or_else(|e| {
        Err(super::config::TargetsDirError::Dir {
            dir: dir.display().to_string(),
            detail: e.to_string(),
        })
    })
}

/// Re-read `dir` every `targets_reload_secs`: start new targets, stop removed ones, restart
/// changed ones. A directory that cannot be taken whole changes nothing, and `watch` says so
/// (not ready, `tdx_watch_targets_config_ok` 0) until it can.
async fn reload_loop(
    dir: std::path::PathBuf,
    config: WatchConfig,
    webhook: Option<Arc<tdx_net::webhook::Webhook>>,
    runner: Arc<Runner>,
    mut running: std::collections::HashMap<String, ([u8; 32], tokio::task::AbortHandle)>,
) {
    let mut tasks = tokio::task::JoinSet::<()>::new();
    let every = Duration::from_secs(config.targets_reload_secs);
    loop {
        tokio::time::sleep(every).await;
        // Reap finished (aborted) loops so the set does not grow with every restart.
        while tasks.try_join_next().is_some() {}
        let prepared = async {
            let mut built = Vec::new();
            for t in read_targets_dir(&dir, &config).await.map_err(setup)? {
                let files = TargetFiles::read(&t).await?;
                let fp = files.fingerprint(&t)?;
                let unchanged = running.get(&t.name).is_some_and(|(old, _)| *old == fp);
                let w = if unchanged {
                    None
                } else {
                    Some(Arc::new(watched(&t, files, webhook.as_ref()).await?))
                };
                built.push((t.name, fp, w));
            }
            Ok::<_, WatchError>(built)
        }
        .await;
        let built = match prepared {
            Ok(b) => b,
            Err(e) => {
                let why = e.to_string();
                let mut last = runner
                    .shared
                    .targets_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.as_deref() != Some(why.as_str()) {
                    tracing::error!(error = %why, "targets_dir refused; the previous targets are still watched");
                    *last = Some(why);
                }
                runner.shared.metrics.targets_ok.set(0);
                continue;
            }
        };
        if runner
            .shared
            .targets_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
        {
            tracing::info!("targets_dir taken again");
        }
        runner.shared.metrics.targets_ok.set(1);
        let keep: std::collections::BTreeSet<String> =
            built.iter().map(|(n, _, _)| n.clone()).collect();
        running.retain(|name, (_, handle)| {
            let kept = keep.contains(name);
            if !kept {
                handle.abort();
                runner.forget(name);
                tracing::info!(target = %name, "target removed from targets_dir; no longer watched");
            }
            kept
        });
        for (name, fp, w) in built {
            let Some(w) = w else { continue };
            let restarted = running.remove(&name).map(|(_, h)| h.abort()).is_some();
            tracing::info!(target = %name, restarted, "target from targets_dir watched");
            running.insert(name, (fp, runner.spawn(&mut tasks, w)));
        }
    }
}

/// Up to a tenth of `interval` either way, so targets added together do not move together.
fn jittered(interval: Duration) -> Duration {
    let spread = interval.as_millis() as u64 / 10;
    if spread == 0 {
        return interval;
    }
    let r = rand_core::RngCore::next_u64(&mut rand_core::OsRng) % (2 * spread + 1);
    (interval + Duration::from_millis(r)).saturating_sub(Duration::from_millis(spread))
}

async fn watch_target(
    w: Arc<Watched>,
    shared: Arc<Shared>,
    permits: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
) {
    take_up(&w, &shared).await;
    let interval = Duration::from_secs(w.config.interval_secs);
    // The first appraisal soon, spread over a tenth of the interval.
    tokio::time::sleep(jittered(interval) / 10).await;
    loop {
        let started = Instant::now();
        if let Ok(_permit) = permits.acquire().await {
            appraise_once(&w, &shared, timeout).await;
        }
        let wait = jittered(interval).saturating_sub(started.elapsed());
        tokio::time::sleep(wait).await;
    }
}

/// A target (re)starting takes up where the archive left it: the state its last record gave
/// (a failure taken up unsure of its delivery, so the first appraisal sends "failing" or
/// "recovered"; see [`Announced::taken_up`]), and when it last passed.
async fn take_up(w: &Watched, shared: &Arc<Shared>) {
    let name = w.config.name.clone();
    let s = Arc::clone(shared);
    let last = tokio::task::spawn_blocking(move || {
        s.archive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_of(&name)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    .unwrap_or_else(|e| {
        tracing::warn!(target = %w.config.name, error = %e, "the target's last record could not be read; it starts as if new");
        LastOf::default()
    });
    *w.announced.lock().unwrap_or_else(|p| p.into_inner()) =
        Announced::taken_up(last.verdict.as_deref());
    let label = TargetLabel {
        target: w.config.name.clone(),
    };
    // The counters exist at 0 before the first appraisal, so `increase()` in the alert rules
    // and dashboards sees the first failure or change.
    let m = &shared.metrics;
    let _ = m.appraisals.get_or_create(&label);
    let _ = m.failed_appraisals.get_or_create(&label);
    let _ = m.measurement_changes.get_or_create(&label);
    let since = m.last_success.get_or_create(&label);
    match last.accepted_at {
        Some(at) => {
            since.set(at);
        }
        // Never passed: counted from now, so a target failing from its first appraisal is
        // alerted on (TdxTargetNotVerified); restarted in this process, it keeps its time.
        None if since.get() == 0 => {
            since.set(tdx_core::verify::time::now_unix());
        }
        None => {}
    }
}

/// The report as one line of JSON: the export inlines it as it is (docs/formats.md §14).
fn report_line(report: &tdx_core::verify::Report) -> String {
    // Only strings, numbers and bools: serialisation cannot fail.
    serde_json::to_string(report).unwrap_or_default()
}

async fn appraise_once(w: &Arc<Watched>, shared: &Arc<Shared>, timeout: Duration) {
    let started = Instant::now();
    let at = tdx_core::verify::time::now_unix();
    let outcome = tokio::time::timeout(
        timeout,
        tdx_client::attest::attest_recorded(&w.client, &w.target),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut record = NewRecord {
        target: w.config.name.clone(),
        url: w.config.url.clone(),
        at,
        verdict: "error".into(),
        failed_check: None,
        certificate: None,
        evidence: None,
        challenge: None,
        nonce: None,
        policy: w.policy_text.clone(),
        report: String::new(),
        verifier_version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut measurements = None;
    match outcome {
        Ok(Ok(a)) => {
            let report = &a.fresh.report;
            record.verdict = if report.accepted() {
                "accepted"
            } else {
                "rejected"
            }
            .into();
            record.failed_check = report.failures().next().map(|c| c.name.clone());
            record.report = report_line(report);
            record.certificate = Some(a.peer_cert);
            record.evidence = serde_json::to_vec(&a.fresh.evidence).ok();
            record.challenge = serde_json::to_vec(&a.fresh.challenge).ok();
            record.nonce = Some(a.fresh.nonce.to_vec());
            measurements = measurements_of(report);
        }
        Ok(Err(Unattested {
            error: ClientError::Rejected(report),
            peer_cert,
        })) => {
            record.verdict = "rejected".into();
            record.failed_check = report.failures().next().map(|c| c.name.clone());
            record.report = report_line(&report);
            record.certificate = peer_cert;
            // A change refused at the handshake is a change too (a model update the policy
            // does not allow yet, say).
            measurements = measurements_of(&report);
        }
        Ok(Err(Unattested {
            error: e,
            peer_cert,
        })) => {
            record.certificate = peer_cert;
            record.failed_check = Some(
                e.failed_check()
                    .map_or_else(|| "connection".to_string(), |c| c.name),
            );
            if e.failed_check().is_some() {
                record.verdict = "rejected".into();
            }
            // When it ended: with `at`, the window its checks ran in (`reverify` tries both).
            record.report = serde_json::json!({
                "error": e.to_string(),
                "ended_at": tdx_core::verify::time::format_unix(tdx_core::verify::time::now_unix()),
            })
            .to_string();
        }
        Err(_) => {
            record.failed_check = Some("timeout".into());
            record.report = serde_json::json!({
                "error": format!("no answer within {} s (timeout_secs)", timeout.as_secs())
            })
            .to_string();
        }
    }
    // Archived first, so while the archive takes records no metric runs ahead of it. When it
    // fails (`archive_ok` 0, its own alert), targets' health is still shown and alerted on:
    // an unwritable archive must not also blind the operator.
    let archived = {
        let shared = Arc::clone(shared);
        let record = record.clone();
        tokio::task::spawn_blocking(move || {
            let mut archive = shared.archive.lock().unwrap_or_else(|p| p.into_inner());
            let head = archive.append(&record)?;
            // Published before the archive is unlocked: appends publish in their order, so
            // the head shown never goes back to an older record.
            *shared.last_head.lock().unwrap_or_else(|p| p.into_inner()) = head;
            shared.metrics.archive_head_seq.set(head.0);
            Ok::<_, ArchiveError>(head)
        })
        .await
    };
    let archived_as = match archived {
        Ok(Ok((seq, hash))) => {
            shared.metrics.archive_ok.set(1);
            if !shared.archive_ok.swap(true, Ordering::Relaxed) {
                tracing::info!("the archive takes records again");
            }
            Some((seq, hash))
        }
        Ok(Err(e)) => {
            archive_failed(shared, e.to_string());
            None
        }
        Err(e) => {
            archive_failed(shared, e.to_string());
            None
        }
    };
    let m = &shared.metrics;
    let label = TargetLabel {
        target: w.config.name.clone(),
    };
    m.seconds.observe(elapsed);
    m.appraisals.get_or_create(&label).inc();
    m.last_appraisal.get_or_create(&label).set(at);
    let ok = record.verdict == "accepted";
    m.last_result.get_or_create(&label).set(i64::from(ok));
    if ok {
        m.last_success.get_or_create(&label).set(at);
    } else {
        m.failed_appraisals.get_or_create(&label).inc();
        m.failures
            .get_or_create(&FailureLabel {
                target: w.config.name.clone(),
                check: record.failed_check.clone().unwrap_or_default(),
            })
            .inc();
    }
    let state = if ok { "recovered" } else { "failing" };
    let event = || {
        serde_json::json!({
            "target": w.config.name,
            "url": w.config.url,
            "state": state,
            "verdict": record.verdict,
            "failed_check": record.failed_check,
            "report_sha256": hex::encode(Sha256::digest(record.report.as_bytes())),
            "at": tdx_core::verify::time::format_unix(at),
            // The archive record it comes from: with the archive's id, a unique id that
            // increases (a receiver refuses one it has seen, so a replay within the time
            // window is caught too), which auditors find in the archive and its export.
            "record": archived_as.map(|(seq, hash)| serde_json::json!({
                "archive": shared.archive_id,
                "seq": seq,
                "hash": hex::encode(hash),
            })),
        })
    };
    let change = w
        .announced
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .change(ok, event);
    // Acted on once per change: starting to fail (also at the first appraisal) or recovering.
    if let Some(event) = change {
        tracing::warn!(target = %w.config.name, state, verdict = %record.verdict, failed_check = ?record.failed_check, record = %event["record"]["seq"], "target state changed");
        if let Some(hook) = &w.webhook {
            let (hook, w) = (Arc::clone(hook), Arc::clone(w));
            tokio::spawn(async move {
                let sent = hook.send(&event).await;
                if let Err(e) = &sent {
                    tracing::error!(target = %w.config.name, state, error = %e, "webhook not delivered; the same event is sent again at the next appraisal in this state");
                }
                w.announced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .settle(ok, sent.is_ok());
            });
        } else {
            w.announced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .settle(ok, true);
        }
    }
    if let Some(now) = measurements {
        let mut last = w
            .last_measurements
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_some_and(|l| *l != now) {
            m.measurement_changes.get_or_create(&label).inc();
            tracing::warn!(target = %w.config.name, "measurements changed");
        }
        *last = Some(now);
    }
}

/// The measurements a report appraised (MRTD, RTMR0-3), to see them change.
fn measurements_of(report: &tdx_core::verify::Report) -> Option<String> {
    report
        .measurements()
        .as_ref()
        .map(|m| format!("{}{}{}{}{}", m.mrtd, m.rtmr0, m.rtmr1, m.rtmr2, m.rtmr3))
}

fn archive_failed(shared: &Shared, mut detail: String) {
    if detail.contains("full") {
        detail.push_str(
            " (the archive reached max_archive_mib or its disk is full: free space, raise \
             max_archive_mib or lower retain_days; every record committed before is kept)",
        );
    }
    tracing::error!(error = %detail, "archiving an appraisal failed; not ready");
    shared.archive_ok.store(false, Ordering::Relaxed);
    shared.metrics.archive_ok.set(0);
    *shared
        .archive_error
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = detail;
}

async fn prune_loop(shared: Arc<Shared>, retain_days: u64) {
    loop {
        let before = tdx_core::verify::time::now_unix()
            - i64::try_from(retain_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
        let s = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = s
                .archive
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .prune(before)
            {
                tracing::error!(error = %e, "pruning the archive failed");
            }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &shared.metrics.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let targets = shared
        .targets_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(why) = targets {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "ready": false,
                "targets": format!("{why}; the targets read before are still watched"),
            })),
        );
    }
    if shared.archive_ok.load(Ordering::Relaxed) {
        let (seq, head) = *shared.last_head.lock().unwrap_or_else(|p| p.into_inner());
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({
                "ready": true,
                "archive_id": shared.archive_id,
                "archive_head_seq": seq,
                "archive_head": hex::encode(head),
            })),
        )
    } else {
        let why = shared
            .archive_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "ready": false,
                "archive": format!("the last appraisal could not be archived: {why}"),
            })),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event standing for the appraisal `seq`, as the record it names.
    fn ev(seq: i64) -> impl FnOnce() -> serde_json::Value {
        move || serde_json::json!({ "record": { "seq": seq } })
    }

    #[test]
    fn a_change_is_acted_on_once_and_again_only_when_it_was_not_delivered() {
        // Taken up from a passing record, then failing: a change.
        let mut a = Announced::taken_up(Some("accepted"));
        assert!(a.change(true, ev(1)).is_none());
        assert!(a.change(false, ev(2)).is_some());
        // Not sent again while its delivery is under way, nor a pass sent meanwhile.
        assert!(a.change(false, ev(3)).is_none());
        assert!(a.change(true, ev(4)).is_none());
        // Delivered: told, and a recovery is the next change.
        a.settle(false, true);
        assert!(a.change(false, ev(5)).is_none());
        assert!(a.change(true, ev(6)).is_some());
        a.settle(true, true);
        assert!(a.change(true, ev(7)).is_none());
        // Nothing told before: failing is news, passing is not (and then failing is).
        assert!(Announced::default().change(false, ev(1)).is_some());
        let mut fresh = Announced::default();
        assert!(fresh.change(true, ev(1)).is_none());
        assert!(fresh.change(false, ev(2)).is_some());
    }

    #[test]
    fn a_change_not_delivered_is_sent_again_as_the_same_event() {
        let mut a = Announced::taken_up(Some("accepted"));
        let first = a.change(false, ev(10)).expect("failing is a change");
        // Every attempt failed: the next failing appraisal (#11) sends the event of #10, the
        // appraisal that changed the state, not a new one naming #11.
        a.settle(false, false);
        let again = a.change(false, ev(11)).expect("sent again");
        assert_eq!(again, first);
        assert_eq!(again["record"]["seq"], 10);
        a.settle(false, true);
        assert!(a.change(false, ev(12)).is_none());
        // A change undone before it was delivered is over: the next one is its own event.
        let mut b = Announced::taken_up(Some("accepted"));
        assert!(b.change(false, ev(20)).is_some());
        b.settle(false, false);
        assert!(b.change(true, ev(21)).is_none());
        assert_eq!(b.change(false, ev(22)).unwrap()["record"]["seq"], 22);
    }

    #[test]
    fn a_target_taken_up_failing_sends_its_state_at_the_first_appraisal() {
        // The archive's last record failed, but whether its "failing" was delivered is not
        // known: still failing sends "failing" (until delivered), passing sends "recovered".
        let mut failing = Announced::taken_up(Some("rejected"));
        assert!(failing.change(false, ev(1)).is_some());
        failing.settle(false, false);
        assert!(failing.change(false, ev(2)).is_some());
        failing.settle(false, true);
        assert!(failing.change(false, ev(3)).is_none());
        let mut error = Announced::taken_up(Some("error"));
        assert!(error.change(true, ev(1)).is_some());
        error.settle(true, true);
        assert!(error.change(true, ev(2)).is_none());
        // Passing was told; never appraised is as new.
        assert!(
            Announced::taken_up(Some("accepted"))
                .change(true, ev(1))
                .is_none()
        );
        assert!(Announced::taken_up(None).change(true, ev(1)).is_none());
        assert!(Announced::taken_up(None).change(false, ev(1)).is_some());
    }
}
