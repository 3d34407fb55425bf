//! The appraisal report of one GPU's evidence, in the shape of the TD report
//! (docs/formats.md §2): named checks with what was expected and found, the checks the
//! policy skipped (never shown as passed), those an earlier failure left unevaluated, and
//! what the GPU said about itself.

use serde::Serialize;

use crate::verify::report::{Check, Verdict};

/// A check the policy told the verifier to skip, and which `insecure_` key did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// Which root a chain was checked against: NVIDIA's pinned one, or a test root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuRootView {
    /// "production" (NVIDIA's pinned root) or "insecure" (`--insecure-gpu-roots`).
    pub kind: &'static str,
    pub subject: String,
    pub sha256: String,
}

/// What the evidence says about the GPU, where it could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpuView {
    pub architecture: Option<String>,
    /// The leaf certificate's subject (names the chip).
    pub leaf_subject: Option<String>,
    pub driver_version: Option<String>,
    pub vbios_version: Option<String>,
    /// RIM service ids the evidence calls for.
    pub driver_rim_id: Option<String>,
    pub vbios_rim_id: Option<String>,
    pub fwid: Option<String>,
    /// `enabled`, `disabled` or the raw value.
    pub nvdec0: Option<String>,
    /// `single-gpu`, `multi-gpu` (Blackwell's protected multi-GPU mode) or `protected-pcie`.
    pub mode: Option<String>,
    /// SHA-384 of every measurement block in order, hex: one value to pin or compare.
    pub measurements_sha384: Option<String>,
}

/// The outcome of one GPU's appraisal. Only the verifier makes one; callers read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuReport {
    pub(crate) verdict: Verdict,
    pub(crate) checks: Vec<Check>,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) not_evaluated: Vec<String>,
    pub(crate) gpu: GpuView,
    pub(crate) device_root: GpuRootView,
    pub(crate) rim_root: GpuRootView,
    pub(crate) verified_at: String,
    pub(crate) warnings: Vec<String>,
}

impl GpuReport {
    pub(crate) fn new(device_root: GpuRootView, rim_root: GpuRootView, at: i64) -> Self {
        let mut warnings = Vec::new();
        for r in [&device_root, &rim_root] {
            if r.kind != "production" {
                warnings.push(format!(
                    "the GPU evidence was checked against a test root ({}), not NVIDIA's",
                    r.subject
                ));
            }
        }
        Self {
            verdict: Verdict::Accepted,
            checks: Vec::new(),
            skipped: Vec::new(),
            not_evaluated: Vec::new(),
            gpu: GpuView::default(),
            device_root,
            rim_root,
            verified_at: crate::verify::time::format_unix(at),
            warnings,
        }
    }

    pub(crate) fn check(&mut self, name: &str, ok: bool, expected: String, found: String) {
        self.checks.push(Check {
            name: name.to_string(),
            ok,
            expected,
            found,
        });
        if !ok {
            self.verdict = Verdict::Rejected;
        }
    }

    pub(crate) fn skip(&mut self, name: &str, reason: &str) {
        self.skipped.push(Skipped {
            name: name.to_string(),
            reason: reason.to_string(),
        });
    }

    /// A check that could not run: the report is rejected, since nothing vouches for it.
    pub(crate) fn not_evaluated(&mut self, name: &str) {
        self.not_evaluated.push(name.to_string());
        self.verdict = Verdict::Rejected;
    }

    pub(crate) fn gpu_mut(&mut self) -> &mut GpuView {
        &mut self.gpu
    }

    pub(crate) fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }

    pub fn accepted(&self) -> bool {
        self.verdict == Verdict::Accepted
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    pub fn check_named(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    pub fn not_evaluated_checks(&self) -> &[String] {
        &self.not_evaluated
    }

    pub fn gpu(&self) -> &GpuView {
        &self.gpu
    }

    pub fn device_root(&self) -> &GpuRootView {
        &self.device_root
    }

    pub fn rim_root(&self) -> &GpuRootView {
        &self.rim_root
    }

    pub fn verified_at(&self) -> &str {
        &self.verified_at
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    /// One line naming the first failing check, for error output.
    pub fn summary(&self) -> String {
        match (self.failures().next(), self.not_evaluated.first()) {
            (Some(c), _) => format!(
                "rejected: {} check failed: expected {}, found {}",
                c.name, c.expected, c.found
            ),
            (None, Some(n)) => format!("rejected: {n} was not evaluated"),
            (None, None) => format!(
                "accepted: {} GPU, driver {}, VBIOS {}",
                self.gpu.architecture.as_deref().unwrap_or("unknown"),
                self.gpu.driver_version.as_deref().unwrap_or("unknown"),
                self.gpu.vbios_version.as_deref().unwrap_or("unknown"),
            ),
        }
    }

    pub fn to_json(&self) -> String {
        // Only strings, numbers and bools: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "verdict:     {}", self.verdict.label());
        let g = &self.gpu;
        for (k, v) in [
            ("GPU:", &g.architecture),
            ("leaf:", &g.leaf_subject),
            ("driver:", &g.driver_version),
            ("VBIOS:", &g.vbios_version),
            ("mode:", &g.mode),
        ] {
            if let Some(v) = v {
                let _ = writeln!(out, "{k:<12} {v}");
            }
        }
        for (k, r) in [
            ("device root:", &self.device_root),
            ("RIM root:", &self.rim_root),
        ] {
            let _ = writeln!(
                out,
                "{k:<12} {} {} (sha256 {})",
                r.kind, r.subject, r.sha256
            );
        }
        let _ = writeln!(out, "verified at: {}", self.verified_at);
        crate::verify::report::render_checks(&mut out, &self.checks, &self.not_evaluated);
        for s in &self.skipped {
            let _ = writeln!(out, "  [skip] {} ({})", s.name, s.reason);
        }
        for w in &self.warnings {
            let _ = writeln!(out, "WARNING: {w}");
        }
        out
    }
}
