//! Where the audit log gets its time from, injectable so tests can pin timestamps and drive the
//! rate limiter without sleeping.

use std::fmt::Debug;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Two readings: wall-clock time for the records, and a monotonic reading for the rate limiter
/// (wall clocks jump; a token bucket must not refill because NTP stepped the clock).
pub trait Clock: Debug + Send + Sync {
    /// Current wall-clock time; the writer converts it to UTC.
    fn now(&self) -> OffsetDateTime;
    /// Time elapsed since some fixed point; must never go backwards.
    fn monotonic(&self) -> Duration;
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
    fn monotonic(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock that only moves when told to; for tests and reproducible examples.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<(OffsetDateTime, Duration)>,
}

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            state: Mutex::new((start, Duration::ZERO)),
        }
    }

    /// Move both readings forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 += by;
        s.1 += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0
    }
    fn monotonic(&self) -> Duration {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}
