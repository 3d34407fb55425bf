//! The daemon: one TLS listener serving HTTPS and gRPC with an RA-TLS certificate.
//!
//! Start-up order matters: configuration is validated, the policy loaded and the files and
//! directories the configuration names checked (so a mistake there changes nothing on disk),
//! the state and audit directories locked against a second agent, the TEE opened, the audit
//! log opened, the runtime measurements extended and the first certificate issued and
//! self-checked, all before the port is bound; READY=1 follows once the listener serves.
//!
//! READY=1 says start-up finished, not that the agent is ready: /readyz and the gRPC health
//! service say that, and may say "not ready" long after (a GPU whose CC ready state is not set
//! yet, an OCSP outage, vLLM still loading). Were READY=1 held back until every stage holds,
//! systemd would kill the agent at `TimeoutStartSec` and restart it, re-hashing the model, for
//! as long as the GPU or the model server (which starts after READY=1) takes: a restart loop
//! that cannot fix either (docs/operations.md, "Start-up, in order").

pub mod admin;
pub mod collateral;
pub mod error;
pub mod gpus;
pub mod grpc;
pub mod http;
pub mod instance;
pub mod issue;
pub mod listener;
pub mod measure;
pub mod metrics;
pub mod proxy;
pub mod quoter;
pub mod readiness;
pub mod service;
pub mod shards;
pub mod startup_events;
pub mod state;
pub mod systemd;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::audit::{AuditEvent, AuditLog, AuditOptions};
use crate::batcher::{Batcher, BatcherConfig};
use crate::config::{Config, TeeKindConfig};
use collateral::CollateralProvider;
use readiness::Readiness;
use tdx_core::verify::{Policy, Verifier};
use tdx_net::pccs::{CollateralSource, PccsClient};
#[cfg(feature = "sim")]
use tdx_sim::{SimDir, SimPki, SimTd};
use tdx_tee::configfs::{ConfigfsPaths, ConfigfsTee};
use tdx_tee::{Tee, TeeHandle};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Setup(String),
    #[error("listen {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

fn setup(e: impl std::fmt::Display) -> ServeError {
    ServeError::Setup(e.to_string())
}

/// Open the TEE the configuration names, and the collateral provider and root that go with it.
async fn open_tee(
    config: &Config,
) -> Result<(TeeHandle, CollateralProvider, Verifier), ServeError> {
    let pccs = |url: &str| -> Result<CollateralProvider, ServeError> {
        let client = PccsClient::new(url).map_err(setup)?;
        Ok(CollateralProvider::Pccs(Box::new(CollateralSource::new(
            client,
            Some(config.collateral.cache_dir.clone()),
        ))))
    };
    let insecure_root = match &config.collateral.insecure_root {
        Some(p) => Some(
            tokio::fs::read(p)
                .await
                .map_err(|e| setup(format!("collateral.insecure_root {}: {e}", p.display())))?,
        ),
        None => None,
    };
    match config.tee.kind {
        TeeKindConfig::Configfs => {
            let tee: Arc<dyn Tee> = Arc::new(ConfigfsTee::new(ConfigfsPaths {
                report_dir: config.tee.tsm_report_dir.clone(),
                measurements_dir: config.tee.measurements_dir.clone(),
                ccel_data: config.tee.ccel_data.clone(),
            }));
            let url =
                config.collateral.pccs_url.as_deref().ok_or_else(|| {
                    setup("collateral.pccs_url is required with the configfs TEE")
                })?;
            let verifier = match insecure_root {
                Some(der) => Verifier::with_insecure_root(der),
                None => Verifier::production(),
            };
            Ok((TeeHandle::new(tee), pccs(url)?, verifier))
        }
        #[cfg(feature = "sim")]
        TeeKindConfig::Sim => {
            let path = config
                .tee
                .sim_dir
                .clone()
                .ok_or_else(|| setup("tee.sim_dir is required with the simulated TEE"))?;
            let delay = config.tee.sim_quote_delay_ms;
            let (td, pki) = tokio::task::spawn_blocking(move || {
                let dir = SimDir::open(&path)?;
                if let Some(ms) = delay {
                    let mut s = dir.settings()?;
                    s.quote_delay_ms = ms;
                    dir.write_settings(&s)?;
                }
                let pki = Arc::new(SimPki::load(&dir)?);
                Ok::<_, tdx_sim::SimError>((SimTd::new(dir, Arc::clone(&pki)), pki))
            })
            .await
            .map_err(setup)?
            .map_err(setup)?;
            // The simulation's quotes only ever verify against its own root.
            let root = insecure_root.unwrap_or_else(|| pki.root_der().to_vec());
            let provider = match &config.collateral.pccs_url {
                Some(url) => pccs(url)?,
                None => CollateralProvider::sim(pki),
            };
            Ok((
                TeeHandle::new(Arc::new(td)),
                provider,
                Verifier::with_insecure_root(root),
            ))
        }
        #[cfg(not(feature = "sim"))]
        TeeKindConfig::Sim => Err(setup(format!(
            "tee.kind = \"sim\": {}",
            tdx_tee::SIM_NOT_BUILT
        ))),
    }
}

async fn load_policy(config: &Config) -> Result<(Policy, Vec<u8>), ServeError> {
    match &config.policy {
        None => Ok((Policy::default(), Vec::new())),
        Some(p) => {
            let bytes = tokio::fs::read(p)
                .await
                .map_err(|e| setup(format!("policy {}: {e}", p.display())))?;
            let text = String::from_utf8(bytes.clone())
                .map_err(|_| setup(format!("policy {}: not UTF-8", p.display())))?;
            let policy = Policy::from_toml(&text, &p.display().to_string()).map_err(setup)?;
            Ok((policy, bytes))
        }
    }
}

/// An insecure setting the agent's own policy refuses (check `agent insecure settings`, as
/// every client's does unless it accepts it by name) stops the start before anything is
/// measured: otherwise the first certificate's self-check would fail after the agent-config
/// event was extended, and a corrected configuration or policy could only be measured after a
/// reboot of the TD.
pub fn settings_the_policy_refuses(config: &Config, policy: &Policy) -> Result<(), String> {
    let settings = config.insecure_settings();
    let refused = tdx_core::verify::events::refused_agent_settings(
        settings.iter().map(|(name, _)| *name),
        &policy.rtmr3_events,
    );
    if refused.is_empty() {
        return Ok(());
    }
    let list = refused
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let policy_file = match &config.policy {
        Some(p) => format!("the policy file {}", p.display()),
        None => "a policy file (`policy = PATH`; none is given)".to_string(),
    };
    Err(format!(
        "{}: clients refuse an agent running with {} (check `agent insecure settings`), and so \
         would this agent's own self-check; to run with it, accept it in {policy_file} with \
         `[rtmr3_events] insecure_accept_agent_settings = [{list}]`, as every client's policy \
         must",
        refused.join(", "),
        if refused.len() == 1 { "it" } else { "them" },
    ))
}

/// What can be checked without the TEE and without state: the files and directories the
/// configuration names. Failing here, before the instance lock, writes no audit record and
/// leaves a simulation directory's settings as they were.
async fn preflight(config: &Config) -> Result<(), ServeError> {
    if let Some(p) = &config.collateral.insecure_root {
        tokio::fs::File::open(p)
            .await
            .map_err(|e| setup(format!("collateral.insecure_root {}: {e}", p.display())))?;
    }
    if let Some(p) = config.gpu.as_ref().and_then(|g| g.insecure_roots.as_ref()) {
        let pem = tokio::fs::read(p)
            .await
            .map_err(|e| setup(format!("gpu.insecure_roots {}: {e}", p.display())))?;
        tdx_core::gpu::GpuRoots::insecure_from_pem(&pem)
            .map_err(|e| setup(format!("gpu.insecure_roots {}: {e}", p.display())))?;
    }
    if let Some(d) = &config.model.dir {
        let meta = tokio::fs::metadata(d)
            .await
            .map_err(|e| setup(format!("model.dir {}: {e}", d.display())))?;
        if !meta.is_dir() {
            return Err(setup(format!("model.dir {}: not a directory", d.display())));
        }
    }
    // Read again when the GPUs are opened; here only so that an unreadable directory fails
    // before the audit log is written.
    let pci_dir = config.gpu.as_ref().map_or_else(
        || std::path::PathBuf::from(tdx_gpu::pci::DEFAULT_PCI_DEVICES_DIR),
        |g| g.pci_devices_dir.clone(),
    );
    tokio::task::spawn_blocking(move || tdx_gpu::pci::nvidia_gpus(&pci_dir))
        .await
        .map_err(setup)?
        .map_err(|e| setup(format!("gpu.pci_devices_dir: {e}")))?;
    Ok(())
}

/// Run the daemon until `shutdown` completes (the binary passes SIGTERM or Ctrl-C).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Listen for SIGTERM from the start: one arriving during start-up (a slow first quote)
    // must still end in a clean stop, not the default kill.
    let mut terminate = tokio::spawn(shutdown);
    config.validate("configuration").map_err(setup)?;
    let insecure = config.insecure_settings();
    if !insecure.is_empty() {
        let text: Vec<&str> = insecure.iter().map(|(_, t)| t.as_str()).collect();
        tracing::warn!("insecure settings in effect: {}", text.join("; "));
    }
    let (policy, policy_bytes) = load_policy(&config).await?;
    settings_the_policy_refuses(&config, &policy).map_err(setup)?;
    if !policy.pins_anything() {
        tracing::warn!("the policy pins no measurement: the self-check accepts any genuine TD");
    }
    preflight(&config).await?;
    // Before anything in the state or audit directory is read or written: a second agent
    // sharing them stops here. Held until run() returns.
    let _instance = {
        let dirs = [config.state_dir.clone(), config.audit.dir.clone()];
        tokio::task::spawn_blocking(move || instance::acquire(&[&dirs[0], &dirs[1]]))
            .await
            .map_err(setup)?
            .map_err(setup)?
    };
    let (tee, collateral, verifier) = open_tee(&config).await?;
    let audit = AuditLog::open(
        config.audit.dir.clone(),
        AuditOptions {
            max_bytes: config.audit.max_bytes,
            keep: Some(usize::try_from(config.audit.keep).unwrap_or(usize::MAX)),
            ..AuditOptions::default()
        },
    )
    .await
    .map_err(|e| setup(format!("audit log: {e}")))?;
    audit
        .append(AuditEvent::agent_started(env!("CARGO_PKG_VERSION")))
        .await
        .map_err(|e| setup(format!("audit log: {e}")))?;
    {
        use sha2::Digest as _;
        audit
            .append(AuditEvent::policy_loaded(&sha2::Sha256::digest(
                &policy_bytes,
            )))
            .await
            .map_err(|e| setup(format!("audit log: {e}")))?;
    }

    // Before anything is measured: a GPU the configuration says nothing about stops us here.
    let gpus = gpus::GpuAttester::open(&config, &policy.gpu)
        .await
        .map_err(setup)?
        .map(Arc::new);
    let connection_threads = config.limits.connection_threads();
    let metrics = Arc::new(metrics::Metrics::new(connection_threads));
    let readiness = Arc::new(Readiness::new(
        config.upstream.url.is_some(),
        gpus.is_some(),
    ));
    let rtmr3_log_path = config.state_dir.join("rtmr3-events.jsonl");
    let boot_id = tee.boot_id().await.map_err(setup)?;
    let rtmr3_log = {
        let path = rtmr3_log_path.clone();
        tokio::task::spawn_blocking(move || tdx_tee::rtmr3_log::Rtmr3Log::open(&path, &boot_id))
            .await
            .map_err(setup)?
            .map_err(|e| setup(format!("RTMR3 event log: {e}")))?
    };
    let rtmr3_log = tokio::sync::Mutex::new(rtmr3_log);
    // Until READY=1 (or an error ends the start): systemd's start timeout is kept from
    // running out while each bounded step takes its time.
    let still_starting = systemd::StillStarting::spawn();
    // Runtime measurements come before the first certificate, so its evidence carries them.
    let planned = startup_events::plan(&config, &policy_bytes)
        .await
        .map_err(setup)?;
    startup_events::apply(planned, &tee, &rtmr3_log, &rtmr3_log_path, &audit)
        .await
        .map_err(setup)?;

    let first = issue::Issuer {
        tee: &tee,
        collateral: &collateral,
        verifier: &verifier,
        policy: &policy,
        audit: &audit,
        metrics: &metrics,
        lifetime_secs: config.tls.cert_lifetime_secs,
        sans: &config.tls.subject_alt_names,
        rtmr3_log: &rtmr3_log,
        quote_timeout: issue::quote_timeout(&config),
        gpus: gpus.as_deref(),
    }
    .issue("startup")
    .await
    .map_err(|e| setup(format!("cannot issue the first RA-TLS certificate: {e}")))?;
    issue::mark_issued(&readiness, &first);

    let batch_metrics = Arc::clone(&metrics);
    let batcher = Batcher::new(
        Arc::new(quoter::Quoter {
            tee: tee.clone(),
            audit: audit.clone(),
            metrics: Arc::clone(&metrics),
            gpus: gpus.clone(),
        }),
        BatcherConfig {
            max_leaves: config.challenge.max_batch,
            max_waiting: config.challenge.max_waiting,
            quote_timeout: issue::quote_timeout(&config),
            gather: Duration::from_millis(config.challenge.gather_ms),
            observer: Some(Arc::new(move |b: &crate::batcher::BatchReport| {
                batch_metrics.challenge_batch_size.observe(b.leaves as f64);
            })),
        },
    );
    let state = Arc::new(
        state::AppState::new(
            config.clone(),
            tee,
            verifier,
            policy,
            collateral,
            first,
            Arc::clone(&readiness),
            Arc::clone(&metrics),
            audit.clone(),
            batcher,
            rtmr3_log,
            rtmr3_log_path,
        )
        .with_gpus(gpus)
        .with_proxy(config.upstream.url.clone().map(|u| {
            Arc::new(proxy::Proxy::new(
                u,
                config.upstream.clone(),
                connection_threads,
                Arc::clone(&metrics.requests),
            ))
        })),
    );
    // A restart in the same boot: the log must explain RTMR3, or we refuse to report ready.
    issue::check_measured(&state, &state.served()).await;
    let admin_path = config.state_dir.join("admin.sock");
    let admin = admin::bind(&admin_path)
        .map_err(|e| setup(format!("admin socket {}: {e}", admin_path.display())))?;

    let tls = listener::server_config(state.resolver.clone()).map_err(setup)?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // tonic-health starts "" at SERVING; nothing is serving until readiness says so.
    for name in ["", "tdx_agent.v1.Attestation"] {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let grpc = tonic::service::Routes::new(
        crate::proto::attestation_server::AttestationServer::new(grpc::AttestationService {
            state: Arc::clone(&state),
        }),
    )
    .add_service(health_service)
    .into_axum_router();
    let router = http::router(Arc::clone(&state))
        .merge(grpc)
        .fallback(http::not_found)
        // After every route is in: it applies to the routes registered before it.
        .method_not_allowed_fallback(http::method_not_allowed);

    let shards = shards::Shards::start(connection_threads, config.limits.yield_before_sleep)
        .map_err(setup)?;
    let listeners = listener::bind(config.listen, shards.threads().len()).map_err(|source| {
        ServeError::Bind {
            addr: config.listen,
            source,
        }
    })?;
    let local = listeners
        .first()
        .map(std::net::TcpListener::local_addr)
        .transpose()
        .map_err(setup)?
        .ok_or_else(|| setup("no listening socket"))?;
    tracing::info!(%local, "listening (HTTPS and gRPC)");
    // Tests and scripts read the bound address from here (useful with port 0).
    println!("tdx-agent listening on {local}");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(issue::maintain(Arc::clone(&state), shutdown_rx.clone()));
    tokio::spawn(systemd::watchdog(shutdown_rx.clone()));
    if let Some(p) = &state.proxy {
        tokio::spawn(proxy::health::watch_upstream(
            Arc::clone(p),
            Arc::clone(&readiness),
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(admin::serve(admin, Arc::clone(&state), shutdown_rx.clone()));
    tokio::spawn(health_loop(
        Arc::clone(&readiness),
        health_reporter,
        shutdown_rx.clone(),
    ));
    let limits = listener::ListenerLimits {
        header_read_timeout: Duration::from_secs(config.limits.header_read_timeout_secs),
        max_connections: config.limits.max_connections,
        shutdown_grace: Duration::from_secs(config.limits.shutdown_grace_secs),
    };
    let server = tokio::spawn(listener::serve(
        listeners,
        shards,
        Arc::new(tls),
        service::Service::new(Arc::clone(&state), router),
        limits,
        shutdown_rx,
        state.measured_epoch.subscribe(),
    ));
    // Start-up is done whatever the stages say (see the module's comment): READY=1 now, once.
    drop(still_starting);
    if terminate.is_finished() {
        tracing::info!("asked to stop during start-up");
    } else {
        systemd::notify("READY=1");
        match readiness.first_missing() {
            None => tracing::info!("started and ready"),
            Some(missing) => tracing::warn!(
                stage = missing.stage.name(),
                detail = %missing.log_detail,
                "started, not ready yet: /readyz says which stage is missing; the agent keeps checking"
            ),
        }
    }
    let _ = (&mut terminate).await;
    tracing::info!("shutting down");
    systemd::notify("STOPPING=1");
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    let _ = audit.append(AuditEvent::agent_stopped("signal")).await;
    let _ = audit.close().await;
    Ok(())
}

/// Mirror readiness into grpc.health.v1 (the overall service "" and ours).
async fn health_loop(
    readiness: Arc<Readiness>,
    reporter: tonic_health::server::HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = "tdx_agent.v1.Attestation";
    let mut last = None;
    loop {
        let ready = readiness.ready();
        if last != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(name, status).await;
            last = Some(ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => {
                reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A model server outside the TD is refused by every client unless its policy accepts it,
    /// and by the agent's own self-check likewise: so the start stops before anything is
    /// measured unless the agent's policy accepts it too (a failed self-check after the
    /// agent-config event was extended could only be fixed by a reboot).
    #[test]
    fn a_setting_the_own_policy_refuses_is_caught_before_measuring() {
        let config = Config::from_toml(
            "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n[model]\ninsecure_unmeasured = true\n\
             [upstream]\nurl = \"http://10.0.0.5:8000\"\ninsecure_allow_non_loopback = true\n",
            "c.toml",
        )
        .unwrap();
        let err = settings_the_policy_refuses(&config, &Policy::default()).unwrap_err();
        assert!(
            err.contains("upstream.insecure_allow_non_loopback")
                && err.contains(
                    "insecure_accept_agent_settings = [\"upstream.insecure_allow_non_loopback\"]"
                )
                && err.contains("none is given"),
            "{err}"
        );
        let accepting = Policy::from_toml(
            "[rtmr3_events]\ninsecure_accept_agent_settings = [\"upstream.insecure_allow_non_loopback\"]\n",
            "p.toml",
        )
        .unwrap();
        settings_the_policy_refuses(&config, &accepting).unwrap();
        // The settings other checks judge (a simulated TD, an unmeasured model) need nothing.
        let plain = Config::from_toml(
            "[tee]\nkind=\"sim\"\nsim_dir=\"/x\"\n[model]\ninsecure_unmeasured = true\n\
             [upstream]\nurl = \"http://127.0.0.1:8000\"\n",
            "c.toml",
        )
        .unwrap();
        settings_the_policy_refuses(&plain, &Policy::default()).unwrap();
    }

    /// A path named by the configuration that is missing or wrong stops the start before
    /// the instance lock: nothing is created in the state or audit directory.
    #[tokio::test]
    async fn named_paths_are_checked_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().display().to_string();
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        std::fs::write(tmp.path().join("roots.pem"), b"not PEM").unwrap();
        let base = format!(
            "state_dir = \"{t}/state\"\n[audit]\ndir = \"{t}/audit\"\n[tee]\nkind = \"sim\"\nsim_dir = \"{t}/sim\"\nsim_quote_delay_ms = 5\n"
        );
        for (extra, needle) in [
            (format!("[model]\ndir = \"{t}/absent\""), "model.dir"),
            (format!("[model]\ndir = \"{t}/file\""), "not a directory"),
            (
                format!("[collateral]\ninsecure_root = \"{t}/absent.der\""),
                "collateral.insecure_root",
            ),
            (
                format!(
                    "[gpu]\ninsecure_serve_unattested = true\ninsecure_roots = \"{t}/roots.pem\""
                ),
                "gpu.insecure_roots",
            ),
            (
                format!(
                    "[gpu]\ninsecure_serve_unattested = true\npci_devices_dir = \"{t}/no-pci\""
                ),
                "gpu.pci_devices_dir",
            ),
            (format!("policy = \"{t}/absent.toml\""), "policy"),
        ] {
            // `policy` is a top-level key: it goes before the first table.
            let text = if extra.starts_with("policy") {
                format!("{extra}\n{base}")
            } else {
                format!("{base}{extra}")
            };
            let config = Config::from_toml(&text, "c.toml").unwrap();
            let err = run(config, std::future::pending())
                .await
                .expect_err(&text)
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
            for dir in ["state", "audit"] {
                assert!(
                    !tmp.path().join(dir).exists(),
                    "{text}: {dir} was created before the check"
                );
            }
        }
    }
}
