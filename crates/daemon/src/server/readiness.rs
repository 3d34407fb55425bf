//! Readiness stages, shown by /readyz and the gRPC health service. Probes read these flags;
//! they never generate a quote.

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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageState {
    pub stage: Stage,
    pub ok: bool,
    pub detail: String,
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
                        detail: "not yet checked".into(),
                    })
                    .collect(),
            ),
            all_ok: AtomicBool::new(false),
        }
    }

    pub fn set(&self, stage: Stage, ok: bool, detail: impl Into<String>) {
        let mut stages = self.lock();
        if let Some(s) = stages.iter_mut().find(|s| s.stage == stage) {
            s.ok = ok;
            s.detail = detail.into();
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
        assert_eq!(r.first_missing().unwrap().detail, "expired");
    }
}
