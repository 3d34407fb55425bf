//! `evidence report`: one self-contained HTML page over the archive (no network: a
//! Content-Security-Policy of `default-src 'none'`, inline styles only, no link or image to
//! anywhere), per target a timeline of verdicts, the measurement states it went through (a
//! model update shows as a new state), its TCB status over time, and every failure with its
//! failed check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

use super::archive::ArchiveError;

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

/// The page for the records of `path` between `from` and `to` (unix seconds, inclusive).
pub fn html_report(
    path: &Path,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<String, ArchiveError> {
    let err = |e: rusqlite::Error| ArchiveError::Db {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
    let mut stmt = conn
        .prepare(
            "SELECT seq, target, at, verdict, failed_check, report FROM appraisals
             WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR at <= ?2) ORDER BY seq",
        )
        .map_err(err)?;
    let mut rows = stmt.query(params![from, to]).map_err(err)?;
    let mut targets: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    while let Some(r) = rows.next().map_err(err)? {
        let report: String = r.get(5).map_err(err)?;
        targets
            .entry(r.get(1).map_err(err)?)
            .or_default()
            .push(Row {
                seq: r.get(0).map_err(err)?,
                at: r.get(2).map_err(err)?,
                verdict: r.get(3).map_err(err)?,
                failed_check: r.get(4).map_err(err)?,
                report: serde_json::from_str(&report).unwrap_or(serde_json::Value::Null),
            });
    }
    let head: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM appraisals ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok();

    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<title>tdx-agent evidence report</title><style>{STYLE}</style></head><body>\
<h1>Attestation evidence report</h1><p>Generated {} from {} (archive head <code>{}</code>), {} targets.</p>",
        time(tdx_core::verify::time::now_unix()),
        esc(&path.display().to_string()),
        head.map(hex::encode).unwrap_or_else(|| "empty".into()),
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
    Ok(h)
}
