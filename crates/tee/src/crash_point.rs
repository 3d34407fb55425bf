//! Test-only crash points in the RTMR3 extend sequence (docs/formats.md §11, "Crash
//! recovery"): the end-to-end tests stop `serve` at each step between deciding to measure an
//! event and RTMR3 holding it, restart it in the same boot, and check what the restart does.
//!
//! Compiled in only with the `insecure-crash-points` feature, which the simulation build turns
//! on (`tdx-daemon/sim`); the guest image build (`--no-default-features`) has none of it and
//! ignores the variable. Where compiled in, `TDX_AGENT_INSECURE_CRASH_AT=POINT:TYPE` aborts the
//! process when an event of type TYPE reaches POINT.
//!
//! The crash is a real `kill -9`: the process runs `kill -KILL` on itself and waits for it, so
//! no destructor runs, nothing buffered in the process is flushed, no core is dumped, and what
//! the kernel already accepted (a `write(2)` not yet fsynced) survives. Should `kill` be
//! missing, `abort()` does nearly the same.

/// The environment variable that arms a crash point (only in builds that have them).
#[cfg(feature = "insecure-crash-points")]
pub const ENV: &str = "TDX_AGENT_INSECURE_CRASH_AT";

/// A step of "log the event, fsync, extend RTMR3".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Nothing of the event is written yet.
    BeforeLogWrite,
    /// Half of the event's log line is written: a write cut short by the kill.
    TornLogWrite,
    /// The whole line is written but not yet fsynced.
    BetweenWriteAndFsync,
    /// The line is durable; RTMR3 is not extended yet.
    AfterFsync,
    /// RTMR3 is extended; nothing after it (audit record, certificate) happened.
    AfterExtend,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::BeforeLogWrite,
        CrashPoint::TornLogWrite,
        CrashPoint::BetweenWriteAndFsync,
        CrashPoint::AfterFsync,
        CrashPoint::AfterExtend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::BeforeLogWrite => "before-log-write",
            CrashPoint::TornLogWrite => "torn-log-write",
            CrashPoint::BetweenWriteAndFsync => "between-write-and-fsync",
            CrashPoint::AfterFsync => "after-fsync",
            CrashPoint::AfterExtend => "after-extend",
        }
    }
}

/// Stop the process here, as `kill -9` would, if `point` is armed for events of type `kind`.
pub fn reached(point: CrashPoint, kind: &str) {
    reached_after(point, kind, || {});
}

/// [`reached`], doing `last` (a partial write, say) just before the crash.
#[cfg(feature = "insecure-crash-points")]
pub fn reached_after(point: CrashPoint, kind: &str, last: impl FnOnce()) {
    let armed = std::env::var(ENV).is_ok_and(|v| v.split_once(':') == Some((point.name(), kind)));
    if armed {
        last();
        // Unbuffered stderr: the line lets a test tell this crash from any other.
        eprintln!(
            "{ENV}: crash point {} reached for a {kind:?} event; aborting",
            point.name()
        );
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::process::abort();
    }
}

/// Without the feature there is nothing to arm: the guest image build never crashes here.
#[cfg(not(feature = "insecure-crash-points"))]
#[inline(always)]
pub fn reached_after(_point: CrashPoint, _kind: &str, _last: impl FnOnce()) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_have_no_separator() {
        let names: std::collections::HashSet<_> =
            CrashPoint::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), CrashPoint::ALL.len());
        assert!(names.iter().all(|n| !n.contains(':')));
    }

    // Unarmed points return: the test process never sets the variable (setting it would race
    // the other tests), and reaching a point must then be harmless.
    #[test]
    fn an_unarmed_point_returns() {
        let mut ran = false;
        for p in CrashPoint::ALL {
            reached_after(p, "agent-config", || ran = true);
        }
        assert!(!ran);
    }
}
