//! The one sequence every runtime measurement goes through: log the event (fsynced), write
//! its audit record (fsynced), then extend RTMR3. Startup events, GPU events and admin
//! extends all call it, so the crash recovery rule (docs/formats.md §11) holds for each of
//! them, and no extend is ever made without its audit record on disk first.
//!
//! Why the audit record comes before the extend: RTMR3 cannot be rolled back, and nothing
//! after an extend can be made to happen for certain (the disk may be full). A record
//! written after the extend could be lost for good: a restart finds the log replaying and has
//! nothing to redo. Written before, a failed record leaves the event logged and unextended,
//! the one state the log's recovery already completes: the next start in the same boot
//! writes the record and then extends. What a kill between two steps leaves:
//!
//! - after the log's fsync, before the record: the restart records and extends the event;
//! - after the record, before the extend: the restart records it again (a second
//!   `rtmr_extended` with the same `log_seq` and digest) and extends it once;
//! - after the extend: the log replays, nothing is redone.
//!
//! So the audit log may name one log line twice, never an extend it does not name; how often
//! RTMR3 was extended is what the RTMR3 log replays to.

use crate::audit::{AuditError, AuditEvent, AuditLog};
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
    /// Logged, but its audit record could not be written, so it was not extended: the event
    /// is pending exactly as after a failed extend, and a restart records and extends it.
    #[error(
        "the audit log could not record event #{seq} of the RTMR3 event log, so RTMR3 was not extended with it: {source}; the event stays logged, and a restart in this boot (with the audit log writable) records and extends it"
    )]
    Audit {
        seq: u64,
        #[source]
        source: AuditError,
    },
    /// Logged and audited but not extended: the log no longer explains RTMR3 until a restart
    /// completes the event.
    #[error("extending RTMR3 failed after the event was logged: {0}")]
    Extend(#[source] TeeError),
    /// An earlier event was logged and not extended. Logging another would leave two events
    /// unextended, which no restart can tell apart from RTMR3 moved by someone else.
    #[error(
        "event #{seq} of the RTMR3 event log was logged but not extended (its audit record or its extend failed); nothing more is measured until a restart completes it"
    )]
    Pending { seq: u64 },
}

/// An event that is in the log, in the audit log and in RTMR3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// Its line in the RTMR3 event log.
    pub seq: u64,
    /// The 48 bytes RTMR3 was extended with.
    pub digest: [u8; 48],
}

/// Append `event` to `log` (written and fsynced), record it in `audit` (fsynced), then extend
/// RTMR3 with its digest. The caller holds the log's lock throughout, so at most one logged
/// event is ever unextended.
pub async fn log_then_extend(
    log: &mut Rtmr3Log,
    tee: &TeeHandle,
    audit: &AuditLog,
    event: Event,
) -> Result<Measured, MeasureError> {
    if let Some(seq) = log.unextended {
        return Err(MeasureError::Pending { seq });
    }
    let kind = event.kind.clone();
    let digest =
        crate::blocking::blocking_in_place(|| log.append(event)).map_err(MeasureError::Log)?;
    // Seqs count lines from 1, so the appended line's is the count.
    let seq = log.lines.len() as u64;
    log.unextended = Some(seq);
    crash_point::reached(CrashPoint::AfterFsync, &kind);
    audit
        .append(AuditEvent::rtmr3_extended(seq, &digest, &kind))
        .await
        .map_err(|source| MeasureError::Audit { seq, source })?;
    tee.extend_rtmr(Rtmr::R3, digest)
        .await
        .map_err(MeasureError::Extend)?;
    log.unextended = None;
    crash_point::reached(CrashPoint::AfterExtend, &kind);
    Ok(Measured { seq, digest })
}

/// A platform that only counts extends, for the tests of everything that extends.
#[cfg(test)]
pub(crate) mod fakes {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tdx_tee::{Measurements, ReportData, Rtmr, Sha384, Tee, TeeError, TeeKind};

    /// Counts the extends asked of it; [`Counting::refusing`] refuses each one.
    #[derive(Default)]
    pub(crate) struct Counting {
        asked: AtomicU32,
        refuse: bool,
    }

    impl Counting {
        pub(crate) fn refusing() -> Self {
            Counting {
                asked: AtomicU32::new(0),
                refuse: true,
            }
        }

        /// How many extends were asked for (made, unless refusing).
        pub(crate) fn extends(&self) -> u32 {
            self.asked.load(Ordering::Relaxed)
        }
    }

    impl Tee for Counting {
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
            self.asked.fetch_add(1, Ordering::Relaxed);
            if self.refuse {
                return Err(TeeError::ExtendUnavailable {
                    reason: "refused".into(),
                });
            }
            Ok(())
        }
        fn boot_event_log(&self) -> Result<Vec<u8>, TeeError> {
            Ok(Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fakes::Counting;
    use super::*;
    use std::sync::Arc;

    fn ev(n: u64) -> Event {
        Event {
            kind: "admin".into(),
            data: serde_json::json!({ "n": n }),
        }
    }

    async fn audit_in(dir: &std::path::Path) -> AuditLog {
        AuditLog::open(dir.join("audit"), Default::default())
            .await
            .unwrap()
    }

    fn audit_text(dir: &std::path::Path) -> String {
        crate::audit::list_files(&dir.join("audit"))
            .unwrap()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn after_a_failed_extend_nothing_more_is_logged_or_extended() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Rtmr3Log::open(&dir.path().join("log"), "boot").unwrap();
        let platform = Arc::new(Counting::refusing());
        let tee = TeeHandle::new(platform.clone());
        let audit = audit_in(dir.path()).await;
        let err = log_then_extend(&mut log, &tee, &audit, ev(1))
            .await
            .unwrap_err();
        assert!(matches!(err, MeasureError::Extend(_)), "{err}");
        assert_eq!(log.lines.len(), 1, "logged before the extend");
        // A second event would leave two logged and unextended: refused before logging.
        let err = log_then_extend(&mut log, &tee, &audit, ev(2))
            .await
            .unwrap_err();
        assert!(matches!(err, MeasureError::Pending { seq: 1 }), "{err}");
        assert_eq!(log.lines.len(), 1);
        assert_eq!(platform.extends(), 1);
    }

    #[tokio::test]
    async fn every_extend_is_audited_first_naming_its_log_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Rtmr3Log::open(&dir.path().join("log"), "boot").unwrap();
        let platform = Arc::new(Counting::default());
        let tee = TeeHandle::new(platform.clone());
        let audit = audit_in(dir.path()).await;
        let m = log_then_extend(&mut log, &tee, &audit, ev(1))
            .await
            .unwrap();
        assert_eq!(m.seq, 1);
        assert_eq!(m.digest, ev(1).digest().unwrap());
        let text = audit_text(dir.path());
        assert!(
            text.contains(&format!(
                r#""type":"rtmr_extended","rtmr":3,"digest":"{}","event_type":"admin","log_seq":1"#,
                hex::encode(m.digest)
            )),
            "{text}"
        );
        assert_eq!(platform.extends(), 1);
    }

    #[tokio::test]
    async fn an_event_the_audit_log_cannot_record_is_not_extended_and_stays_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Rtmr3Log::open(&dir.path().join("log"), "boot").unwrap();
        let platform = Arc::new(Counting::default());
        let tee = TeeHandle::new(platform.clone());
        let audit = audit_in(dir.path()).await;
        // The audit log's writer is gone: every append fails, as on a full disk.
        audit.close().await.unwrap();
        let err = log_then_extend(&mut log, &tee, &audit, ev(1))
            .await
            .unwrap_err();
        assert!(matches!(err, MeasureError::Audit { seq: 1, .. }), "{err}");
        assert!(err.to_string().contains("not extended"), "{err}");
        assert_eq!(platform.extends(), 0, "extended unaudited");
        // Logged: a restart sees it as the one pending event, records and extends it.
        assert_eq!(log.lines.len(), 1);
        assert_eq!(log.unextended, Some(1));
        let err = log_then_extend(&mut log, &tee, &audit, ev(2))
            .await
            .unwrap_err();
        assert!(matches!(err, MeasureError::Pending { seq: 1 }), "{err}");
        assert_eq!(log.lines.len(), 1);
        assert_eq!(platform.extends(), 0);
    }
}
