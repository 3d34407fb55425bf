//! What every request handler shares: the TEE, the served evidence, readiness and metrics.

use std::sync::{Arc, RwLock};

use super::collateral::CollateralProvider;
use super::metrics::Metrics;
use super::readiness::Readiness;
use crate::audit::AuditLog;
use crate::batcher::Batcher;
use crate::config::Config;
use tdx_core::ratls::{CertResolver, RaTlsCertifiedKey};
use tdx_core::verify::{PreparedCollateral, Report, Verifier, policy::Policy};
use tdx_tee::TeeHandle;
use tdx_tee::rtmr3_log::Rtmr3Log;

/// The evidence behind the certificate currently served.
pub struct Served {
    pub cert: RaTlsCertifiedKey,
    /// The quote in the certificate (REPORTDATA binds the certificate's key).
    pub quote: Vec<u8>,
    pub collateral: PreparedCollateral,
    /// The collateral as a bundle (docs/formats.md), ready to send.
    pub collateral_json: String,
    /// RTMR3 when the quote was made; a change means re-issue.
    pub rtmr3: [u8; 48],
    /// The RTMR3 event log (JSON lines) the certificate's claims carry, which replays to the
    /// quote's RTMR3. Served as the evidence's log, rather than the live one: an extend
    /// between two issues would otherwise serve a log that does not match the quote beside
    /// it, and every evidence request would wait for the log's lock while a re-issue holds it
    /// across its quote.
    pub event_log: String,
    /// The agent's appraisal of its own evidence against its own policy.
    pub self_check: Report,
    pub issued_at: i64,
    /// The GPUs' round this certificate commits to (with `[gpu]`).
    pub gpu: Option<ServedGpus>,
}

/// The GPU evidence a certificate commits to, its collateral, and how the agent judged it.
pub struct ServedGpus {
    pub round: super::gpus::GpuRound,
    /// The evidence document and the collateral bundle (docs/formats.md), ready to send.
    pub evidence_json: serde_json::Value,
    pub collateral_json: serde_json::Value,
}

pub struct AppState {
    pub config: Config,
    pub tee: TeeHandle,
    pub verifier: Verifier,
    pub policy: Policy,
    pub collateral: CollateralProvider,
    pub resolver: Arc<CertResolver>,
    served: RwLock<Arc<Served>>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub audit: AuditLog,
    pub batcher: Batcher,
    /// The RTMR3 event log; held while extending so log and register move together.
    pub rtmr3_log: tokio::sync::Mutex<Rtmr3Log>,
    /// The log's text as of its last append, for readers that must not wait on its lock.
    pub rtmr3_log_text: tdx_tee::rtmr3_log::Published,
    pub rtmr3_log_path: std::path::PathBuf,
    /// The front door to the model server, when one is configured.
    pub proxy: Option<Arc<super::proxy::Proxy>>,
    /// Bumped when a certificate with new RTMR3 is served; the listener then closes older
    /// connections gracefully.
    pub measured_epoch: tokio::sync::watch::Sender<u64>,
    /// Serialises certificate issuance (rotation loop and admin socket).
    pub issuing: tokio::sync::Mutex<()>,
    /// The GPUs attested with the TD, when `[gpu]` requires any.
    pub gpus: Option<Arc<super::gpus::GpuAttester>>,
    /// When the GPUs were last checked between rotations (unix seconds).
    pub gpu_checked_at: std::sync::atomic::AtomicI64,
    /// The rotation loop's reads of RTMR3, and how many failed in a row.
    pub rtmr3_reads: super::issue::Rtmr3Reads,
    /// The evidence document of the certificate it was made for, serialised once: every
    /// request shares its bytes, so many streams that never take their bodies cost a
    /// reference each rather than a copy of the document each.
    evidence_document: std::sync::Mutex<Option<(Arc<Served>, bytes::Bytes)>>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        tee: TeeHandle,
        verifier: Verifier,
        policy: Policy,
        collateral: CollateralProvider,
        first: Served,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        batcher: Batcher,
        mut rtmr3_log: tokio::sync::Mutex<Rtmr3Log>,
        rtmr3_log_path: std::path::PathBuf,
    ) -> Self {
        let rtmr3_log_text = rtmr3_log.get_mut().published();
        let resolver = Arc::new(CertResolver::new(first.cert.rustls_certified_key()));
        AppState {
            config,
            tee,
            verifier,
            policy,
            collateral,
            resolver,
            served: RwLock::new(Arc::new(first)),
            readiness,
            metrics,
            audit,
            batcher,
            rtmr3_log,
            rtmr3_log_text,
            rtmr3_log_path,
            proxy: None,
            measured_epoch: tokio::sync::watch::Sender::new(0),
            issuing: tokio::sync::Mutex::new(()),
            gpus: None,
            gpu_checked_at: std::sync::atomic::AtomicI64::new(0),
            rtmr3_reads: super::issue::Rtmr3Reads::default(),
            evidence_document: std::sync::Mutex::new(None),
        }
    }

    /// The served certificate's evidence document, made by `make` the first time it is asked
    /// for and shared after that until another certificate is served.
    pub fn evidence_document<E>(
        &self,
        make: impl FnOnce(&Served) -> Result<bytes::Bytes, E>,
    ) -> Result<bytes::Bytes, E> {
        let served = self.served();
        let mut cached = self
            .evidence_document
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((made_for, document)) = cached.as_ref()
            && Arc::ptr_eq(made_for, &served)
        {
            return Ok(document.clone());
        }
        let document = make(&served)?;
        *cached = Some((served, document.clone()));
        Ok(document)
    }

    /// Attest the GPUs with every certificate (before the state is shared).
    pub fn with_gpus(mut self, gpus: Option<Arc<super::gpus::GpuAttester>>) -> Self {
        self.gpus = gpus;
        self
    }

    /// Put the front door in place (before the state is shared).
    pub fn with_proxy(mut self, proxy: Option<Arc<super::proxy::Proxy>>) -> Self {
        self.proxy = proxy;
        self
    }

    /// Whether reading the registers is cheap (sysfs or the simulation) rather than a quote.
    pub fn registers_readable_without_quote(&self) -> bool {
        match self.tee.kind() {
            tdx_tee::TeeKind::Simulated => true,
            tdx_tee::TeeKind::Configfs => self.config.tee.measurements_dir.is_dir(),
        }
    }

    pub fn served(&self) -> Arc<Served> {
        Arc::clone(&self.served.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Serve `next` from now on; connections already established keep their certificate.
    pub fn replace(&self, next: Served) {
        let rtmr3_changed = next.rtmr3 != self.served().rtmr3;
        self.resolver.replace(next.cert.rustls_certified_key());
        *self.served.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        if rtmr3_changed {
            self.measured_epoch.send_modify(|e| *e += 1);
        }
    }
}
