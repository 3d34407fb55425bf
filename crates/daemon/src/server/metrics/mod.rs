//! Prometheus metrics. Scrapes read counters and gauges only: nothing here makes a quote.

mod per_thread;

pub use per_thread::{Outcome, PerThread};

use std::borrow::Cow;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurposeLabel {
    pub purpose: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    // Static for every fixed outcome, so counting one allocates nothing (it runs per model
    // request).
    pub result: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabel {
    pub index: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    registry: Registry,
    started: Instant,
    pub quote_seconds: Histogram,
    pub quotes: Family<PurposeLabel, Counter>,
    pub quote_failures: Family<PurposeLabel, Counter>,
    pub challenge_batch_size: Histogram,
    pub challenges: Family<ResultLabel, Counter>,
    pub verifications: Family<ResultLabel, Counter>,
    pub cert_rotations: Family<ReasonLabel, Counter>,
    /// 1 for the TCB status of the agent's own evidence, 0 for the others seen before.
    pub tcb_status: Family<StatusLabel, Gauge>,
    pub collateral_next_update: Gauge<i64, AtomicI64Compat>,
    pub cert_not_after: Gauge<i64, AtomicI64Compat>,
    pub uptime_seconds: Gauge<i64, AtomicI64Compat>,
    pub ready: Gauge,
    /// What requests write, per connection thread (`per_thread`): model requests by outcome
    /// (the upstream's status class or the agent's own refusal), the time until the model
    /// server's response headers, responses still streaming, and each connection thread's
    /// connections and requests.
    pub requests: std::sync::Arc<PerThread>,
    /// GPU verifications (one per GPU per round), by result (`pass`, `fail`).
    pub gpu_verifications: Family<ResultLabel, Counter>,
    /// 1 while the GPU passed its last check, 0 otherwise, by NVML index.
    pub gpu_ok: Family<GpuLabel, Gauge>,
    /// GPU attestation reports obtained, by purpose (`certificate`, `challenge`).
    pub gpu_reports: Family<PurposeLabel, Counter>,
}

pub type AtomicI64Compat = std::sync::atomic::AtomicI64;

impl Metrics {
    /// `connection_threads`: how many the listener runs (`server::shards`).
    pub fn new(connection_threads: usize) -> Self {
        let mut registry = Registry::with_prefix("tdx_agent");
        let quote_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let challenge_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        let m = Metrics {
            started: Instant::now(),
            quote_seconds,
            quotes: Family::default(),
            quote_failures: Family::default(),
            challenge_batch_size,
            challenges: Family::default(),
            verifications: Family::default(),
            cert_rotations: Family::default(),
            tcb_status: Family::default(),
            collateral_next_update: Gauge::default(),
            cert_not_after: Gauge::default(),
            uptime_seconds: Gauge::default(),
            ready: Gauge::default(),
            requests: std::sync::Arc::new(PerThread::new(connection_threads)),
            gpu_verifications: Family::default(),
            gpu_ok: Family::default(),
            gpu_reports: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "quote_duration_seconds",
            "Time to obtain a quote from the TEE",
            m.quote_seconds.clone(),
        );
        registry.register("quotes", "Quotes obtained, by purpose", m.quotes.clone());
        registry.register(
            "quote_failures",
            "Quote requests that failed, by purpose",
            m.quote_failures.clone(),
        );
        registry.register(
            "challenge_batch_size",
            "Nonces answered by one challenge quote",
            m.challenge_batch_size.clone(),
        );
        registry.register(
            "challenges",
            "Fresh-evidence challenges, by result",
            m.challenges.clone(),
        );
        registry.register(
            "verifications",
            "Quote verifications, by result",
            m.verifications.clone(),
        );
        registry.register(
            "gpu_verifications",
            "GPU collections and verifications (one per GPU per round), by result",
            m.gpu_verifications.clone(),
        );
        registry.register(
            "gpu_reports",
            "GPU attestation reports obtained, by purpose",
            m.gpu_reports.clone(),
        );
        registry.register(
            "gpu_ok",
            "1 while the GPU passed its last check, by NVML index",
            m.gpu_ok.clone(),
        );
        registry.register(
            "certificate_rotations",
            "RA-TLS certificates issued, by reason",
            m.cert_rotations.clone(),
        );
        registry.register(
            "tcb_status",
            "TCB status of the agent's own evidence (1 = current)",
            m.tcb_status.clone(),
        );
        registry.register(
            "collateral_next_update_timestamp_seconds",
            "When the served collateral expires (unix time)",
            m.collateral_next_update.clone(),
        );
        registry.register(
            "certificate_not_after_timestamp_seconds",
            "When the serving certificate expires (unix time)",
            m.cert_not_after.clone(),
        );
        registry.register(
            "uptime_seconds",
            "Seconds since the agent started",
            m.uptime_seconds.clone(),
        );
        registry.register(
            "ready",
            "1 when every readiness stage holds",
            m.ready.clone(),
        );
        registry.register(
            "model_requests",
            "Requests to the model routes, by outcome",
            m.requests.model_requests(),
        );
        registry.register(
            "model_upstream_header_seconds",
            "Time until the model server's response headers",
            m.requests.upstream_header_seconds(),
        );
        registry.register(
            "model_responses_in_flight",
            "Model responses still streaming",
            m.requests.responses_in_flight(),
        );
        registry.register(
            "connection_thread_connections",
            "Connections served, by connection thread",
            m.requests.thread_connections(),
        );
        registry.register(
            "connection_thread_requests",
            "Requests served (HTTP requests and gRPC calls), by connection thread",
            m.requests.thread_requests(),
        );
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.uptime_seconds
            .set(i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn set_tcb_status(&self, status: &str) {
        // Only one status is current; zero the others so dashboards show the change.
        self.tcb_status.clear();
        self.tcb_status
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .set(1);
    }

    pub fn count_gpu_report(&self, purpose: &str) {
        self.gpu_reports
            .get_or_create(&PurposeLabel {
                purpose: purpose.to_string(),
            })
            .inc();
    }

    /// One round of GPU checks: (NVML index, passed) per GPU.
    pub fn record_gpus(&self, gpus: impl Iterator<Item = (u32, bool)>) {
        for (index, ok) in gpus {
            let result = if ok { "pass" } else { "fail" };
            self.gpu_verifications
                .get_or_create(&ResultLabel {
                    result: Cow::Borrowed(result),
                })
                .inc();
            self.gpu_ok
                .get_or_create(&GpuLabel { index })
                .set(i64::from(ok));
        }
    }

    pub fn count_quote(&self, purpose: &str, ok: bool, seconds: f64) {
        let label = PurposeLabel {
            purpose: purpose.to_string(),
        };
        if ok {
            self.quotes.get_or_create(&label).inc();
            self.quote_seconds.observe(seconds);
        } else {
            self.quote_failures.get_or_create(&label).inc();
        }
    }

    pub fn count(
        &self,
        family: &Family<ResultLabel, Counter>,
        result: impl Into<Cow<'static, str>>,
    ) {
        family
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new(1);
        m.count_quote("certificate", true, 0.5);
        m.set_tcb_status("UpToDate");
        m.count(&m.verifications, "accepted");
        m.cert_rotations
            .get_or_create(&ReasonLabel {
                reason: "startup".into(),
            })
            .inc();
        m.challenge_batch_size.observe(3.0);
        let text = m.encode();
        for name in [
            "tdx_agent_quote_duration_seconds_bucket",
            "tdx_agent_quotes_total{purpose=\"certificate\"} 1",
            "tdx_agent_challenge_batch_size",
            "tdx_agent_verifications_total{result=\"accepted\"} 1",
            "tdx_agent_certificate_rotations_total{reason=\"startup\"} 1",
            "tdx_agent_tcb_status{status=\"UpToDate\"} 1",
            "tdx_agent_collateral_next_update_timestamp_seconds",
            "tdx_agent_certificate_not_after_timestamp_seconds",
            "tdx_agent_uptime_seconds",
            "tdx_agent_ready",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
