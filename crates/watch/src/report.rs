//! `evidence report`: one self-contained HTML page over the archive (no network: a
//! Content-Security-Policy of `default-src 'none'`, inline styles only, no link or image to
//! anywhere), per target a timeline of verdicts, the measurement states it went through (a
//! model update shows as a new state), its TCB status over time, and every failure with its
//! failed check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::archive::{ArchiveError, NewRecord, Verified, walk};

/// What the page shows of one target, gathered record by record as the chain is walked: a
/// record's report is parsed, the few values the page shows are taken from it, and it is
/// dropped before the next record is read, so memory grows by a timeline point per record
/// (and a row per failure), not by every record's report.
#[derive(Default)]
struct TargetPage {
    timeline: Vec<Point>,
    /// Measurement states (`MRTD .. RTMR3 ..`) as they followed each other.
    states: Vec<Span>,
    tcb: Vec<Span>,
    failures: Vec<Failure>,
}

/// One record on the timeline.
struct Point {
    seq: i64,
    at: i64,
    verdict: String,
    failed_check: Option<String>,
}

/// A value seen over consecutive records: when first and last, and in how many.
struct Span {
    value: String,
    first: i64,
    last: i64,
    count: usize,
}

/// A record not accepted, with the failed check's expected and found values.
struct Failure {
    seq: i64,
    at: i64,
    check: String,
    expected: String,
    found: String,
}

/// Extend `spans` with `value` seen at `at`: the last span if it is the same value.
fn see(spans: &mut Vec<Span>, at: i64, value: &str) {
    match spans.last_mut() {
        Some(last) if last.value == value => {
            last.last = at;
            last.count += 1;
        }
        _ => spans.push(Span {
            value: value.to_string(),
            first: at,
            last: at,
            count: 1,
        }),
    }
}

impl TargetPage {
    fn add(&mut self, seq: i64, r: &NewRecord) {
        let report: serde_json::Value =
            serde_json::from_str(&r.report).unwrap_or(serde_json::Value::Null);
        if let Some(m) = report.get("measurements") {
            let reg = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let state = format!(
                "MRTD {} RTMR0 {} RTMR1 {} RTMR2 {} RTMR3 {}",
                reg("mrtd"),
                reg("rtmr0"),
                reg("rtmr1"),
                reg("rtmr2"),
                reg("rtmr3")
            );
            see(&mut self.states, r.at, &state);
        }
        if let Some(tcb) = report.get("tcb_status").and_then(|v| v.as_str()) {
            see(&mut self.tcb, r.at, tcb);
        }
        if r.verdict != "accepted" {
            let check = r.failed_check.clone().unwrap_or_default();
            let detail = report
                .get("checks")
                .and_then(|c| c.as_array())
                .and_then(|c| c.iter().find(|c| c["name"] == *check && c["ok"] == false));
            let field = |k: &str| {
                detail
                    .and_then(|d| d.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .or_else(|| {
                        (k == "found")
                            .then(|| report.get("error")?.as_str().map(str::to_string))
                            .flatten()
                    })
                    .unwrap_or_default()
            };
            self.failures.push(Failure {
                seq,
                at: r.at,
                expected: field("expected"),
                found: field("found"),
                check,
            });
        }
        self.timeline.push(Point {
            seq,
            at: r.at,
            verdict: r.verdict.clone(),
            failed_check: r.failed_check.clone(),
        });
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(t: i64) -> String {
    tdx_core::verify::time::format_unix(t)
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
.tl{display:flex;flex-wrap:wrap;gap:1px;margin:0.5em 0}.tl span{width:8px;height:18px;display:inline-block}\
.accepted{background:#2a2}.rejected{background:#d22}.error{background:#999}\
code{font-size:0.85em;word-break:break-all}h2{border-bottom:2px solid #444;margin-top:2em}";

/// The page for the records of `path` between `from` and `to` (unix seconds, inclusive), built
/// while the chain is walked as `evidence verify` walks it, and the chain it walked (its head
/// recomputed, not read). A record that is not intact refuses the whole page: an auditor
/// reading it under a head they pinned must be able to rely on every row in it.
pub fn html_report(
    path: &Path,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<(String, Verified), ArchiveError> {
    let mut targets: BTreeMap<String, TargetPage> = BTreeMap::new();
    let verified = walk(path, None, |s| {
        let r = &s.record;
        if from.is_some_and(|f| r.at < f) || to.is_some_and(|t| r.at > t) {
            return Ok(());
        }
        targets.entry(r.target.clone()).or_default().add(s.seq, r);
        Ok(())
    })?;

    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<title>tdx-agent evidence report</title><style>{STYLE}</style></head><body>\
<h1>Attestation evidence report</h1><p>Generated {} from {}: {} records intact after anchor #{}, \
chain head <code>{}</code> (recomputed), {} targets.</p>",
        time(tdx_core::verify::time::now_unix()),
        esc(&path.display().to_string()),
        verified.records,
        verified.anchor_seq,
        hex::encode(verified.head),
        targets.len()
    );
    for (target, page) in &targets {
        let rows = &page.timeline;
        let count = |v: &str| rows.iter().filter(|r| r.verdict == v).count();
        let _ = write!(
            h,
            "<h2 id=\"t-{id}\">{name}</h2><p>{n} appraisals: {a} accepted, {r} rejected, {e} errors; \
from {first} to {last}.</p><h3>Timeline</h3><div class=\"tl\">",
            id = esc(target),
            name = esc(target),
            n = rows.len(),
            a = count("accepted"),
            r = count("rejected"),
            e = count("error"),
            first = rows.first().map(|r| time(r.at)).unwrap_or_default(),
            last = rows.last().map(|r| time(r.at)).unwrap_or_default(),
        );
        for r in rows {
            let class = match r.verdict.as_str() {
                "accepted" => "accepted",
                "rejected" => "rejected",
                _ => "error",
            };
            let _ = write!(
                h,
                "<span class=\"{class}\" title=\"#{} {} {}{}\"></span>",
                r.seq,
                time(r.at),
                esc(&r.verdict),
                r.failed_check
                    .as_deref()
                    .map(|c| format!(": {}", esc(c)))
                    .unwrap_or_default()
            );
        }
        h.push_str("</div>");

        let _ = write!(
            h,
            "<h3>Measurement states ({})</h3><table><tr><th>state</th><th>first seen</th><th>last seen</th><th>appraisals</th></tr>",
            page.states.len()
        );
        for (i, s) in page.states.iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}<br><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if i == 0 {
                    "initial".to_string()
                } else {
                    format!("change {i}")
                },
                esc(&s.value),
                time(s.first),
                time(s.last),
                s.count
            );
        }
        h.push_str("</table>");

        h.push_str("<h3>TCB status</h3><table><tr><th>status</th><th>from</th><th>to</th><th>appraisals</th></tr>");
        for s in &page.tcb {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.value),
                time(s.first),
                time(s.last),
                s.count
            );
        }
        h.push_str("</table>");

        let _ = write!(
            h,
            "<h3>Failures ({})</h3><table><tr><th>record</th><th>time</th><th>failed check</th><th>expected</th><th>found</th></tr>",
            page.failures.len()
        );
        for f in &page.failures {
            let _ = write!(
                h,
                "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                f.seq,
                time(f.at),
                esc(&f.check),
                esc(&f.expected),
                esc(&f.found)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    Ok((h, verified))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::archive::tests::record;
    use crate::archive::{Archive, verify};

    fn archive(n: i64) -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.db");
        let mut a = Archive::open(&path).unwrap();
        for i in 0..n {
            let mut r = record(i);
            if i == 2 {
                r.verdict = "rejected".into();
                r.failed_check = Some("MRTD".into());
            }
            a.append(&r).unwrap();
        }
        (tmp, path)
    }

    /// The heap a page holds for what it was given (its strings and vectors).
    fn retained_bytes(p: &TargetPage) -> usize {
        let spans =
            |s: &[Span]| s.iter().map(|s| s.value.capacity()).sum::<usize>() + size_of_val(s);
        p.timeline
            .iter()
            .map(|r| r.verdict.capacity() + r.failed_check.as_ref().map_or(0, String::capacity))
            .sum::<usize>()
            + p.timeline.capacity() * size_of::<Point>()
            + spans(&p.states)
            + spans(&p.tcb)
            + p.failures
                .iter()
                .map(|f| f.check.capacity() + f.expected.capacity() + f.found.capacity())
                .sum::<usize>()
            + p.failures.capacity() * size_of::<Failure>()
    }

    #[test]
    fn a_target_page_keeps_what_it_shows_and_not_the_reports() {
        // Reports as large as real ones (the checks, the GPUs' claims): none of it is kept.
        let padding = "x".repeat(64 << 10);
        let report = |verdict: &str, mrtd: &str| {
            serde_json::json!({
                "verdict": verdict,
                "measurements": {"mrtd": mrtd, "rtmr0": "00", "rtmr1": "11", "rtmr2": "22", "rtmr3": "33"},
                "tcb_status": "UpToDate",
                "checks": [{"name": "MRTD", "ok": verdict == "accepted", "expected": "aa", "found": mrtd}],
                "padding": padding,
            })
            .to_string()
        };
        let mut page = TargetPage::default();
        for i in 0..200 {
            let mut r = record(i);
            let mrtd = if i < 100 { "aa" } else { "bb" };
            r.report = report(if i == 150 { "rejected" } else { "accepted" }, mrtd);
            if i == 150 {
                r.verdict = "rejected".into();
                r.failed_check = Some("MRTD".into());
            }
            page.add(i, &r);
        }
        let kept = retained_bytes(&page);
        assert!(kept < 32 << 10, "{kept} bytes kept for 200 records");
        assert_eq!(page.timeline.len(), 200);
        let states: Vec<_> = page.states.iter().map(|s| s.count).collect();
        assert_eq!(states, [100, 100]);
        assert!(page.states[1].value.starts_with("MRTD bb RTMR0 00"));
        assert_eq!(page.tcb.len(), 1);
        let f = &page.failures[..];
        assert_eq!(f.len(), 1);
        assert_eq!(
            (
                f[0].seq,
                f[0].check.as_str(),
                f[0].expected.as_str(),
                f[0].found.as_str()
            ),
            (150, "MRTD", "aa", "bb")
        );
    }

    #[test]
    fn the_page_names_the_head_the_chain_gives() {
        let (_t, path) = archive(4);
        let (page, v) = html_report(&path, None, None).unwrap();
        assert_eq!(v, verify(&path, None).unwrap());
        assert!(page.contains(&hex::encode(v.head)), "{page}");
        assert!(
            page.contains("4 appraisals: 3 accepted, 1 rejected"),
            "{page}"
        );
        // The window picks records; the head is still the whole chain's.
        let (page, w) = html_report(&path, Some(record(1).at), Some(record(2).at)).unwrap();
        assert_eq!(w, v);
        assert!(
            page.contains("2 appraisals: 1 accepted, 1 rejected"),
            "{page}"
        );
    }

    #[test]
    fn a_forged_verdict_refuses_the_page_naming_the_record() {
        let (_t, path) = archive(4);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE appraisals SET verdict = 'accepted', failed_check = NULL WHERE seq = 3",
                [],
            )
            .unwrap();
        let e = html_report(&path, None, None).unwrap_err().to_string();
        assert!(e.contains("record #3") && e.contains("altered"), "{e}");
        // Also when the forged record is outside the window asked for.
        let e = html_report(&path, Some(record(3).at), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("record #3"), "{e}");
    }
}
