//! tdx-client: the client side of the agent's protocol, shared by `attest` ([`attest`]) and
//! `connect` ([`connect`]): open an RA-TLS connection whose certificate was appraised against
//! a policy ([`session`]), then prove the TD is live now with a fresh challenge on that same
//! connection ([`challenge`]).
//!
//! Errors keep an appraisal's verdict ([`ClientError::Rejected`], with the whole report)
//! apart from failures to talk at all, so callers can tell "this server is not what the
//! policy accepts" from "this server could not be reached".
#![forbid(unsafe_code)]

pub mod attest;
pub mod challenge;
pub mod connect;
pub mod gpus;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tdx_core::verify::{Policy, Report, Verifier};

pub use challenge::{check_challenge, check_challenge_gpus_with};
pub use session::{Alpn, ClientBody, HttpSender, Session, Target};

/// The name clients see for a certificate the RA-TLS verifier refused before any quote was
/// appraised (no evidence extension, a broken key binding, an expired certificate).
pub const CHECK_CERTIFICATE: &str = "RA-TLS certificate";
/// The name for a challenge exchange that produced nothing to check (an error status other
/// than 5xx and 429, which say the agent is unavailable; a response that is not the challenge
/// JSON).
pub const CHECK_CHALLENGE: &str = "challenge";

/// Why talking to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {detail}")]
    Url { url: String, detail: String },
    /// TCP could not be established (refused, unreachable, timed out).
    #[error("{addr}: {detail}")]
    Connect { addr: String, detail: String },
    /// The TLS handshake failed before or without an appraisal (I/O, protocol, timeout).
    #[error("TLS handshake with {addr}: {detail}")]
    Handshake { addr: String, detail: String },
    /// The RA-TLS verifier refused the certificate before appraising a quote.
    #[error("TLS handshake with {addr}: RA-TLS: {detail}")]
    Refused { addr: String, detail: String },
    /// The evidence was appraised and refused; the report names every check.
    #[error("{}", .0.summary())]
    Rejected(Box<Report>),
    /// An HTTP exchange over the verified connection failed in transport.
    #[error("{what}: {detail}")]
    Http { what: String, detail: String },
    /// The server answered with an error status.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    /// The server answered with something that is not what the protocol says.
    #[error("{what}: malformed response: {detail}")]
    Malformed { what: String, detail: String },
    #[error("client setup: {0}")]
    Setup(String),
}

/// One failed check, as clients report it: which, what was expected, what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedCheck {
    pub name: String,
    pub expected: String,
    pub found: String,
}

impl FailedCheck {
    /// The first failing check of a rejected report.
    pub fn first_of(report: &Report) -> Option<Self> {
        report.failures().next().map(|c| FailedCheck {
            name: c.name.clone(),
            expected: c.expected.clone(),
            found: c.found.clone(),
        })
    }
}

impl ClientError {
    /// The check that failed, when this error is a verdict about the server rather than a
    /// failure to reach it; `None` for transport errors.
    pub fn failed_check(&self) -> Option<FailedCheck> {
        match self {
            ClientError::Rejected(report) => {
                FailedCheck::first_of(report).or_else(|| {
                    // A rejected report always names a failed check; keep a name anyway.
                    Some(FailedCheck {
                        name: report
                            .not_evaluated()
                            .first()
                            .cloned()
                            .unwrap_or_else(|| "appraisal".into()),
                        expected: "an accepted report".into(),
                        found: report.summary(),
                    })
                })
            }
            ClientError::Refused { detail, .. } => Some(FailedCheck {
                name: CHECK_CERTIFICATE.into(),
                expected: "a certificate carrying verifiable RA-TLS evidence for its key".into(),
                found: detail.clone(),
            }),
            // An agent that is overloaded, cannot produce evidence right now (503), asks us
            // to slow down (429) or timed out waiting for our request body (408, a slow
            // link) said nothing about what it is: it is unavailable.
            ClientError::Status { status, .. }
                if *status >= 500 || *status == 429 || *status == 408 =>
            {
                None
            }
            ClientError::Status {
                what, status, body, ..
            } => Some(FailedCheck {
                name: CHECK_CHALLENGE.into(),
                expected: format!("{what} to succeed"),
                found: format!("HTTP {status}: {body}"),
            }),
            ClientError::Malformed { what, detail } => Some(FailedCheck {
                name: CHECK_CHALLENGE.into(),
                expected: format!("{what} to answer in the agent's protocol"),
                found: detail.clone(),
            }),
            ClientError::Url { .. }
            | ClientError::Connect { .. }
            | ClientError::Handshake { .. }
            | ClientError::Http { .. }
            | ClientError::Setup(_) => None,
        }
    }
}

/// How long connection set-up may take, and the whole answer to one of the session's own
/// small requests ([`Session::request`]: evidence, challenges). Requests sent through the
/// session's sender (a model's answer through `connect` may stream for minutes) are not bounded
/// here.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
    /// Above the agent's default quote timeout (45 s), which a fresh challenge may wait on.
    pub answer: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            answer: Duration::from_secs(60),
        }
    }
}

/// What a client trusts: one root and one policy, with the RA-TLS verifier (and its verdict
/// cache, docs/design.md §5) built from them once and shared by every connection. Cloning
/// is cheap and shares the caches (a clone carries an appraisal to a blocking thread).
#[derive(Clone, Debug)]
pub struct Client {
    verifier: Arc<Verifier>,
    policy: Arc<Policy>,
    ratls: Arc<tdx_core::ratls::RaTlsVerifier>,
    gpus: Arc<gpus::GpuAppraiser>,
}

impl Client {
    /// Collateral comes from the certificate (stapled endorsements): a client needs no PCCS.
    pub fn new(verifier: Verifier, policy: Policy) -> Result<Self, ClientError> {
        let ratls = tdx_core::ratls::RaTlsVerifier::new(
            verifier.clone(),
            policy.clone(),
            tdx_core::ratls::CollateralSource::Stapled,
        )
        .map_err(|e| ClientError::Setup(e.to_string()))?;
        let gpu_roots = tdx_core::gpu::GpuRoots::nvidia()
            .map_err(|e| ClientError::Setup(format!("NVIDIA's GPU roots: {e}")))?;
        Ok(Client {
            verifier: Arc::new(verifier),
            policy: Arc::new(policy),
            ratls: Arc::new(ratls),
            gpus: Arc::new(gpus::GpuAppraiser::new(gpu_roots)),
        })
    }

    /// Appraise GPUs against these roots instead of NVIDIA's (`--insecure-gpu-roots`: the
    /// simulated GPUs and test PKIs only).
    pub fn with_insecure_gpu_roots(mut self, roots: tdx_core::gpu::GpuRoots) -> Self {
        self.gpus = Arc::new(gpus::GpuAppraiser::new(roots));
        self
    }

    pub fn gpus(&self) -> &gpus::GpuAppraiser {
        &self.gpus
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn ratls(&self) -> &Arc<tdx_core::ratls::RaTlsVerifier> {
        &self.ratls
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real appraisal's accepted report (the simulated TD's quote against its own root)
    /// with these checks added: accepted when every one passed (also for challenge.rs).
    pub(crate) fn report_with(checks: &[(&str, bool)]) -> Report {
        let tmp = tempfile::tempdir().unwrap();
        let fx = tdx_sim::SimFixture::create(tmp.path(), tdx_sim::SimSettings::default()).unwrap();
        let now = tdx_core::verify::time::now_unix();
        let quote = fx.quote(&[0; 64]).unwrap();
        let collateral = fx.collateral(now as u64).unwrap().prepare().unwrap();
        let mut report = Verifier::with_insecure_root(fx.root_der().to_vec()).appraise(
            &quote,
            &collateral,
            now,
            &Policy::default(),
            &tdx_core::verify::Expectations::default(),
        );
        assert!(report.accepted(), "{}", report.render_text());
        for (name, ok) in checks {
            report.push_check(
                name,
                *ok,
                format!("{name} expected"),
                format!("{name} found"),
            );
        }
        report
    }

    #[test]
    fn a_rejection_names_its_first_failing_check() {
        let e = ClientError::Rejected(Box::new(report_with(&[
            ("quote structure", true),
            ("MRTD", false),
            ("RTMR3", false),
        ])));
        assert_eq!(
            e.failed_check(),
            Some(FailedCheck {
                name: "MRTD".into(),
                expected: "MRTD expected".into(),
                found: "MRTD found".into()
            })
        );
    }

    #[test]
    fn an_agent_too_busy_to_answer_is_unavailable_but_other_statuses_fail_the_challenge() {
        let status = |status| ClientError::Status {
            what: "POST /attestation/v1/challenge".into(),
            status,
            body: "overloaded".into(),
        };
        for unavailable in [500, 502, 503, 504, 429, 408] {
            assert_eq!(status(unavailable).failed_check(), None, "{unavailable}");
        }
        for failed in [400, 401, 404, 405, 422, 200, 302] {
            let c = status(failed).failed_check();
            assert_eq!(
                c.as_ref().map(|c| c.name.as_str()),
                Some(CHECK_CHALLENGE),
                "{failed}"
            );
            assert!(
                c.is_some_and(|c| c.found.contains(&format!("HTTP {failed}"))),
                "{failed}"
            );
        }
    }

    #[test]
    fn transport_errors_name_no_check() {
        for e in [
            ClientError::Connect {
                addr: "a:1".into(),
                detail: "refused".into(),
            },
            ClientError::Handshake {
                addr: "a:1".into(),
                detail: "eof".into(),
            },
            ClientError::Http {
                what: "GET /".into(),
                detail: "reset".into(),
            },
        ] {
            assert_eq!(e.failed_check(), None, "{e}");
        }
        let refused = ClientError::Refused {
            addr: "a:1".into(),
            detail: "no evidence".into(),
        };
        assert_eq!(
            refused.failed_check().map(|c| c.name),
            Some(CHECK_CERTIFICATE.to_string())
        );
    }
}
