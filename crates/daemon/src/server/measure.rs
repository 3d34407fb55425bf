//! The one sequence every runtime measurement goes through: log the event (fsynced), then
//! extend RTMR3. Startup events, GPU events and admin extends all call it, so the crash
//! recovery rule (docs/formats.md §11) holds for each of them.

use tdx_core::measure::rtmr3_log::{Event, Rtmr3LogError};
use tdx_tee::crash_point::{self, CrashPoint};
use tdx_tee::rtmr3_log::Rtmr3Log;
use tdx_tee::{Rtmr, TeeError, TeeHandle};

/// Where the sequence stopped decides what the log says about RTMR3.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// Nothing was logged, so nothing may be extended.
    #[error("RTMR3 event log: {0}; nothing extended")]
    Log(#[source] Rtmr3LogError),
    /// Logged but not extended: the log no longer explains RTMR3 until a restart completes
    /// the event.
    #[error("extending RTMR3 failed after the event was logged: {0}")]
    Extend(#[source] TeeError),
    /// An earlier extend failed after its event was logged. Logging another would leave two
    /// events unextended, which no restart can tell apart from RTMR3 moved by someone else.
    #[error(
        "event #{seq} of the RTMR3 event log was logged but its extend failed; nothing more is measured until a restart completes it"
    )]
    Pending { seq: u64 },
}

/// Append `event` to `log` (written and fsynced), then extend RTMR3 with its digest. The
/// caller holds the log's lock throughout, so at most one logged event is ever unextended.
pub async fn log_then_extend(
    log: &mut Rtmr3Log,
    tee: &TeeHandle,
    event: Event,
) -> Result<[u8; 48], MeasureError> {
    if let Some(seq) = log.unextended {
        return Err(MeasureError::Pending { seq });
    }
    let kind = event.kind.clone();
    let digest =
        crate::blocking::blocking_in_place(|| log.append(event)).map_err(MeasureError::Log)?;
    log.unextended = log.lines.last().map(|l| l.seq);
    crash_point::reached(CrashPoint::AfterFsync, &kind);
    tee.extend_rtmr(Rtmr::R3, digest)
        .await
        .map_err(MeasureError::Extend)?;
    log.unextended = None;
    crash_point::reached(CrashPoint::AfterExtend, &kind);
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tdx_tee::{Measurements, ReportData, Sha384, Tee, TeeKind};

    /// A platform whose every extend is refused, counting the attempts.
    struct Refusing(AtomicU32);

    impl Tee for Refusing {
        fn kind(&self) -> TeeKind {
            TeeKind::Simulated
        }
        fn quote(&self, _: &ReportData) -> Result<Vec<u8>, TeeError> {
            Err(TeeError::QuoteFailed {
                path: "no-quotes".into(),
            })
        }
        fn measurements(&self) -> Result<Measurements, TeeError> {
            Err(TeeError::QuoteFailed {
                path: "no-registers".into(),
            })
        }
        fn extend_rtmr(&self, _: Rtmr, _: &Sha384) -> Result<(), TeeError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Err(TeeError::ExtendUnavailable {
                reason: "refused".into(),
            })
        }
        fn boot_event_log(&self) -> Result<Vec<u8>, TeeError> {
            Ok(Vec::new())
        }
    }

    fn ev(n: u64) -> Event {
        Event {
            kind: "admin".into(),
            data: serde_json::json!({ "n": n }),
        }
    }

    #[tokio::test]
    async fn after_a_failed_extend_nothing_more_is_logged_or_extended() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Rtmr3Log::open(&dir.path().join("log"), "boot").unwrap();
        let platform = Arc::new(Refusing(AtomicU32::new(0)));
        let tee = TeeHandle::new(platform.clone());
        let err = log_then_extend(&mut log, &tee, ev(1)).await.unwrap_err();
        assert!(matches!(err, MeasureError::Extend(_)), "{err}");
        assert_eq!(log.lines.len(), 1, "logged before the extend");
        // A second event would leave two logged and unextended: refused before logging.
        let err = log_then_extend(&mut log, &tee, ev(2)).await.unwrap_err();
        assert!(matches!(err, MeasureError::Pending { seq: 1 }), "{err}");
        assert_eq!(log.lines.len(), 1);
        assert_eq!(platform.0.load(Ordering::Relaxed), 1);
    }
}
