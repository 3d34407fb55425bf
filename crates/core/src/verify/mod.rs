//! Quote verification: dcap-qvl for the cryptography, our strict parsing and policy on top.
//!
//! [`Verifier::appraise`] runs, in order: the strict quote parser, the QE vendor, the root
//! embedded in the quote against the pinned root, the collateral's validity window, dcap-qvl
//! (signatures, chains, CRLs, TCB level), then every policy rule. It always returns a
//! [`Report`]; the verdict is `Accepted` only when every check passed.

pub mod collateral;
mod dcap;
pub mod events;
pub mod gpus;
pub mod policy;
pub mod report;
pub mod time;

use sha2::{Digest as _, Sha256};

pub use collateral::{Collateral, CollateralError, PreparedCollateral};
pub use policy::{Policy, PolicyError, TcbStatus};
pub use report::{Check, GpuEntry, Report, Verdict};

use crate::encoding::hex;
use crate::quote::{Quote, layout::INTEL_QE_VENDOR_ID};
use report::{CollateralView, MeasurementsView, RootView};

/// Intel SGX Root CA (production), the only root trusted unless the operator names another.
pub const INTEL_ROOT_CA_DER: &[u8] = include_bytes!("intel_sgx_root_ca.der");
/// Its SHA-256 fingerprint, as Intel publishes it.
pub const INTEL_ROOT_CA_SHA256: &str =
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

pub const CHECK_STRUCTURE: &str = "quote structure";
pub const CHECK_QE_VENDOR: &str = "QE vendor";
pub const CHECK_EMBEDDED_ROOT: &str = "embedded root certificate";
pub const CHECK_WINDOW: &str = "collateral window";
pub const CHECK_EVAL_NUMBER: &str = "TCB evaluation data number";
pub const CHECK_DEBUG: &str = "TD attribute DEBUG";
pub const CHECK_SEPT: &str = "TD attribute SEPT_VE_DISABLE";
pub const CHECK_SERVICETD: &str = "MRSERVICETD";
pub const CHECK_XFAM: &str = "XFAM";
pub const CHECK_MRSEAM: &str = "MRSEAM";
pub const CHECK_TEE_TCB_SVN: &str = "TEE_TCB_SVN minimum";
pub const CHECK_REPORT_DATA: &str = "REPORTDATA binding";
pub use dcap::{
    AK_BINDING as CHECK_AK_BINDING, CRLS as CHECK_CRLS, MODULE_IDENTITY as CHECK_MODULE_IDENTITY,
    PCK_CHAIN as CHECK_PCK_CHAIN, QE_IDENTITY as CHECK_QE_IDENTITY,
    QE_IDENTITY_SIG as CHECK_QE_IDENTITY_SIG, QE_REPORT_SIG as CHECK_QE_REPORT_SIG,
    QUOTE_SIG as CHECK_QUOTE_SIG, TCB_INFO as CHECK_TCB_INFO, TCB_LEVEL as CHECK_TCB_LEVEL,
    TCB_STATUS as CHECK_TCB_STATUS, TD_ATTRIBUTES as CHECK_TD_ATTRIBUTES,
};

/// What the caller additionally expects of this particular quote.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    /// The exact REPORTDATA the quote must carry (e.g. a key binding or a nonce).
    pub report_data: Option<[u8; 64]>,
}

/// Verifies quotes against one pinned root.
#[derive(Clone, Debug)]
pub struct Verifier {
    root_der: Vec<u8>,
    production: bool,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::production()
    }
}

impl Verifier {
    /// Trust Intel's production SGX Root CA only.
    pub fn production() -> Self {
        Self {
            root_der: INTEL_ROOT_CA_DER.to_vec(),
            production: true,
        }
    }

    /// Trust another root (the simulated PKI's, a test PKI). Reports say so.
    pub fn with_insecure_root(root_der: Vec<u8>) -> Self {
        let production = root_der == INTEL_ROOT_CA_DER;
        Self {
            root_der,
            production,
        }
    }

    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// Appraise `quote` with `collateral` at the instant `now` (unix seconds).
    pub fn appraise(
        &self,
        quote: &[u8],
        collateral: &PreparedCollateral,
        now: i64,
        policy: &Policy,
        expect: &Expectations,
    ) -> Report {
        self.appraise_with(quote, Some(collateral), now, policy, expect)
    }

    /// A report for a quote no collateral could be found for: the structural checks still
    /// name what is wrong with the quote itself, and the collateral check fails.
    pub fn appraise_without_collateral(&self, quote: &[u8], now: i64, why: &str) -> Report {
        let mut report = self.appraise_with(
            quote,
            None,
            now,
            &Policy::default(),
            &Expectations::default(),
        );
        if let Some(c) = report.checks.iter_mut().find(|c| c.name == CHECK_WINDOW) {
            c.found = why.to_string();
        }
        report
    }

    fn appraise_with(
        &self,
        quote: &[u8],
        collateral: Option<&PreparedCollateral>,
        now: i64,
        policy: &Policy,
        expect: &Expectations,
    ) -> Report {
        let mut b = Builder::default();
        let mut report = Report {
            verdict: Verdict::Rejected,
            tcb_status: None,
            advisory_ids: Vec::new(),
            checks: Vec::new(),
            not_evaluated: Vec::new(),
            measurements: None,
            quote_version: None,
            root: RootView {
                kind: if self.production {
                    "production"
                } else {
                    "insecure"
                },
                sha256: hex(&Sha256::digest(&self.root_der)),
            },
            collateral: None,
            verified_at: time::format_unix(now),
            warnings: Vec::new(),
            gpus: Vec::new(),
        };
        if !self.production {
            report
                .warnings
                .push("verified against a root other than Intel's production SGX Root CA".into());
        }
        let eval_number = collateral.map(|c| c.tcb_evaluation_data_number());
        if let Some(w) = collateral.map(|c| c.window()) {
            report.collateral = Some(CollateralView {
                not_before: time::format_unix(w.not_before()),
                next_update: time::format_unix(w.next_update()),
                tcb_evaluation_data_number: eval_number,
            });
        }

        let quote = match Quote::parse(quote) {
            Ok(q) => {
                b.pass(
                    CHECK_STRUCTURE,
                    "a well-formed TD quote v4 or v5",
                    "well-formed",
                );
                q
            }
            Err(e) => {
                b.fail(
                    CHECK_STRUCTURE,
                    "a well-formed TD quote v4 or v5",
                    e.to_string(),
                );
                return b.finish(report, true);
            }
        };
        report.quote_version = Some(quote.header.version);
        report.measurements = Some(MeasurementsView::from_body(&quote.body));

        b.check(
            CHECK_QE_VENDOR,
            quote.header.qe_vendor_id == INTEL_QE_VENDOR_ID,
            hex(&INTEL_QE_VENDOR_ID),
            hex(&quote.header.qe_vendor_id),
        );
        let embedded_root = quote
            .pck_chain_der()
            .ok()
            .and_then(|chain| chain.last().cloned());
        b.check(
            CHECK_EMBEDDED_ROOT,
            embedded_root.as_deref() == Some(self.root_der.as_slice()),
            format!("the pinned root (sha256 {})", report.root.sha256),
            match &embedded_root {
                Some(der) => format!("sha256 {}", hex(&Sha256::digest(der))),
                None => "no readable root certificate in the quote's PCK chain".into(),
            },
        );
        let Some(collateral) = collateral else {
            b.fail(CHECK_WINDOW, "collateral for this quote's platform", "none");
            return b.finish(report, true);
        };
        let w = collateral.window();
        {
            {
                let expected = format!(
                    "now ({}) inside every item's [issue, nextUpdate) window",
                    time::format_unix(now)
                );
                match w.violation(now) {
                    None => b.pass(
                        CHECK_WINDOW,
                        expected,
                        format!(
                            "valid {} .. {}",
                            time::format_unix(w.not_before()),
                            time::format_unix(w.next_update())
                        ),
                    ),
                    Some(d) => {
                        let state = if now < d.issued {
                            "not yet valid"
                        } else {
                            "expired"
                        };
                        b.fail(
                            CHECK_WINDOW,
                            expected,
                            format!(
                                "{} {state}: valid {} .. {}",
                                d.item,
                                time::format_unix(d.issued),
                                time::format_unix(d.next_update)
                            ),
                        )
                    }
                }
            }
        }
        if b.failed() {
            return b.finish(report, true);
        }

        let status = match dcap::run(quote.raw, collateral, now, &self.root_der) {
            dcap::Outcome::Verified {
                tcb_status,
                advisory_ids,
            } => {
                for step in dcap::STEPS {
                    b.pass(step, "valid", "valid");
                }
                report.tcb_status = Some(tcb_status.clone());
                report.advisory_ids = advisory_ids;
                tcb_status
            }
            dcap::Outcome::Failed { check, message } => {
                let (passed, never_ran) = dcap::steps_around(check);
                for step in passed {
                    b.pass(step, "valid", "valid");
                }
                b.fail(check, "valid", message);
                b.skipped.extend(never_ran.iter().map(|s| s.to_string()));
                return b.finish(report, true);
            }
        };

        self.policy_checks(
            &mut b,
            &quote,
            &status,
            &report.advisory_ids,
            eval_number,
            policy,
            expect,
        );
        if !policy.pins_anything() {
            report.warnings.push(
                "the policy pins no measurement: any genuine TD on an accepted platform passes"
                    .into(),
            );
        } else {
            // RTMR3, its events and the owner registers can be reproduced by any image: a
            // policy pinning only those accepts any image that replays them.
            let open = policy.measurements.unpinned_image_registers();
            if !open.is_empty() {
                report.warnings.push(format!(
                    "the policy does not pin the TD image ({} unpinned): any image that \
                     reproduces what it does pin passes; pin them from `tdx-agent measurements \
                     --toml` on a reference TD",
                    open.join(", ")
                ));
            }
        }
        b.finish(report, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn policy_checks(
        &self,
        b: &mut Builder,
        quote: &Quote<'_>,
        status: &str,
        advisories: &[String],
        eval_number: Option<u32>,
        policy: &Policy,
        expect: &Expectations,
    ) {
        let body = &quote.body;
        let accepted: Vec<String> = policy
            .tcb
            .accepted_statuses
            .iter()
            .map(|s| s.to_string())
            .collect();
        let status_ok =
            TcbStatus::from_dcap(status).is_some_and(|s| policy.tcb.accepted_statuses.contains(&s));
        let found = if advisories.is_empty() {
            status.to_string()
        } else {
            format!("{status} (advisories: {})", advisories.join(", "))
        };
        b.check(
            CHECK_TCB_STATUS,
            status_ok,
            format!("one of {}", accepted.join(", ")),
            found,
        );
        if status_ok && !policy.tcb.accepted_advisory_ids.is_empty() {
            let unexpected: Vec<&String> = advisories
                .iter()
                .filter(|a| !policy.tcb.accepted_advisory_ids.contains(*a))
                .collect();
            b.check(
                "TCB advisories",
                unexpected.is_empty(),
                format!(
                    "only {}",
                    policy
                        .tcb
                        .accepted_advisory_ids
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("{unexpected:?}"),
            );
        }
        if policy.tcb.min_tcb_evaluation_data_number > 0 {
            let n = eval_number.unwrap_or(0);
            b.check(
                CHECK_EVAL_NUMBER,
                n >= policy.tcb.min_tcb_evaluation_data_number,
                format!(">= {}", policy.tcb.min_tcb_evaluation_data_number),
                n.to_string(),
            );
        }
        // dcap-qvl's `allow_debug`, which hands DEBUG to this check, also stops it refusing
        // the profiling bits of the same TD-under-debug group: this check judges them all.
        let under_debug = body.under_debug();
        b.check(
            CHECK_DEBUG,
            policy.td.insecure_allow_debug || under_debug.is_empty(),
            if policy.td.insecure_allow_debug {
                "any (insecure_allow_debug)"
            } else {
                "0: DEBUG and the profiling bits (HGS_PLUS_PROF, PERF_PROF, PMT_PROF) clear"
            },
            if under_debug.is_empty() {
                "0".to_string()
            } else {
                format!(
                    "{} set (the host can {} this TD)",
                    under_debug.join(", "),
                    if body.is_debug() {
                        "read and change the memory of"
                    } else {
                        "profile"
                    }
                )
            },
        );
        b.check(
            CHECK_SEPT,
            body.sept_ve_disabled(),
            "1",
            if body.sept_ve_disabled() { "1" } else { "0" },
        );
        let servicetd = body.mrservicetd_or_zero();
        // SERVTD_EXT lets a service TD be bound after creation, which the quoted MRSERVICETD
        // does not show: only a policy that accepts some bound service TD accepts it (dcap-qvl
        // refuses it unless told `allow_service_td`, which hands service TDs to this check).
        let binds_later = body.servtd_ext();
        let accepts_a_service_td = policy.td.allowed_mrservicetd.iter().any(|a| a.0 != [0; 48]);
        b.check(
            CHECK_SERVICETD,
            policy
                .td
                .allowed_mrservicetd
                .iter()
                .any(|a| a.0 == servicetd)
                && (!binds_later || accepts_a_service_td),
            if accepts_a_service_td {
                one_of(&policy.td.allowed_mrservicetd)
            } else {
                format!(
                    "{}, and SERVTD_EXT clear (no service TD bound later)",
                    one_of(&policy.td.allowed_mrservicetd)
                )
            },
            if binds_later {
                format!("{} with SERVTD_EXT set", hex(&servicetd))
            } else {
                hex(&servicetd)
            },
        );
        if !policy.td.allowed_xfam.is_empty() {
            b.check(
                CHECK_XFAM,
                policy
                    .td
                    .allowed_xfam
                    .iter()
                    .any(|x| x.0 == body.xfam_u64()),
                format!(
                    "one of {}",
                    policy
                        .td
                        .allowed_xfam
                        .iter()
                        .map(|x| format!("{:#x}", x.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("{:#x}", body.xfam_u64()),
            );
        }
        if !policy.td.allowed_mrseam.is_empty() {
            b.check(
                CHECK_MRSEAM,
                policy.td.allowed_mrseam.iter().any(|m| m.0 == body.mrseam),
                one_of(&policy.td.allowed_mrseam),
                hex(&body.mrseam),
            );
        }
        if let Some(min) = &policy.td.min_tee_tcb_svn {
            let ok = body
                .tee_tcb_svn
                .iter()
                .zip(min.0.iter())
                .all(|(f, m)| f >= m);
            b.check(
                CHECK_TEE_TCB_SVN,
                ok,
                format!(">= {min} component-wise"),
                hex(&body.tee_tcb_svn),
            );
        }
        let regs: [(&str, &[u8; 48]); 8] = [
            ("MRTD", &body.mrtd),
            ("RTMR0", &body.rtmr[0]),
            ("RTMR1", &body.rtmr[1]),
            ("RTMR2", &body.rtmr[2]),
            ("RTMR3", &body.rtmr[3]),
            ("MRCONFIGID", &body.mrconfigid),
            ("MROWNER", &body.mrowner),
            ("MROWNERCONFIG", &body.mrownerconfig),
        ];
        for ((name, allowed), (_, value)) in policy.measurements.pins().into_iter().zip(regs) {
            if allowed.is_empty() {
                continue;
            }
            b.check(
                name,
                allowed.iter().any(|a| &a.0 == value),
                one_of(allowed),
                hex(value),
            );
        }
        if let Some(rd) = &expect.report_data {
            b.check(
                CHECK_REPORT_DATA,
                &body.report_data == rd,
                hex(rd),
                hex(&body.report_data),
            );
        }
    }
}

fn one_of(values: &[policy::Hex48]) -> String {
    match values {
        [one] => one.to_string(),
        many => format!(
            "one of {}",
            many.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Collects checks in order and what was not reached.
#[derive(Default)]
struct Builder {
    checks: Vec<Check>,
    skipped: Vec<String>,
}

impl Builder {
    fn check(
        &mut self,
        name: &str,
        ok: bool,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.to_string(),
            ok,
            expected: expected.into(),
            found: found.into(),
        });
    }

    fn pass(&mut self, name: &str, expected: impl Into<String>, found: impl Into<String>) {
        self.check(name, true, expected, found);
    }

    fn fail(&mut self, name: &str, expected: impl Into<String>, found: impl Into<String>) {
        self.check(name, false, expected, found);
    }

    fn failed(&self) -> bool {
        self.checks.iter().any(|c| !c.ok)
    }

    /// `stopped_early`: the cryptographic checks did not all run, so neither did the policy.
    fn finish(mut self, mut report: Report, stopped_early: bool) -> Report {
        if stopped_early {
            let ran: Vec<String> = self.checks.iter().map(|c| c.name.clone()).collect();
            for step in dcap::STEPS {
                if !ran.iter().any(|r| r == step) && !self.skipped.iter().any(|s| s == step) {
                    self.skipped.push(step.to_string());
                }
            }
            self.skipped.push("policy".to_string());
        }
        report.verdict = if self.failed() || stopped_early {
            Verdict::Rejected
        } else {
            Verdict::Accepted
        };
        report.checks = self.checks;
        report.not_evaluated = self.skipped;
        report
    }
}

#[cfg(test)]
mod tests;
