//! The metrics a request writes, kept per connection thread and summed when scraped, so a
//! request touches only its own thread's cache lines: no lock, no line shared between cores.
//!
//! prometheus-client's `Histogram` takes one mutex per observation and a `Family` a read lock
//! per lookup, each shared by every thread. On 16 connection threads that is a cache line
//! moving between cores on each request, and a mutex whose holder, preempted on a busy machine,
//! stalls every other thread's requests behind it (docs/benchmarks.md, issue 18).

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::ResultLabel;
use crate::server::shards;

/// Upper bounds of the upstream header-time buckets: 0.5 ms doubling up to about 4.4 min,
/// then +Inf.
const BOUNDS: [f64; 20] = {
    let mut b = [0.0005; 20];
    let mut i = 1;
    while i < 20 {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};

/// How a model request ended: the upstream's status class, or the agent's own refusal with
/// its status (the statuses `ApiError` answers with; another one would be counted as
/// `other-agent`).
const OUTCOMES: [&str; 14] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "400-agent",
    "401-agent",
    "404-agent",
    "413-agent",
    "500-agent",
    "502-agent",
    "503-agent",
    "504-agent",
    "other-agent",
];
/// The status classes come first in `OUTCOMES`, then the agent's statuses in this order.
const CLASSES: usize = 5;
const AGENT_STATUSES: [u16; 8] = [400, 401, 404, 413, 500, 502, 503, 504];

/// A model request's outcome, as an index into the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome(usize);

impl Outcome {
    /// The model server answered with `status`.
    pub fn upstream(status: u16) -> Self {
        // A status outside 100-599 never reaches here (hyper refuses it); count it as 5xx.
        Outcome(usize::from(status / 100).clamp(1, CLASSES) - 1)
    }

    /// The agent refused the request with `status`.
    pub fn agent(status: u16) -> Self {
        let i = AGENT_STATUSES
            .iter()
            .position(|&s| s == status)
            .map_or(OUTCOMES.len() - 1, |i| i + CLASSES);
        Outcome(i)
    }

    pub fn label(self) -> &'static str {
        OUTCOMES.get(self.0).copied().unwrap_or("other-agent")
    }
}

/// One thread's counters.
#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
    outcomes: [AtomicU64; OUTCOMES.len()],
    /// Responses still streaming: incremented where a response starts and decremented where
    /// its body is dropped, which may be another slot; only the sum means anything.
    in_flight: AtomicI64,
    /// Observations per bucket (not cumulative), the last one +Inf.
    header_buckets: [AtomicU64; BOUNDS.len() + 1],
    header_nanos: AtomicU64,
}

/// A slot on its own cache lines (two, for the adjacent-line prefetcher).
#[repr(align(128))]
#[derive(Default)]
struct Slot(Counts);

/// The slots: one per connection thread, then one for every other thread (the main
/// runtime's), as `shards::slot` numbers them.
pub struct PerThread {
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for PerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerThread")
            .field("connection_threads", &self.connection_threads())
            .finish()
    }
}

impl PerThread {
    pub fn new(connection_threads: usize) -> Self {
        PerThread {
            slots: (0..=connection_threads).map(|_| Slot::default()).collect(),
        }
    }

    fn connection_threads(&self) -> usize {
        self.slots.len().saturating_sub(1)
    }

    /// The caller's slot.
    fn here(&self) -> &Counts {
        // `new` makes one more slot than connection threads, so the slot is in bounds.
        &self.slots[shards::slot(self.slots.len())].0
    }

    pub fn count_connection(&self) {
        self.here().connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_request(&self) {
        self.here().requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_outcome(&self, outcome: Outcome) {
        if let Some(c) = self.here().outcomes.get(outcome.0) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn observe_upstream_header(&self, elapsed: std::time::Duration) {
        let here = self.here();
        let secs = elapsed.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BOUNDS.len());
        if let Some(b) = here.header_buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        here.header_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// A response starts streaming (`model_responses_in_flight`); its owner calls
    /// [`Self::stream_ended`] once, when it is dropped.
    pub fn stream_started(&self) {
        self.here().in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_ended(&self) {
        self.here().in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn sum(&self, f: impl Fn(&Counts) -> u64) -> u64 {
        self.slots
            .iter()
            .fold(0u64, |acc, s| acc.saturating_add(f(&s.0)))
    }

    /// What each metric view encodes, taken at once per view.
    fn outcome_totals(&self) -> [u64; OUTCOMES.len()] {
        let mut out = [0u64; OUTCOMES.len()];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.sum(|c| c.outcomes.get(i).map_or(0, |a| a.load(Ordering::Relaxed)));
        }
        out
    }

    pub fn in_flight(&self) -> i64 {
        self.slots
            .iter()
            .map(|s| s.0.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Per connection thread: (connections, requests).
    pub fn thread_counts(&self) -> Vec<(u64, u64)> {
        self.slots
            .iter()
            .take(self.connection_threads())
            .map(|s| {
                (
                    s.0.connections.load(Ordering::Relaxed),
                    s.0.requests.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    // The views registered with the registry, one per exposed metric.

    pub fn model_requests(self: &std::sync::Arc<Self>) -> View {
        View(std::sync::Arc::clone(self), Kind::ModelRequests)
    }
    pub fn upstream_header_seconds(self: &std::sync::Arc<Self>) -> View {
        View(std::sync::Arc::clone(self), Kind::UpstreamHeaderSeconds)
    }
    pub fn responses_in_flight(self: &std::sync::Arc<Self>) -> View {
        View(std::sync::Arc::clone(self), Kind::InFlight)
    }
    pub fn thread_connections(self: &std::sync::Arc<Self>) -> View {
        View(std::sync::Arc::clone(self), Kind::ThreadConnections)
    }
    pub fn thread_requests(self: &std::sync::Arc<Self>) -> View {
        View(std::sync::Arc::clone(self), Kind::ThreadRequests)
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    ModelRequests,
    UpstreamHeaderSeconds,
    InFlight,
    ThreadConnections,
    ThreadRequests,
}

/// One metric over the slots, summed at each scrape.
#[derive(Debug)]
pub struct View(std::sync::Arc<PerThread>, Kind);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabel {
    thread: usize,
}

fn counter(encoder: &mut MetricEncoder, label: &impl EncodeLabelSet, v: u64) -> std::fmt::Result {
    encoder
        .encode_family(label)?
        .encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

impl EncodeMetric for View {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let p = &self.0;
        match self.1 {
            Kind::ModelRequests => {
                // Only the outcomes seen, as a labelled family shows them.
                for (i, n) in p.outcome_totals().into_iter().enumerate() {
                    if n > 0 {
                        let label = ResultLabel {
                            result: Cow::Borrowed(Outcome(i).label()),
                        };
                        counter(&mut encoder, &label, n)?;
                    }
                }
                Ok(())
            }
            Kind::UpstreamHeaderSeconds => {
                let buckets: Vec<(f64, u64)> = BOUNDS
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .enumerate()
                    .map(|(i, bound)| {
                        let n = p.sum(|c| {
                            c.header_buckets
                                .get(i)
                                .map_or(0, |a| a.load(Ordering::Relaxed))
                        });
                        (bound, n)
                    })
                    .collect();
                let count = buckets.iter().fold(0u64, |a, b| a.saturating_add(b.1));
                // A bucket is counted before the sum moves; a scrape between the two would
                // show a count the sum does not include yet, which the next scrape mends.
                let sum = p.sum(|c| c.header_nanos.load(Ordering::Relaxed)) as f64 / 1e9;
                encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
            }
            Kind::InFlight => encoder.encode_gauge(&p.in_flight()),
            Kind::ThreadConnections | Kind::ThreadRequests => {
                for (thread, (connections, requests)) in p.thread_counts().into_iter().enumerate() {
                    let v = match self.1 {
                        Kind::ThreadConnections => connections,
                        _ => requests,
                    };
                    counter(&mut encoder, &ThreadLabel { thread }, v)?;
                }
                Ok(())
            }
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.1 {
            Kind::ModelRequests | Kind::ThreadConnections | Kind::ThreadRequests => {
                MetricType::Counter
            }
            Kind::UpstreamHeaderSeconds => MetricType::Histogram,
            Kind::InFlight => MetricType::Gauge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn outcomes_map_to_their_labels() {
        assert_eq!(Outcome::upstream(200).label(), "2xx");
        assert_eq!(Outcome::upstream(101).label(), "1xx");
        assert_eq!(Outcome::upstream(503).label(), "5xx");
        assert_eq!(Outcome::agent(503).label(), "503-agent");
        assert_eq!(Outcome::agent(401).label(), "401-agent");
        assert_eq!(Outcome::agent(418).label(), "other-agent");
        for s in AGENT_STATUSES {
            assert_eq!(Outcome::agent(s).label(), format!("{s}-agent"));
        }
    }

    #[test]
    fn every_connection_thread_counts_in_its_own_slot_and_scrapes_sum_them() {
        let p = Arc::new(PerThread::new(2));
        let shards = shards::Shards::start(2, true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (thread, n) in [(0usize, 3u64), (1, 5)] {
            let p = Arc::clone(&p);
            let h = shards.threads().handle(thread).unwrap().clone();
            rt.block_on(async move {
                h.spawn(async move {
                    p.count_connection();
                    for _ in 0..n {
                        p.count_request();
                        p.count_outcome(Outcome::upstream(200));
                        p.observe_upstream_header(Duration::from_millis(3));
                    }
                })
                .await
                .unwrap()
            });
        }
        // Off the connection threads: the other slot, in the sums but not per thread.
        p.count_outcome(Outcome::agent(503));
        p.stream_started();
        assert_eq!(p.thread_counts(), vec![(1, 3), (1, 5)]);
        assert_eq!(p.in_flight(), 1);
        p.stream_ended();
        assert_eq!(p.in_flight(), 0);

        let mut registry = prometheus_client::registry::Registry::with_prefix("t");
        registry.register("model_requests", "h", p.model_requests());
        registry.register("hdr_seconds", "h", p.upstream_header_seconds());
        registry.register("conn_thread_requests", "h", p.thread_requests());
        registry.register("conn_thread_connections", "h", p.thread_connections());
        registry.register("in_flight", "h", p.responses_in_flight());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "t_model_requests_total{result=\"2xx\"} 8",
            "t_model_requests_total{result=\"503-agent\"} 1",
            "t_hdr_seconds_count 8",
            "t_hdr_seconds_bucket{le=\"0.002\"} 0",
            "t_hdr_seconds_bucket{le=\"0.004\"} 8",
            "t_hdr_seconds_bucket{le=\"+Inf\"} 8",
            "t_hdr_seconds_sum 0.024",
            "t_conn_thread_requests_total{thread=\"0\"} 3",
            "t_conn_thread_requests_total{thread=\"1\"} 5",
            "t_conn_thread_connections_total{thread=\"1\"} 1",
            "t_in_flight 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(!text.contains("4xx"), "an outcome never seen is not shown");
    }
}
