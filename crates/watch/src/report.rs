//! `evidence report`: one self-contained HTML page over the archive (no network: a
//! Content-Security-Policy of `default-src 'none'`, inline styles only, no link or image to
//! anywhere), per target a timeline of verdicts, the measurement states it went through (a
//! model update shows as a new state), its TCB status over time, and every failure with its
//! failed check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::archive::{ArchiveError, Verified, walk};

/// One archived appraisal, as the report needs it.
struct Row {
    seq: i64,
    at: i64,
    verdict: String,
    failed_check: Option<String>,
    report: serde_json::Value,
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

/// First and last time a value was seen, in order of first appearance.
fn spans<'a>(values: impl Iterator<Item = (i64, &'a str)>) -> Vec<(String, i64, i64, usize)> {
    let mut out: Vec<(String, i64, i64, usize)> = Vec::new();
    for (at, v) in values {
        match out.last_mut() {
            Some(last) if last.0 == v => {
                last.2 = at;
                last.3 += 1;
            }
            _ => out.push((v.to_string(), at, at, 1)),
        }
    }
    out
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
    let mut targets: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let verified = walk(path, None, |s| {
        let r = &s.record;
        if from.is_some_and(|f| r.at < f) || to.is_some_and(|t| r.at > t) {
            return Ok(());
        }
        targets.entry(r.target.clone()).or_default().push(Row {
            seq: s.seq,
            at: r.at,
            verdict: r.verdict.clone(),
            failed_check: r.failed_check.clone(),
            report: serde_json::from_str(&r.report).unwrap_or(serde_json::Value::Null),
        });
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
    for (target, rows) in &targets {
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

        let measured: Vec<(i64, String)> = rows
            .iter()
            .filter_map(|r| {
                let m = r.report.get("measurements")?;
                let reg = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                Some((
                    r.at,
                    format!(
                        "MRTD {} RTMR0 {} RTMR1 {} RTMR2 {} RTMR3 {}",
                        reg("mrtd"),
                        reg("rtmr0"),
                        reg("rtmr1"),
                        reg("rtmr2"),
                        reg("rtmr3")
                    ),
                ))
            })
            .collect();
        let states = spans(measured.iter().map(|(at, s)| (*at, s.as_str())));
        let _ = write!(
            h,
            "<h3>Measurement states ({})</h3><table><tr><th>state</th><th>first seen</th><th>last seen</th><th>appraisals</th></tr>",
            states.len()
        );
        for (i, (s, first, last, n)) in states.iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}<br><code>{}</code></td><td>{}</td><td>{}</td><td>{n}</td></tr>",
                if i == 0 {
                    "initial".to_string()
                } else {
                    format!("change {i}")
                },
                esc(s),
                time(*first),
                time(*last)
            );
        }
        h.push_str("</table>");

        let tcb: Vec<(i64, String)> = rows
            .iter()
            .filter_map(|r| Some((r.at, r.report.get("tcb_status")?.as_str()?.to_string())))
            .collect();
        let tcb = spans(tcb.iter().map(|(at, s)| (*at, s.as_str())));
        h.push_str("<h3>TCB status</h3><table><tr><th>status</th><th>from</th><th>to</th><th>appraisals</th></tr>");
        for (s, first, last, n) in &tcb {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{n}</td></tr>",
                esc(s),
                time(*first),
                time(*last)
            );
        }
        h.push_str("</table>");

        let failures: Vec<&Row> = rows.iter().filter(|r| r.verdict != "accepted").collect();
        let _ = write!(
            h,
            "<h3>Failures ({})</h3><table><tr><th>record</th><th>time</th><th>failed check</th><th>expected</th><th>found</th></tr>",
            failures.len()
        );
        for r in failures {
            let check = r.failed_check.as_deref().unwrap_or("");
            let detail = r
                .report
                .get("checks")
                .and_then(|c| c.as_array())
                .and_then(|c| c.iter().find(|c| c["name"] == check && c["ok"] == false));
            let field = |k: &str| {
                detail
                    .and_then(|d| d.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .or_else(|| {
                        (k == "found")
                            .then(|| r.report.get("error")?.as_str().map(str::to_string))
                            .flatten()
                    })
                    .unwrap_or_default()
            };
            let _ = write!(
                h,
                "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.seq,
                time(r.at),
                esc(check),
                esc(&field("expected")),
                esc(&field("found"))
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
