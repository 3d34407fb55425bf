//! `evidence reverify`: re-appraise archived records offline, each at its own time with its
//! own stored certificate, collateral, challenge and policy, and say where today's verdict
//! differs from the recorded one (a swapped policy or collateral, or a verifier that changed).

use std::path::Path;

use rusqlite::params;
use tdx_core::gpu::{GpuEvidenceSet, GpuRoots, GpuVerifier, nonce_for_certificate};
use tdx_core::ratls::{CollateralSource, RaTlsError, RaTlsVerifier};
use tdx_core::verify::{Policy, Report, Verifier};
use tdx_core::wire::{ChallengeResponseJson, EvidenceJson};

use super::archive::{ArchiveError, NewRecord, column, open_for_reading, record_error};
use super::export::{is_archive, read_export};

/// Which records to re-appraise, and the roots they were appraised against.
pub struct ReverifyOptions {
    pub verifier: Verifier,
    pub gpu_roots: GpuRoots,
    pub target: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// A record whose verdict today is not the recorded one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub seq: i64,
    pub target: String,
    pub at: i64,
    pub recorded: String,
    pub now: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reverified {
    /// Records re-appraised.
    pub checked: usize,
    /// Records without evidence to re-appraise (errors, refusals before any evidence).
    pub without_evidence: usize,
    pub disagreements: Vec<Disagreement>,
}

fn db(path: &Path) -> impl Fn(rusqlite::Error) -> ArchiveError + '_ {
    move |e| ArchiveError::Db {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// `verdict` or `verdict (first failed check)`.
fn outcome(verdict: &str, check: Option<&str>) -> String {
    match check {
        Some(c) => format!("{verdict} ({c})"),
        None => verdict.to_string(),
    }
}

/// Re-appraise the records of the archive, or of its export, at `path` (see the module).
pub fn reverify(path: &Path, opts: &ReverifyOptions) -> Result<Reverified, ArchiveError> {
    let mut out = Reverified::default();
    let gpu_verifier = GpuVerifier::new();
    if is_archive(path)? {
        archived(path, opts, |seq, r, blob_missing| {
            reverify_one(opts, &gpu_verifier, &mut out, seq, r, blob_missing);
        })?;
    } else {
        // An export holds every blob inline; its chain is `evidence verify`'s business.
        read_export(path, |_, stored| {
            let r = &stored.record;
            let selected = opts.target.as_ref().is_none_or(|t| *t == r.target)
                && opts.from.is_none_or(|f| r.at >= f)
                && opts.to.is_none_or(|t| r.at <= t);
            if selected {
                reverify_one(opts, &gpu_verifier, &mut out, stored.seq, r, false);
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// The archive's records `opts` selects, oldest first, each with whether a blob it names is
/// gone from the database (its chain is not checked: a swapped blob is what `reverify` finds).
/// A file not laid out as an archive, or a record with a value not of its column's type, is
/// an error naming it (an edit made it so).
fn archived(
    path: &Path,
    opts: &ReverifyOptions,
    mut each: impl FnMut(i64, &NewRecord, bool),
) -> Result<(), ArchiveError> {
    let conn = open_for_reading(path)?;
    let mut stmt = conn
        .prepare(
            "SELECT a.seq, a.target, a.at, a.verdict, a.failed_check, c.data, e.data,
             a.challenge, a.nonce, p.data,
             (a.certificate IS NOT NULL AND c.data IS NULL)
               OR (a.evidence IS NOT NULL AND e.data IS NULL) OR p.data IS NULL,
             a.report, a.url, a.verifier_version
             FROM appraisals a
             LEFT JOIN blobs c ON c.sha256 = a.certificate
             LEFT JOIN blobs e ON e.sha256 = a.evidence
             LEFT JOIN blobs p ON p.sha256 = a.policy
             WHERE (?1 IS NULL OR a.target = ?1) AND (?2 IS NULL OR a.at >= ?2)
               AND (?3 IS NULL OR a.at <= ?3)
             ORDER BY a.seq",
        )
        .map_err(db(path))?;
    let mut rows = stmt
        .query(params![opts.target, opts.from, opts.to])
        .map_err(db(path))?;
    while let Some(row) = rows.next().map_err(db(path))? {
        let seq: i64 = row.get(0).map_err(|e| {
            ArchiveError::Chain(format!(
                "a record was altered: its seq is not an integer ({e})"
            ))
        })?;
        let (target, at) = (row.get::<_, String>(1), row.get::<_, i64>(2));
        let bad = |detail: String| record_error(seq, &target, &at, detail);
        let record = NewRecord {
            target: column(row, 1, "target", &bad)?,
            url: column(row, 12, "url", &bad)?,
            at: column(row, 2, "at", &bad)?,
            verdict: column(row, 3, "verdict", &bad)?,
            failed_check: column(row, 4, "failed_check", &bad)?,
            certificate: column(row, 5, "certificate", &bad)?,
            evidence: column(row, 6, "evidence", &bad)?,
            challenge: column(row, 7, "challenge", &bad)?,
            nonce: column(row, 8, "nonce", &bad)?,
            policy: column::<Option<Vec<u8>>>(row, 9, "policy", &bad)?.unwrap_or_default(),
            report: column(row, 11, "report", &bad)?,
            verifier_version: column(row, 13, "verifier_version", &bad)?,
        };
        each(seq, &record, column(row, 10, "blob references", &bad)?);
    }
    Ok(())
}

/// Re-appraise record `seq` and count it in `out`. `blob_missing`: a blob it names is gone
/// (`evidence verify` says so too); re-appraising without it would judge the record on less
/// than it was (no policy is the default policy, which pins nothing).
fn reverify_one(
    opts: &ReverifyOptions,
    gpu_verifier: &GpuVerifier,
    out: &mut Reverified,
    seq: i64,
    r: &NewRecord,
    blob_missing: bool,
) {
    let at = r.at;
    let recorded = outcome(&r.verdict, r.failed_check.as_deref());
    // The record's time was taken as the appraisal began; its checks ran a moment later, up
    // to the report's own time. A validity boundary in between (collateral, a certificate)
    // makes `at` alone disagree: the outcome at the report's time settles it.
    let second_time = appraised_at(&r.report, at);
    let agrees_at = |f: &dyn Fn(i64) -> Option<String>| -> Option<String> {
        let first = f(at)?;
        if first == recorded {
            return Some(first);
        }
        match second_time.and_then(f) {
            Some(second) if second == recorded => Some(second),
            _ => Some(first),
        }
    };
    let now = if blob_missing {
        Some(
            "not appraisable: a blob it names (certificate, evidence or policy) is missing"
                .to_string(),
        )
    } else {
        match kept(r) {
            Kept::Everything {
                cert,
                evidence,
                challenge,
                nonce,
            } => agrees_at(&|t| {
                Some(
                    match appraise(
                        opts,
                        gpu_verifier,
                        cert,
                        evidence,
                        challenge,
                        nonce,
                        &r.policy,
                        t,
                    ) {
                        Ok(report) => report_outcome(&report),
                        Err(why) => format!("not appraisable: {why}"),
                    },
                )
            }),
            Kept::AcceptedWithoutEvidence => Some(
                "not appraisable: the record is accepted but holds no evidence to re-appraise"
                    .to_string(),
            ),
            Kept::Certificate(cert) => agrees_at(&|t| {
                recheck_refusal(opts, cert, Some(&r.policy), r.failed_check.as_deref(), t)
            }),
            Kept::Nothing => None,
        }
    };
    let Some(now) = now else {
        out.without_evidence += 1;
        return;
    };
    out.checked += 1;
    if now != recorded {
        out.disagreements.push(Disagreement {
            seq,
            target: r.target.clone(),
            at,
            recorded,
            now,
        });
    }
}

/// What a record kept to be re-appraised on.
#[derive(Debug, PartialEq, Eq)]
enum Kept<'a> {
    /// The whole appraisal: certificate, evidence document, challenge answer and nonce.
    Everything {
        cert: &'a [u8],
        evidence: &'a [u8],
        challenge: &'a [u8],
        nonce: &'a [u8],
    },
    /// An accepted record missing any of those. Accepted appraisals are archived with
    /// everything they were accepted on, so one without it cannot be re-checked, which an
    /// auditor must see; its certificate alone would re-check only the handshake, and a
    /// certificate that passes says nothing of a challenge no longer there.
    AcceptedWithoutEvidence,
    /// A server refused at the handshake left only its certificate.
    Certificate(&'a [u8]),
    /// Nothing to re-appraise (an error before any certificate).
    Nothing,
}

fn kept(r: &NewRecord) -> Kept<'_> {
    match (&r.certificate, &r.evidence, &r.challenge, &r.nonce) {
        (Some(cert), Some(evidence), Some(challenge), Some(nonce)) => Kept::Everything {
            cert,
            evidence,
            challenge,
            nonce,
        },
        _ if r.verdict == "accepted" => Kept::AcceptedWithoutEvidence,
        (Some(cert), ..) => Kept::Certificate(cert),
        _ => Kept::Nothing,
    }
}

/// The time the recorded report says its appraisal was made (`verified_at`), or a refusal
/// ended (`ended_at`), when that is a second instant worth trying: after `at` and within the
/// longest an appraisal may take. Validity windows are intervals, so a check that ran between
/// the two gives its recorded outcome at one of them. Anything else (no such time, a time
/// outside that window: `reverify` does not check the chain, so the text is not trusted to
/// choose any other instant) is not used.
fn appraised_at(report: &str, at: i64) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_str(report).ok()?;
    let text = value
        .get("verified_at")
        .or_else(|| value.get("ended_at"))?
        .as_str()?;
    let t = tdx_core::verify::time::parse_instant(text).ok()?;
    let latest = at.checked_add(i64::try_from(super::config::MAX_TIMEOUT_SECS).ok()?)?;
    (t > at && t <= latest).then_some(t)
}

/// `verdict (first failed check)` of a report, as the watcher records it.
fn report_outcome(report: &Report) -> String {
    outcome(
        if report.accepted() {
            "accepted"
        } else {
            "rejected"
        },
        report.failures().next().map(|c| c.name.as_str()),
    )
}

/// What the handshake's certificate appraisal gives.
enum CertificateVerdict {
    Appraised(Box<Report>),
    /// Refused before any quote was appraised (no evidence, a broken key binding); why.
    Refused(String),
}

/// The certificate's own appraisal under `policy` at `at`, as the handshake made it.
fn appraise_certificate(
    opts: &ReverifyOptions,
    policy: &Policy,
    cert: &[u8],
    at: i64,
) -> Result<CertificateVerdict, String> {
    let ratls = RaTlsVerifier::new(
        opts.verifier.clone(),
        policy.clone(),
        CollateralSource::Stapled,
    )
    .map_err(|e| e.to_string())?;
    Ok(match ratls.verify_certificate(cert, at) {
        Ok(r) => CertificateVerdict::Appraised(Box::new((*r).clone())),
        Err(RaTlsError::QuoteRejected(r)) => CertificateVerdict::Appraised(r),
        Err(e) => CertificateVerdict::Refused(e.to_string()),
    })
}

/// Today's outcome of a record that kept only the certificate, or `None` when the recorded
/// failure came after the handshake (the challenge, the GPUs) and no evidence of it was kept:
/// a certificate that passes today, recorded as failing one of its own checks, disagrees.
fn recheck_refusal(
    opts: &ReverifyOptions,
    cert: &[u8],
    policy_text: Option<&[u8]>,
    failed: Option<&str>,
    at: i64,
) -> Option<String> {
    let verdict = stored_policy(policy_text.unwrap_or_default())
        .and_then(|policy| appraise_certificate(opts, &policy, cert, at));
    match verdict {
        Err(why) => Some(format!("not appraisable: {why}")),
        Ok(CertificateVerdict::Refused(_)) => {
            Some(outcome("rejected", Some(tdx_client::CHECK_CERTIFICATE)))
        }
        Ok(CertificateVerdict::Appraised(report)) => {
            let certificate_stage = !report.accepted()
                || failed.is_some_and(|f| {
                    f == tdx_client::CHECK_CERTIFICATE
                        || report.checks().iter().any(|c| c.name == f)
                });
            certificate_stage.then(|| report_outcome(&report))
        }
    }
}

fn stored_policy(text: &[u8]) -> Result<Policy, String> {
    let text = std::str::from_utf8(text).map_err(|_| "the stored policy is not UTF-8")?;
    Policy::from_toml(text, "the stored policy").map_err(|e| e.to_string())
}

/// The appraisal `attest --nonce` made, made again from the stored evidence at `at`.
#[allow(clippy::too_many_arguments)]
fn appraise(
    opts: &ReverifyOptions,
    gpu_verifier: &GpuVerifier,
    cert: &[u8],
    evidence: &[u8],
    challenge: &[u8],
    nonce: &[u8],
    policy_text: &[u8],
    at: i64,
) -> Result<Report, String> {
    let policy = stored_policy(policy_text)?;
    let evidence: EvidenceJson =
        serde_json::from_slice(evidence).map_err(|e| format!("stored evidence: {e}"))?;
    let challenge: ChallengeResponseJson =
        serde_json::from_slice(challenge).map_err(|e| format!("stored challenge: {e}"))?;
    let mut report = match appraise_certificate(opts, &policy, cert, at)? {
        CertificateVerdict::Appraised(r) => *r,
        CertificateVerdict::Refused(e) => return Err(format!("RA-TLS certificate: {e}")),
    };
    let spki = tdx_core::ratls::certificate_spki_sha256(cert).map_err(|e| e.to_string())?;
    if policy.gpu.count > 0 {
        let claims = tdx_core::ratls::certificate_claims(cert).map_err(|e| e.to_string())?;
        let set = match &evidence.gpu_evidence {
            None => Err("the document carries no GPU evidence".to_string()),
            Some(v) => GpuEvidenceSet::from_json_value(v.clone()).map_err(|e| e.to_string()),
        };
        tdx_core::verify::gpus::appraise_served_gpus(
            &mut report,
            gpu_verifier,
            &opts.gpu_roots,
            &policy.gpu,
            cert,
            evidence.gpu_collateral.as_ref(),
            set.as_ref().map_err(Clone::clone),
            claims.gpu_evidence_sha256,
            nonce_for_certificate(&spki),
            at,
        );
    }
    tdx_client::check_challenge(
        &mut report,
        &opts.verifier,
        &policy,
        &evidence,
        &challenge,
        nonce,
        &spki,
        at,
    );
    tdx_client::check_challenge_gpus_with(
        &mut report,
        gpu_verifier,
        &opts.gpu_roots,
        &policy.gpu,
        cert,
        &spki,
        &evidence,
        &challenge,
        nonce,
        at,
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::archive::tests::record;

    /// Re-appraise every record with the production roots.
    fn every_record() -> ReverifyOptions {
        ReverifyOptions {
            verifier: Verifier::production(),
            gpu_roots: GpuRoots::nvidia().unwrap(),
            target: None,
            from: None,
            to: None,
        }
    }

    #[test]
    fn an_accepted_record_missing_any_evidence_is_not_passed_over() {
        let full = record(1);
        assert!(matches!(kept(&full), Kept::Everything { .. }));
        // Accepted, its certificate kept but any of the rest gone: not re-checked on the
        // certificate alone (which passes, and would count it as holding nothing to check).
        for strip in [
            (|r: &mut NewRecord| r.evidence = None) as fn(&mut NewRecord),
            |r| r.challenge = None,
            |r| r.nonce = None,
            |r| (r.evidence, r.challenge, r.nonce) = (None, None, None),
            |r| r.certificate = None,
        ] {
            let mut r = record(1);
            strip(&mut r);
            assert_eq!(kept(&r), Kept::AcceptedWithoutEvidence, "{r:?}");
        }
        // Refusals keep only the certificate; errors nothing.
        let mut refused = record(1);
        (
            refused.verdict,
            refused.evidence,
            refused.challenge,
            refused.nonce,
        ) = ("rejected".into(), None, None, None);
        assert_eq!(kept(&refused), Kept::Certificate(b"cert"));
        refused.certificate = None;
        refused.verdict = "error".into();
        assert_eq!(kept(&refused), Kept::Nothing);
    }

    #[test]
    fn a_crafted_archive_is_refused_before_anything_in_it_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.db");
        crate::Archive::open(&path).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        // Unbounded, the recursion would run (and spill to temporary files) for as long as it
        // is read; bounded here, so a regression fails rather than fills the disk.
        conn.execute_batch(
            "DROP TABLE appraisals;
             CREATE VIEW appraisals AS WITH RECURSIVE c(seq) AS (SELECT 1 UNION ALL
             SELECT seq + 1 FROM c WHERE seq < 1000)
             SELECT seq, 'a' AS target, 'u' AS url, 0 AS at, 'accepted' AS verdict,
             NULL AS failed_check, NULL AS certificate, NULL AS evidence, NULL AS challenge,
             NULL AS nonce, NULL AS policy, '' AS report, '' AS verifier_version,
             X'' AS prev_hash, X'' AS hash FROM c;",
        )
        .unwrap();
        drop(conn);
        let opts = every_record();
        let e = match reverify(&path, &opts) {
            Err(e) => e,
            Ok(r) => panic!("the view was read: {} records", r.checked),
        };
        assert!(matches!(e, ArchiveError::Schema { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("a.db") && e.contains("not an intact archive") && e.contains("view"),
            "{e}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.db");
        let mut a = crate::Archive::open(&path).unwrap();
        for i in 0..3 {
            a.append(&record(i)).unwrap();
        }
        drop(a);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE appraisals SET nonce = 'text' WHERE seq = 2", [])
            .unwrap();
        let opts = every_record();
        let e = reverify(&path, &opts).unwrap_err();
        assert!(matches!(e, ArchiveError::Record { seq: 2, .. }), "{e}");
        assert!(e.to_string().contains("its nonce was altered"), "{e}");
    }

    #[test]
    fn the_second_instant_is_the_reports_own_within_the_appraisal_window() {
        let at = 1_800_000_000;
        let report = |t: &str| format!(r#"{{"verdict":"rejected","verified_at":"{t}"}}"#);
        let ts = tdx_core::verify::time::format_unix;
        assert_eq!(appraised_at(&report(&ts(at + 3)), at), Some(at + 3));
        assert_eq!(appraised_at(&report(&ts(at + 600)), at), Some(at + 600));
        // Not before, not the same instant, not after the longest appraisal.
        assert_eq!(appraised_at(&report(&ts(at - 1)), at), None);
        assert_eq!(appraised_at(&report(&ts(at)), at), None);
        assert_eq!(appraised_at(&report(&ts(at + 601)), at), None);
        // A refusal's end, and errors and reports without a time, which have none.
        let refused = format!(
            r#"{{"error":"RA-TLS certificate: ...","ended_at":"{}"}}"#,
            ts(at + 2)
        );
        assert_eq!(appraised_at(&refused, at), Some(at + 2));
        assert_eq!(appraised_at(r#"{"error":"connection refused"}"#, at), None);
        assert_eq!(appraised_at("not json", at), None);
        assert_eq!(appraised_at(&report("yesterday"), at), None);
        assert_eq!(appraised_at(&report(&ts(i64::MAX)), i64::MAX - 1), None);
    }
}
