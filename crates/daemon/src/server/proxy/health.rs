//! The upstream's health, polled into the `upstream_healthy` readiness stage (and the idle
//! connections past their keep-alive closed on the same beat). The proxy also reports a
//! refused connection at once, so readiness does not wait a polling interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Proxy;
use crate::server::readiness::{Readiness, Stage};

/// Poll the upstream's health path until `shutdown`.
pub async fn watch_upstream(
    proxy: Arc<Proxy>,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(proxy.config.health_interval_ms);
    let mut was_ok = None;
    loop {
        let (ok, detail) = proxy.probe().await;
        if was_ok != Some(ok) {
            if ok {
                tracing::info!(upstream = %proxy.upstream.as_str(), "upstream healthy");
            } else {
                tracing::warn!(upstream = %proxy.upstream.as_str(), %detail, "upstream unhealthy");
            }
            was_ok = Some(ok);
        }
        readiness.set(Stage::UpstreamHealthy, ok, detail);
        // After a burst, connections nobody takes again would otherwise stay open for good.
        proxy.close_expired_idle();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
