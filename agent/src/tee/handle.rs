//! Async access to a blocking [`Tee`]: calls run on the blocking pool, one quote at a time.

use std::sync::Arc;

use tokio::sync::Mutex;

use super::{Measurements, ReportData, Rtmr, Sha384, Tee, TeeError, TeeKind};

/// A cheaply cloneable async front for a provider. Quotes are serialised guest-wide by the
/// kernel anyway; queuing them here keeps blocking threads from piling up behind its lock.
#[derive(Clone)]
pub struct TeeHandle {
    tee: Arc<dyn Tee>,
    quote_lock: Arc<Mutex<()>>,
}

impl TeeHandle {
    pub fn new(tee: Arc<dyn Tee>) -> Self {
        Self {
            tee,
            quote_lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn kind(&self) -> TeeKind {
        self.tee.kind()
    }

    pub fn inner(&self) -> &Arc<dyn Tee> {
        &self.tee
    }

    pub async fn quote(&self, report_data: ReportData) -> Result<Vec<u8>, TeeError> {
        let _one_in_flight = self.quote_lock.lock().await;
        self.run(move |tee| tee.quote(&report_data)).await
    }

    pub async fn measurements(&self) -> Result<Measurements, TeeError> {
        self.run(|tee| tee.measurements()).await
    }

    pub async fn extend_rtmr(&self, rtmr: Rtmr, digest: Sha384) -> Result<(), TeeError> {
        self.run(move |tee| tee.extend_rtmr(rtmr, &digest)).await
    }

    pub async fn boot_id(&self) -> Result<String, TeeError> {
        self.run(|tee| Ok(tee.boot_id())).await
    }

    pub async fn boot_event_log(&self) -> Result<Vec<u8>, TeeError> {
        self.run(|tee| tee.boot_event_log()).await
    }

    async fn run<T, F>(&self, f: F) -> Result<T, TeeError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Tee) -> Result<T, TeeError> + Send + 'static,
    {
        let tee = Arc::clone(&self.tee);
        tokio::task::spawn_blocking(move || f(tee.as_ref()))
            .await
            .map_err(|e| TeeError::Worker(e.to_string()))?
    }
}
