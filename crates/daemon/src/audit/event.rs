//! The events the agent records, built only through typed constructors so that no caller can
//! put request content (prompts, completions) into the audit log.

use serde::Serialize;
use time::OffsetDateTime;

/// Longest free-text field, in bytes. Enough for a reason, a check name or a peer address;
/// far too short to carry a conversation.
pub const MAX_TEXT_BYTES: usize = 200;

/// Longest digest the log accepts, in bytes (SHA-512 size); digests are never longer.
const MAX_DIGEST_BYTES: usize = 64;

/// Why a quote was generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotePurpose {
    /// Bound into the RA-TLS certificate.
    Certificate,
    /// Answer to a client nonce (docs/design.md §6).
    Challenge,
    /// The agent appraising its own evidence.
    SelfCheck,
    /// Any other purpose; a `'static` name so that it cannot carry runtime content.
    Other(&'static str),
}

impl QuotePurpose {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Certificate => "certificate",
            Self::Challenge => "challenge",
            Self::SelfCheck => "self_check",
            Self::Other(name) => name,
        }
    }
}

/// One audit event. Opaque: the only way to make one is a constructor below.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub(crate) kind: Kind,
}

/// Field order here is the key order on disk (serde writes declaration order, `type` first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Kind {
    QuoteIssued {
        purpose: String,
        report_data: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        batch_size: Option<u32>,
    },
    CertificateRotated {
        reason: String,
        spki_sha256: String,
        not_after: String,
    },
    RtmrExtended {
        rtmr: u8,
        digest: String,
        event_type: String,
        /// The event's line in the RTMR3 event log, where the record names one.
        #[serde(skip_serializing_if = "Option::is_none")]
        log_seq: Option<u64>,
    },
    VerificationResult {
        subject: String,
        verdict: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        failing_check: Option<String>,
    },
    PolicyLoaded {
        digest: String,
    },
    AgentStarted {
        version: String,
    },
    AgentStopped {
        reason: String,
    },
    Notice {
        kind: String,
        message: String,
    },
    /// Written by the rate limiter, never by callers.
    Suppressed {
        event_type: String,
        count: u64,
        first: String,
        last: String,
    },
}

impl AuditEvent {
    /// A quote left the agent. `batch_size` is the number of challenge nonces in the Merkle
    /// tree the REPORTDATA commits to, when there is one.
    pub fn quote_issued(
        purpose: QuotePurpose,
        report_data: &[u8; 64],
        batch_size: Option<u32>,
    ) -> Self {
        Self::new(Kind::QuoteIssued {
            purpose: text(purpose.as_str()),
            report_data: hex::encode(report_data),
            batch_size,
        })
    }

    /// A new RA-TLS certificate is in use.
    pub fn certificate_rotated(
        reason: &str,
        spki_sha256: &[u8; 32],
        not_after: OffsetDateTime,
    ) -> Self {
        Self::new(Kind::CertificateRotated {
            reason: text(reason),
            spki_sha256: hex::encode(spki_sha256),
            not_after: super::writer::format_time(not_after),
        })
    }

    /// An RTMR was extended with a SHA-384 digest; `event_type` is the event log's `type`.
    pub fn rtmr_extended(rtmr: u8, digest: &[u8; 48], event_type: &str) -> Self {
        Self::new(Kind::RtmrExtended {
            rtmr,
            digest: hex::encode(digest),
            event_type: text(event_type),
            log_seq: None,
        })
    }

    /// Line `log_seq` of the RTMR3 event log is committed to RTMR3. Written before the extend
    /// (docs/formats.md §9): the extend follows in the same run, or the recovery of the next
    /// start in the same boot makes it (and writes this record again first).
    pub fn rtmr3_extended(log_seq: u64, digest: &[u8; 48], event_type: &str) -> Self {
        Self::new(Kind::RtmrExtended {
            rtmr: 3,
            digest: hex::encode(digest),
            event_type: text(event_type),
            log_seq: Some(log_seq),
        })
    }

    /// The outcome of appraising someone's evidence: `subject` names the peer or quote,
    /// `verdict` is the verifier's word for it, `failing_check` the first check that failed.
    pub fn verification_result(subject: &str, verdict: &str, failing_check: Option<&str>) -> Self {
        Self::new(Kind::VerificationResult {
            subject: text(subject),
            verdict: text(verdict),
            failing_check: failing_check.map(text),
        })
    }

    /// A policy took effect; `digest` is its digest as the agent measures it (at most 64
    /// bytes are kept, more than any SHA-2 digest has).
    pub fn policy_loaded(digest: &[u8]) -> Self {
        Self::new(Kind::PolicyLoaded {
            digest: hex::encode(&digest[..digest.len().min(MAX_DIGEST_BYTES)]),
        })
    }

    pub fn agent_started(version: &str) -> Self {
        Self::new(Kind::AgentStarted {
            version: text(version),
        })
    }

    pub fn agent_stopped(reason: &str) -> Self {
        Self::new(Kind::AgentStopped {
            reason: text(reason),
        })
    }

    /// Anything else worth an auditor's attention, as a short `kind` and a short message.
    pub fn notice(kind: &str, message: &str) -> Self {
        Self::new(Kind::Notice {
            kind: text(kind),
            message: text(message),
        })
    }

    pub(crate) fn suppressed(
        event_type: &str,
        count: u64,
        first: OffsetDateTime,
        last: OffsetDateTime,
    ) -> Self {
        Self::new(Kind::Suppressed {
            event_type: text(event_type),
            count,
            first: super::writer::format_time(first),
            last: super::writer::format_time(last),
        })
    }

    fn new(kind: Kind) -> Self {
        Self { kind }
    }

    /// The `type` field on disk; also the key of the rate limiter's buckets.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::QuoteIssued { .. } => "quote_issued",
            Kind::CertificateRotated { .. } => "certificate_rotated",
            Kind::RtmrExtended { .. } => "rtmr_extended",
            Kind::VerificationResult { .. } => "verification_result",
            Kind::PolicyLoaded { .. } => "policy_loaded",
            Kind::AgentStarted { .. } => "agent_started",
            Kind::AgentStopped { .. } => "agent_stopped",
            Kind::Notice { .. } => "notice",
            Kind::Suppressed { .. } => "suppressed",
        }
    }

    /// Records that must never be dropped by the rate limiter: evidence the agent issued and
    /// changes to what it measures. Their callers are bounded already (quotes are serialised
    /// and batched, rotations and extends are rare), so flooding through them is not possible.
    pub fn is_security_relevant(&self) -> bool {
        matches!(
            self.kind,
            Kind::QuoteIssued { .. }
                | Kind::CertificateRotated { .. }
                | Kind::RtmrExtended { .. }
                | Kind::PolicyLoaded { .. }
                | Kind::Suppressed { .. }
        )
    }

    /// The event as it appears on disk.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail; the fallback keeps the line
        // parseable rather than panicking if serde ever says otherwise.
        serde_json::to_string(&self.kind)
            .unwrap_or_else(|_| format!("{{\"type\":\"{}\"}}", self.type_name()))
    }
}

/// Free text as it may enter the log: control characters replaced (an auditor reads these
/// lines in a terminal) and cut to [`MAX_TEXT_BYTES`] at a character boundary.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_TEXT_BYTES));
    for c in s.chars() {
        let c = if c.is_control() { '\u{FFFD}' } else { c };
        if out.len() + c.len_utf8() > MAX_TEXT_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_capped_and_sanitised() {
        let long = "é".repeat(500);
        let t = text(&long);
        assert!(t.len() <= MAX_TEXT_BYTES);
        assert!(t.chars().all(|c| c == 'é'));
        assert_eq!(text("a\nb\u{1b}[31m"), "a\u{FFFD}b\u{FFFD}[31m");
    }

    #[test]
    fn event_json_has_type_first_and_stable_keys() {
        let e = AuditEvent::quote_issued(QuotePurpose::Challenge, &[0xab; 64], Some(3));
        let json = e.to_json();
        assert!(
            json.starts_with(r#"{"type":"quote_issued","purpose":"challenge","report_data":"abab"#)
        );
        assert!(json.ends_with(r#","batch_size":3}"#));
        let e = AuditEvent::verification_result("10.0.0.7:8443", "rejected", None);
        assert_eq!(
            e.to_json(),
            r#"{"type":"verification_result","subject":"10.0.0.7:8443","verdict":"rejected"}"#
        );
    }

    #[test]
    fn security_classification() {
        assert!(
            AuditEvent::quote_issued(QuotePurpose::Certificate, &[0; 64], None)
                .is_security_relevant()
        );
        assert!(AuditEvent::rtmr_extended(3, &[0; 48], "x").is_security_relevant());
        assert!(AuditEvent::policy_loaded(&[0; 32]).is_security_relevant());
        assert!(!AuditEvent::notice("a", "b").is_security_relevant());
        assert!(!AuditEvent::verification_result("a", "b", None).is_security_relevant());
    }
}
