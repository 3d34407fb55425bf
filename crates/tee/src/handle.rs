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

    /// A quote, one at a time. A caller may give up waiting (a timeout drops this future),
    /// but the blocking call cannot be interrupted: the lock travels with it and is released
    /// only when the provider really returns. So a hung provider holds one blocking thread,
    /// later quotes queue behind it (and time out on their own) instead of piling up more
    /// stuck threads, and the first quote after the provider recovers goes through.
    pub async fn quote(&self, report_data: ReportData) -> Result<Vec<u8>, TeeError> {
        let one_in_flight = Arc::clone(&self.quote_lock).lock_owned().await;
        self.run(move |tee| {
            let result = tee.quote(&report_data);
            drop(one_in_flight);
            result
        })
        .await
    }

    pub async fn measurements(&self) -> Result<Measurements, TeeError> {
        self.run(|tee| tee.measurements()).await
    }

    pub async fn extend_rtmr(&self, rtmr: Rtmr, digest: Sha384) -> Result<(), TeeError> {
        self.run(move |tee| tee.extend_rtmr(rtmr, &digest)).await
    }

    pub async fn boot_id(&self) -> Result<String, TeeError> {
        self.run(|tee| tee.current_boot_id()).await
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
