//! `upstream.max_concurrent_requests`: model requests in flight, from admission to the last
//! byte of the response, each counted while its guard lives.
//!
//! An excess request is refused at once, never queued, so one atomic count does what a
//! semaphore would; tokio's `Semaphore` takes its waiter-list mutex on every release, which is
//! every model request on every connection thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::server::metrics::PerThread;

pub struct Admission {
    in_flight: AtomicUsize,
    max: usize,
    /// Where the guard counts its response while it streams.
    metrics: Arc<PerThread>,
}

impl Admission {
    pub fn new(max: usize, metrics: Arc<PerThread>) -> Arc<Self> {
        Arc::new(Admission {
            in_flight: AtomicUsize::new(0),
            max,
            metrics,
        })
    }

    /// A slot, or `None` when `max` requests are in flight.
    pub fn try_admit(self: &Arc<Self>) -> Option<Admitted> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(Admitted {
            admission: Arc::clone(self),
            streaming: false,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One admitted request; its slot is given back when this is dropped.
pub struct Admitted {
    admission: Arc<Admission>,
    /// Counted in `model_responses_in_flight` (through the admission, so a response costs no
    /// reference count of its own on a line every thread shares).
    streaming: bool,
}

impl Admitted {
    /// The response has started: it counts in `model_responses_in_flight` until the guard is
    /// dropped with its body.
    pub fn streaming(mut self) -> Self {
        if !self.streaming {
            self.admission.metrics.stream_started();
            self.streaming = true;
        }
        self
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.streaming {
            self.admission.metrics.stream_ended();
        }
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_max_and_frees_a_slot_when_a_guard_drops() {
        let metrics = Arc::new(PerThread::new(1));
        let a = Admission::new(2, Arc::clone(&metrics));
        let one = a.try_admit().unwrap();
        let two = a.try_admit().unwrap().streaming();
        assert!(a.try_admit().is_none(), "a third while two are in flight");
        assert_eq!(a.in_flight(), 2);
        assert_eq!(metrics.in_flight(), 1, "one response streams");
        drop(one);
        let three = a.try_admit().unwrap();
        drop((two, three));
        assert_eq!(a.in_flight(), 0);
        assert_eq!(metrics.in_flight(), 0);
    }

    #[test]
    fn never_admits_more_than_max_from_many_threads() {
        let a = Admission::new(8, Arc::new(PerThread::new(1)));
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(g) = a.try_admit() {
                            peak.fetch_max(a.in_flight(), Ordering::AcqRel);
                            drop(g);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Acquire) <= 8);
        assert_eq!(a.in_flight(), 0);
    }
}
