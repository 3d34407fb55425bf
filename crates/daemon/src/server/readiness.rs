//! Readiness stages, shown by /readyz and the gRPC health service. Probes read these flags;
//! they never generate a quote.
//!
//! Each stage carries two details. The public one is what /readyz and the 503 of a model
//! route tell a caller who need not have authenticated: the stage's own words (a fixed hint of
//! what to check, a time, a count, a check's name). The log detail is the whole story (the
//! TEE's error with its configfs path, the PCCS's or the model server's address, a file under
//! `state_dir`) and goes to the agent's log, once each time it changes. The challenge route
//! draws the same line (`batcher::QuoteFailure::public`): a failure is told the same way on
//! every route.

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// What must hold before the agent serves: each stage with why it does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Runtime measurements extended into RTMR3 (or replayed after a restart).
    Measured,
    /// Collateral for our own quote is inside its validity window.
    CollateralFresh,
    /// An RA-TLS certificate with valid evidence is being served.
    CertificateIssued,
    /// The configured upstream answers its health check (only when one is configured).
    UpstreamHealthy,
    /// Every GPU found passed and at least `gpu.required` did (only with `[gpu]`).
    GpuAttested,
}

impl Stage {
    /// The name /readyz and errors use.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Measured => "measured",
            Stage::CollateralFresh => "collateral_fresh",
            Stage::CertificateIssued => "certificate_issued",
            Stage::UpstreamHealthy => "upstream_healthy",
            Stage::GpuAttested => "gpu_attested",
        }
    }

    /// The public detail of a stage set without a more precise one: what holds, or what to
    /// check (the reason itself is in the agent's log).
    pub fn hint(self, ok: bool) -> Public {
        Public::fixed(match (self, ok) {
            (Stage::Measured, true) => "RTMR3 matches the event log",
            (Stage::Measured, false) => {
                "RTMR3 is not explained by the agent's event log; see the agent's log"
            }
            (Stage::CollateralFresh, true) => "the collateral is inside its validity window",
            (Stage::CollateralFresh, false) => {
                "the collateral has expired and none could be fetched; check the PCCS (collateral.pccs_url); see the agent's log"
            }
            (Stage::CertificateIssued, true) => "a certificate with valid evidence is served",
            (Stage::CertificateIssued, false) => {
                "no valid certificate could be issued; see the agent's log"
            }
            (Stage::UpstreamHealthy, true) => "the model server answers its health check",
            (Stage::UpstreamHealthy, false) => {
                "the model server does not answer its health check (down, or still loading); see the agent's log"
            }
            (Stage::GpuAttested, true) => "every GPU is attested",
            (Stage::GpuAttested, false) => {
                "a GPU failed its attestation or is missing; see the agent's log"
            }
        })
    }
}

/// A stage's detail as callers see it. Built only from the agent's own words: a fixed text,
/// or one the agent composed of times, counts and its own check names. Never from an error's
/// text, a path or an address, which belong in the log detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Public(Cow<'static, str>);

impl Public {
    pub const fn fixed(text: &'static str) -> Self {
        Public(Cow::Borrowed(text))
    }

    /// Text the caller composed from the agent's own vocabulary (a time, a count, a stage or
    /// check name, a re-issue's reason); the caller vouches that nothing in it came from
    /// outside the agent.
    pub fn composed(text: String) -> Self {
        Public(Cow::Owned(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Public {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageState {
    pub stage: Stage,
    pub ok: bool,
    /// What /readyz and the model routes' 503 show.
    pub detail: Public,
    /// The whole story, for the agent's log only: never serialized.
    #[serde(skip)]
    pub log_detail: String,
}

#[derive(Debug)]
pub struct Readiness {
    stages: Mutex<Vec<StageState>>,
    /// Every stage holds: written under the lock whenever a stage changes, read without it
    /// by every model request, so a serving agent's requests share no lock (a mutex taken by
    /// every request on every connection thread is a line bouncing between cores).
    all_ok: AtomicBool,
}

impl Readiness {
    /// The stages that apply; `upstream` adds the upstream stage, `gpus` the GPU stage.
    pub fn new(upstream: bool, gpus: bool) -> Self {
        let mut stages = vec![
            Stage::Measured,
            Stage::CollateralFresh,
            Stage::CertificateIssued,
        ];
        if gpus {
            stages.push(Stage::GpuAttested);
        }
        if upstream {
            stages.push(Stage::UpstreamHealthy);
        }
        Readiness {
            stages: Mutex::new(
                stages
                    .into_iter()
                    .map(|stage| StageState {
                        stage,
                        ok: false,
                        detail: Public::fixed(NOT_YET_CHECKED),
                        log_detail: NOT_YET_CHECKED.into(),
                    })
                    .collect(),
            ),
            all_ok: AtomicBool::new(false),
        }
    }

    /// Set a stage with the stage's own hint as its public detail; `detail` goes to the log.
    pub fn set(&self, stage: Stage, ok: bool, detail: impl Into<String>) {
        self.set_public(stage, ok, stage.hint(ok), detail);
    }

    /// Set a stage: `public` for callers, `detail` for the agent's log (written when the
    /// stage or its detail changes, not on every repeat: the upstream's health is set on
    /// every poll and every refused model request).
    pub fn set_public(&self, stage: Stage, ok: bool, public: Public, detail: impl Into<String>) {
        let detail = detail.into();
        let mut stages = self.lock();
        if let Some(s) = stages.iter_mut().find(|s| s.stage == stage) {
            if s.ok != ok || s.log_detail != detail {
                if ok {
                    tracing::info!(stage = stage.name(), %detail, "readiness stage holds");
                } else {
                    tracing::warn!(stage = stage.name(), %detail, "readiness stage does not hold");
                }
            }
            s.ok = ok;
            s.detail = public;
            s.log_detail = detail;
        }
        self.all_ok
            .store(stages.iter().all(|s| s.ok), Ordering::Release);
    }

    pub fn snapshot(&self) -> Vec<StageState> {
        self.lock().clone()
    }

    // `first_missing` runs on every model request: while all hold it answers from the flag;
    // otherwise it looks under the lock rather than clone every stage's detail.
    pub fn ready(&self) -> bool {
        self.all_ok.load(Ordering::Acquire)
    }

    /// The first stage that does not hold.
    pub fn first_missing(&self) -> Option<StageState> {
        if self.ready() {
            return None;
        }
        self.lock().iter().find(|s| !s.ok).cloned()
    }

    pub fn is_ok(&self, stage: Stage) -> bool {
        self.lock().iter().any(|s| s.stage == stage && s.ok)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StageState>> {
        self.stages.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const NOT_YET_CHECKED: &str = "not yet checked";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_stage_holds() {
        let r = Readiness::new(false, false);
        assert!(!r.ready());
        r.set(Stage::Measured, true, "ok");
        r.set(Stage::CollateralFresh, true, "ok");
        assert_eq!(r.first_missing().unwrap().stage, Stage::CertificateIssued);
        r.set(Stage::CertificateIssued, true, "ok");
        assert!(r.ready());
        // Setting a stage that does not apply changes nothing.
        r.set(Stage::UpstreamHealthy, false, "down");
        assert!(r.ready());
        r.set(Stage::CollateralFresh, false, "expired");
        assert!(!r.ready());
        assert_eq!(r.first_missing().unwrap().log_detail, "expired");
    }

    /// What /readyz serializes is the public detail only: the log detail (here a configfs
    /// path and an address) never reaches the body, and a stage set without a public detail
    /// shows its fixed hint.
    #[test]
    fn only_the_public_detail_is_serialized() {
        let r = Readiness::new(true, false);
        r.set_public(
            Stage::CertificateIssued,
            false,
            Public::fixed("the TEE did not produce a quote; see the agent's log"),
            "quote: write /sys/kernel/config/tsm/report/tdx-agent-1/inblob: EIO",
        );
        r.set(
            Stage::UpstreamHealthy,
            false,
            "GET http://127.0.0.1:8000/health: connection refused",
        );
        let body = serde_json::to_string(&r.snapshot()).unwrap();
        for secret in ["/sys/kernel/config", "EIO", "127.0.0.1:8000", "refused"] {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
        assert!(body.contains("the TEE did not produce a quote"), "{body}");
        assert!(
            body.contains(Stage::UpstreamHealthy.hint(false).as_str()),
            "{body}"
        );
        let missing = r.first_missing().unwrap();
        assert_eq!(missing.stage, Stage::Measured);
        assert_eq!(missing.detail.as_str(), NOT_YET_CHECKED);
    }
}
