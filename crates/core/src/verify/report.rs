//! The appraisal report: one entry per check, for people (text) and machines (JSON).

use serde::Serialize;

use crate::encoding::hex;
use crate::quote::TdBody;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accepted,
    Rejected,
}

impl Verdict {
    /// How the text reports write it.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Accepted => "ACCEPTED",
            Verdict::Rejected => "REJECTED",
        }
    }
}

/// The `checks:` part of a text report, shared by the TD and GPU reports.
pub(crate) fn render_checks(out: &mut String, checks: &[Check], not_evaluated: &[String]) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "checks:");
    for c in checks {
        let mark = if c.ok { "pass" } else { "FAIL" };
        let _ = writeln!(out, "  [{mark}] {}", c.name);
        if !c.ok {
            let _ = writeln!(out, "         expected: {}", c.expected);
            let _ = writeln!(out, "         found:    {}", c.found);
        }
    }
    for n in not_evaluated {
        let _ = writeln!(out, "  [----] {n} (not evaluated: an earlier check failed)");
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub expected: String,
    pub found: String,
}

/// The registers and attributes the quote carries, lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeasurementsView {
    pub mrtd: String,
    pub rtmr0: String,
    pub rtmr1: String,
    pub rtmr2: String,
    pub rtmr3: String,
    pub mrconfigid: String,
    pub mrowner: String,
    pub mrownerconfig: String,
    pub mrseam: String,
    pub report_data: String,
    pub td_attributes: String,
    pub xfam: String,
    pub tee_tcb_svn: String,
    pub mrservicetd: String,
}

impl MeasurementsView {
    pub fn from_body(b: &TdBody) -> Self {
        // Attributes are little-endian u64s in the quote; show them as numbers.
        Self {
            mrtd: hex(&b.mrtd),
            rtmr0: hex(&b.rtmr[0]),
            rtmr1: hex(&b.rtmr[1]),
            rtmr2: hex(&b.rtmr[2]),
            rtmr3: hex(&b.rtmr[3]),
            mrconfigid: hex(&b.mrconfigid),
            mrowner: hex(&b.mrowner),
            mrownerconfig: hex(&b.mrownerconfig),
            mrseam: hex(&b.mrseam),
            report_data: hex(&b.report_data),
            td_attributes: format!("{:016x}", b.td_attributes_u64()),
            xfam: format!("{:016x}", b.xfam_u64()),
            tee_tcb_svn: hex(&b.tee_tcb_svn),
            mrservicetd: hex(&b.mrservicetd_or_zero()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RootView {
    /// "production" (Intel SGX Root CA) or "insecure" (a root given by the operator).
    pub kind: &'static str,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CollateralView {
    pub not_before: String,
    pub next_update: String,
    pub tcb_evaluation_data_number: Option<u32>,
}

/// The outcome of an appraisal. Only the verifier makes one, and its fields are read through
/// methods: a caller cannot construct an accepted report or edit the checks behind a verdict.
/// [`Report::push_check`] may only add checks, and a failing one rejects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub(crate) verdict: Verdict,
    pub(crate) tcb_status: Option<String>,
    pub(crate) advisory_ids: Vec<String>,
    pub(crate) checks: Vec<Check>,
    /// Checks that did not run because an earlier one failed.
    pub(crate) not_evaluated: Vec<String>,
    pub(crate) measurements: Option<MeasurementsView>,
    pub(crate) quote_version: Option<u16>,
    pub(crate) root: RootView,
    pub(crate) collateral: Option<CollateralView>,
    pub(crate) verified_at: String,
    pub(crate) warnings: Vec<String>,
    /// Each attested GPU's own report (its checks are also in `checks`, named `gpu[I] …`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) gpus: Vec<GpuEntry>,
}

/// One GPU's appraisal inside a TD report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuEntry {
    pub index: u32,
    pub report: crate::gpu::GpuReport,
}

impl Report {
    /// Fold one GPU's appraisal in: its checks under `gpu[I] …` names, its skipped checks as
    /// warnings, and a rejected GPU rejects the whole report.
    pub(crate) fn add_gpu(&mut self, index: u32, gpu: crate::gpu::GpuReport) {
        use super::gpus::gpu_check_name;
        for c in gpu.checks() {
            self.push_check(
                &gpu_check_name(index, &c.name),
                c.ok,
                c.expected.clone(),
                c.found.clone(),
            );
        }
        for n in gpu.not_evaluated_checks() {
            self.not_evaluated.push(gpu_check_name(index, n));
        }
        for s in gpu.skipped() {
            self.warnings.push(format!(
                "{} skipped: {}",
                gpu_check_name(index, &s.name),
                s.reason
            ));
        }
        for w in gpu.warnings() {
            let w = format!("gpu[{index}]: {w}");
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
        }
        if !gpu.accepted() {
            self.verdict = Verdict::Rejected;
        }
        self.gpus.push(GpuEntry { index, report: gpu });
    }

    /// The attested GPUs' own reports, in index order.
    pub fn gpus(&self) -> &[GpuEntry] {
        &self.gpus
    }

    pub fn accepted(&self) -> bool {
        self.verdict == Verdict::Accepted
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The platform's TCB status from Intel's TCB info, where the appraisal got that far.
    pub fn tcb_status(&self) -> Option<&str> {
        self.tcb_status.as_deref()
    }

    pub fn advisory_ids(&self) -> &[String] {
        &self.advisory_ids
    }

    /// Every check that ran, in order.
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// Checks that did not run because an earlier one failed.
    pub fn not_evaluated(&self) -> &[String] {
        &self.not_evaluated
    }

    /// The registers and attributes the quote carries, where it could be parsed.
    pub fn measurements(&self) -> Option<&MeasurementsView> {
        self.measurements.as_ref()
    }

    pub fn quote_version(&self) -> Option<u16> {
        self.quote_version
    }

    /// The root of trust the quote was appraised against.
    pub fn root(&self) -> &RootView {
        &self.root
    }

    pub fn collateral(&self) -> Option<&CollateralView> {
        self.collateral.as_ref()
    }

    pub fn verified_at(&self) -> &str {
        &self.verified_at
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Note something the verdict does not depend on (a policy that pins nothing).
    pub fn push_warning(&mut self, warning: String) {
        // Said once: two steps of one appraisal may notice the same thing.
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// Add a check made outside the quote appraisal (event log, challenge); a failing one
    /// rejects the whole report.
    pub fn push_check(&mut self, name: &str, ok: bool, expected: String, found: String) {
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

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// One line naming the first failing check, for error output.
    pub fn summary(&self) -> String {
        match self.failures().next() {
            None => format!(
                "accepted: TCB status {}",
                self.tcb_status.as_deref().unwrap_or("unknown")
            ),
            Some(c) => format!(
                "rejected: {} check failed: expected {}, found {}",
                c.name, c.expected, c.found
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
        if let Some(s) = &self.tcb_status {
            let _ = writeln!(out, "TCB status:  {s}");
        }
        if !self.advisory_ids.is_empty() {
            let _ = writeln!(out, "advisories:  {}", self.advisory_ids.join(", "));
        }
        let _ = writeln!(
            out,
            "root:        {} (sha256 {})",
            self.root.kind, self.root.sha256
        );
        if let Some(c) = &self.collateral {
            let _ = writeln!(
                out,
                "collateral:  valid {} .. {}",
                c.not_before, c.next_update
            );
        }
        let _ = writeln!(out, "verified at: {}", self.verified_at);
        render_checks(&mut out, &self.checks, &self.not_evaluated);
        if let Some(m) = &self.measurements {
            let _ = writeln!(out, "measurements:");
            for (k, v) in [
                ("MRTD", &m.mrtd),
                ("RTMR0", &m.rtmr0),
                ("RTMR1", &m.rtmr1),
                ("RTMR2", &m.rtmr2),
                ("RTMR3", &m.rtmr3),
                ("MRCONFIGID", &m.mrconfigid),
                ("MROWNER", &m.mrowner),
                ("MROWNERCONFIG", &m.mrownerconfig),
                ("MRSEAM", &m.mrseam),
                ("MRSERVICETD", &m.mrservicetd),
                ("REPORTDATA", &m.report_data),
                ("TDATTRIBUTES", &m.td_attributes),
                ("XFAM", &m.xfam),
                ("TEE_TCB_SVN", &m.tee_tcb_svn),
            ] {
                let _ = writeln!(out, "  {k:<14} {v}");
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "WARNING: {w}");
        }
        out
    }
}
