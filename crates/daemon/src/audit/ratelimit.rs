//! Token buckets per event type, so that a caller in a loop cannot fill the disk or drown the
//! records that matter; what is dropped is counted and reported in one summary record.

use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

/// Sustained `per_second` events with bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl RateLimit {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst }
    }
}

#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Duration,
    suppressed: u64,
    first: Option<OffsetDateTime>,
    last: Option<OffsetDateTime>,
}

impl Bucket {
    fn new(limit: RateLimit, now: Duration) -> Self {
        Self {
            limit,
            // A bucket starts full: the first burst after start-up is legitimate.
            tokens: limit.burst.max(0.0),
            at: now,
            suppressed: 0,
            first: None,
            last: None,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        let rate = self.limit.per_second.max(0.0);
        self.tokens = (self.tokens + elapsed * rate).min(self.limit.burst.max(0.0));
        self.at = self.at.max(now);
    }
}

/// A pending summary: `count` events of `event_type` were dropped between `first` and `last`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    pub event_type: &'static str,
    pub count: u64,
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
}

#[derive(Debug)]
pub(crate) struct Limiter {
    default: Option<RateLimit>,
    overrides: BTreeMap<String, Option<RateLimit>>,
    buckets: BTreeMap<&'static str, Bucket>,
}

impl Limiter {
    pub fn new(default: Option<RateLimit>, overrides: BTreeMap<String, Option<RateLimit>>) -> Self {
        Self {
            default,
            overrides,
            buckets: BTreeMap::new(),
        }
    }

    fn limit_for(&self, event_type: &str) -> Option<RateLimit> {
        match self.overrides.get(event_type) {
            Some(l) => *l,
            None => self.default,
        }
    }

    /// Take a token for one event; `false` means drop it (and it has been counted).
    pub fn admit(&mut self, event_type: &'static str, now: Duration, wall: OffsetDateTime) -> bool {
        let Some(limit) = self.limit_for(event_type) else {
            return true;
        };
        let bucket = self
            .buckets
            .entry(event_type)
            .or_insert_with(|| Bucket::new(limit, now));
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            bucket.suppressed += 1;
            bucket.first.get_or_insert(wall);
            bucket.last = Some(wall);
            false
        }
    }

    /// Summaries that are due: the bucket has refilled at least one token since it ran dry.
    /// With `all`, every pending summary regardless of tokens (used at shutdown, so that no
    /// count is lost). The summary itself takes no token, so a flood produces at most one
    /// summary per refill.
    pub fn due(&mut self, now: Duration, all: bool) -> Vec<Pending> {
        let mut out = Vec::new();
        for (event_type, bucket) in &mut self.buckets {
            if bucket.suppressed == 0 {
                continue;
            }
            bucket.refill(now);
            if (all || bucket.tokens >= 1.0)
                && let (Some(first), Some(last)) = (bucket.first, bucket.last)
            {
                out.push(Pending {
                    event_type,
                    count: bucket.suppressed,
                    first,
                    last,
                });
            }
        }
        out
    }

    /// Forget a summary once it is on disk (only then: a failed write keeps the count).
    pub fn written(&mut self, pending: &Pending) {
        if let Some(bucket) = self.buckets.get_mut(pending.event_type) {
            bucket.suppressed = bucket.suppressed.saturating_sub(pending.count);
            if bucket.suppressed == 0 {
                bucket.first = None;
                bucket.last = None;
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        self.buckets.values().any(|b| b.suppressed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_drops_then_refills() {
        let wall = OffsetDateTime::UNIX_EPOCH;
        let mut l = Limiter::new(Some(RateLimit::new(2.0, 3.0)), BTreeMap::new());
        let t0 = Duration::ZERO;
        let admitted = (0..10).filter(|_| l.admit("notice", t0, wall)).count();
        assert_eq!(admitted, 3);
        assert!(l.due(t0, false).is_empty(), "no token yet, no summary yet");
        let due = l.due(Duration::from_millis(500), false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 7);
        l.written(&due[0]);
        assert!(!l.has_pending());
    }

    #[test]
    fn override_none_means_unlimited() {
        let wall = OffsetDateTime::UNIX_EPOCH;
        let mut o = BTreeMap::new();
        o.insert("notice".to_string(), None);
        let mut l = Limiter::new(Some(RateLimit::new(0.0, 0.0)), o);
        assert!((0..100).all(|_| l.admit("notice", Duration::ZERO, wall)));
        assert!(!l.admit("agent_started", Duration::ZERO, wall));
    }
}
