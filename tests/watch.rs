//! `tdx-agent watch` over simulated agents, end to end: every target appraised on its
//! interval, the evidence archived in a hash chain, the metrics per target; then the auditor
//! commands on the archive: intact, edited, truncated (docs/watch.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Daemon, SimTd, http_get, metric, path_str, tdx_agent};

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Render `page` in headless Chromium (Debian's `chromium`): a screenshot to `shot` (checked to
/// be a PNG), and the page's text as the browser laid it out.
fn chromium_text(page: &Path, shot: &Path) -> String {
    let url = format!("file://{}", path_str(page));
    let chromium = |extra: &[&str]| {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1280,2000",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium not found: apt-get install chromium (scripts/setup.sh --for-tests)")
    };
    let out = chromium(&[&format!("--screenshot={}", path_str(shot))]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "no screenshot"
    );
    let out = chromium(&["--dump-dom"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The DOM as rendered, tags stripped.
    let dom = String::from_utf8_lossy(&out.stdout);
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// A policy pinning `mrtd` (hex).
/// `tdx-agent evidence WHAT DB --out OUT` (`export` or `report`).
fn evidence_out(what: &str, db: &Path, out: &Path) -> support::Run {
    tdx_agent(&["evidence", what, path_str(db), "--out", path_str(out)])
}

fn mrtd_policy(mrtd: &str) -> String {
    format!("[measurements]\nmrtd = [\"{mrtd}\"]\n")
}

/// A policy file at `path` pinning `td`'s MRTD.
fn pin_mrtd(path: &Path, td: &SimTd) -> PathBuf {
    write(
        path,
        &mrtd_policy(td.measurements()["mrtd"].as_str().unwrap()),
    )
}

/// Poll watch's /metrics until `ok` holds, or panic after `within`.
async fn wait_metrics(addr: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = http_get(addr, "/metrics").await.text();
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Poll watch's /readyz until it answers 503, returning the body, or panic after `within`
/// naming `what` never happened.
async fn wait_not_ready(addr: &str, within: Duration, what: &str) -> String {
    let deadline = Instant::now() + within;
    loop {
        let r = http_get(addr, "/readyz").await;
        if r.status == 503 {
            return r.text();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz said {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_archives_every_appraisal_and_auditors_find_any_edit() {
    let good_td = SimTd::new();
    let other_td = SimTd::new();
    let good = Daemon::sim(&good_td, &[]);
    let other = Daemon::sim(&other_td, &[]);
    let dir = tempfile::tempdir().unwrap();
    let pin = pin_mrtd(&dir.path().join("good.toml"), &good_td);
    let wrong = write(
        &dir.path().join("wrong.toml"),
        &mrtd_policy(&"00".repeat(48)),
    );
    let db = dir.path().join("archive.db");
    let config = write(
        &dir.path().join("watch.toml"),
        &format!(
            r#"archive = "{db}"
listen = "127.0.0.1:0"
timeout_secs = 10

[[target]]
name = "good"
url = "{good}"
policy = "{pin}"
insecure_root = "{good_root}"
interval_secs = 1

[[target]]
name = "drifted"
url = "{other}"
policy = "{wrong}"
insecure_root = "{other_root}"
interval_secs = 1
"#,
            db = path_str(&db),
            good = good.url(),
            other = other.url(),
            pin = path_str(&pin),
            wrong = path_str(&wrong),
            good_root = good_td.root_str(),
            other_root = other_td.root_str(),
        ),
    );
    let mut watch = support::spawn_watch(&config);
    let last =
        |text: &str, t: &str| metric(text, &format!("tdx_watch_last_result{{target=\"{t}\"}}"));
    let appraisals = |text: &str, t: &str| {
        metric(
            text,
            &format!("tdx_watch_appraisals_total{{target=\"{t}\"}}"),
        )
    };
    let text = wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        appraisals(t, "good").unwrap_or(0.0) >= 3.0
            && appraisals(t, "drifted").unwrap_or(0.0) >= 3.0
    })
    .await;
    assert_eq!(last(&text, "good"), Some(1.0), "{text}");
    assert_eq!(last(&text, "drifted"), Some(0.0), "{text}");
    assert!(
        metric(
            &text,
            "tdx_watch_failures_total{target=\"drifted\",check=\"MRTD\"}"
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "tdx_watch_last_success_timestamp_seconds{target=\"good\"}"
        )
        .is_some()
    );
    // A target failing from its first appraisal has a last success too: when watch started
    // watching it, so `TdxTargetNotVerified` fires for it.
    assert!(
        metric(
            &text,
            "tdx_watch_last_success_timestamp_seconds{target=\"drifted\"}"
        )
        .is_some_and(|t| t > 0.0),
        "{text}"
    );
    // Every family docs/watch.md lists is exported: the alert rules query two of them
    // (`TdxTargetNotVerified` compares the last success with `tdx_watch_interval_seconds`).
    support::assert_families_exported(
        &text,
        &support::documented_metrics(
            "docs/watch.md",
            "## Metrics (`GET /metrics` on `listen`)",
            "",
        ),
        // Every family is there, measurement changes too though none happen in this run: the
        // per-target counters exist at 0 from the start.
        &[],
    );
    // Made at 0 when the target starts, so `increase()` (the alert rules) sees a first
    // failure; the passing target's stay at 0.
    for (series, want) in [
        (
            "tdx_watch_failed_appraisals_total{target=\"good\"}",
            Some(0.0),
        ),
        (
            "tdx_watch_measurement_changes_total{target=\"good\"}",
            Some(0.0),
        ),
    ] {
        assert_eq!(metric(&text, series), want, "{series}: {text}");
    }
    assert!(
        metric(
            &text,
            "tdx_watch_failed_appraisals_total{target=\"drifted\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "tdx_watch_interval_seconds{target=\"good\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "tdx_watch_last_appraisal_timestamp_seconds{target=\"drifted\"}"
        )
        .is_some_and(|t| t > 0.0),
        "{text}"
    );
    // The head watch exposes is one an auditor can pin.
    let ready = http_get(&watch.addr, "/readyz").await;
    assert_eq!(ready.status, 200);
    let exposed = ready.json()["archive_head"].as_str().unwrap().to_string();
    assert_eq!(exposed.len(), 64, "{}", ready.text());
    // One watch appends to an archive: a second is refused before it starts, naming it; an
    // auditor reads it meanwhile without any lock. (The deadline only stops a second watch
    // that did start, which would otherwise run on.)
    let second = support::tdx_agent_within(
        &["watch", "--config", path_str(&config)],
        Duration::from_secs(60),
    );
    assert_eq!(second.code, 2, "{second}");
    assert!(
        second
            .stderr
            .contains(&format!("another watch holds {}", path_str(&db))),
        "{second}"
    );
    let r = tdx_agent(&["evidence", "verify", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
    watch.stop();
    let r = tdx_agent(&["evidence", "verify", path_str(&db), "--head", &exposed]);
    assert_eq!(r.code, 0, "{r}");

    // The archive verifies, and names its head.
    let r = tdx_agent(&["evidence", "verify", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
    let head = r.stdout.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(head.len(), 64, "{r}");
    let r = tdx_agent(&["evidence", "verify", path_str(&db), "--head", &head]);
    assert_eq!(r.code, 0, "{r}");

    // Each record carries what an auditor needs; collateral and certificates are stored once.
    let r = tdx_agent(&["evidence", "export", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
    // The export alone is checked as the archive is: its chain ends at the same head, and a
    // record edited in it is found.
    assert!(r.stderr.contains(&format!("head {head}")), "{r}");
    let exported = dir.path().join("records.jsonl");
    let w = evidence_out("export", &db, &exported);
    assert_eq!(w.code, 0, "{w}");
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), r.stdout);
    let v = tdx_agent(&["evidence", "verify", path_str(&exported), "--head", &head]);
    assert_eq!(v.code, 0, "{v}");
    assert!(v.stdout.trim().ends_with(&head), "{v}");
    let forged = r
        .stdout
        .replacen(r#""verdict":"rejected""#, r#""verdict":"accepted""#, 1);
    assert_ne!(forged, r.stdout);
    std::fs::write(&exported, forged).unwrap();
    let v = tdx_agent(&["evidence", "verify", path_str(&exported)]);
    assert_eq!(v.code, 1, "{v}");
    assert!(v.stderr.contains("was altered"), "{v}");
    let records: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.len() >= 6, "{}", records.len());
    let good_one = records.iter().find(|r| r["target"] == "good").unwrap();
    assert_eq!(good_one["verdict"], "accepted");
    assert!(good_one["evidence"]["quote"].is_string());
    assert!(good_one["challenge"]["quote"].is_string());
    assert!(good_one["certificate"].is_string());
    assert!(good_one["policy"].as_str().unwrap().contains("mrtd"));
    let drifted = records.iter().find(|r| r["target"] == "drifted").unwrap();
    assert_eq!(drifted["verdict"], "rejected");
    assert_eq!(drifted["failed_check"], "MRTD");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let blobs: i64 = conn
        .query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))
        .unwrap();
    assert!(
        (blobs as usize) < records.len(),
        "{blobs} blobs for {} records",
        records.len()
    );

    // The auditors' page: self-contained, and it names every target and failure.
    let page = dir.path().join("report.html");
    let r = evidence_out("report", &db, &page);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.trim().ends_with(&format!("head {head}")), "{r}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(&head), "the page does not name the head");
    assert!(html.contains("default-src 'none'"), "no CSP");
    for external in ["src=", "href=", "url(", "@import", "<script", "<link"] {
        assert!(!html.contains(external), "the page references {external:?}");
    }
    let text = chromium_text(&page, &dir.path().join("report.png"));
    for needle in [
        "good",
        "drifted",
        "Failures",
        "MRTD",
        "Measurement states",
        "UpToDate",
    ] {
        assert!(
            text.contains(needle),
            "the rendered page lacks {needle:?}:\n{text}"
        );
    }

    // Re-appraised offline at their own times, every record with evidence agrees...
    // (Each simulated TD has its own root: each target is re-appraised under its own.)
    let reverify_target = |db: &Path, target: &str, root: &str| {
        tdx_agent(&[
            "evidence",
            "reverify",
            path_str(db),
            "--target",
            target,
            "--insecure-root",
            root,
        ])
    };
    let reverify = |db: &Path| reverify_target(db, "good", good_td.root_str());
    let r = reverify(&db);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains(", 0 disagree"), "{r}");
    assert!(!r.stdout.contains(": 0 records re-appraised"), "{r}");
    // The drifted target's records, refused at the handshake, keep the certificate refused.
    let r = reverify_target(&db, "drifted", other_td.root_str());
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains(", 0 disagree") && !r.stdout.contains(": 0 records re-appraised"),
        "{r}"
    );
    // ...until the stored policy is swapped: each record of that target is named.
    let swapped = dir.path().join("swapped.db");
    std::fs::copy(&db, &swapped).unwrap();
    {
        let c = rusqlite::Connection::open(&swapped).unwrap();
        let n = c
            .execute(
                "UPDATE blobs SET data = ?1 WHERE data = ?2",
                rusqlite::params![std::fs::read(&wrong).unwrap(), std::fs::read(&pin).unwrap()],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    let r = reverify(&swapped);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("(good at ")
            && r.stdout.contains("recorded accepted, now rejected (MRTD)"),
        "{r}"
    );
    // An auditor holding only the export re-appraises the same records with the same result,
    // and finds the same swap made in the export.
    let export = dir.path().join("for-reverify.jsonl");
    let w = evidence_out("export", &db, &export);
    assert_eq!(w.code, 0, "{w}");
    let from_db = reverify(&db);
    let from_export = reverify(&export);
    assert_eq!(from_export.code, 0, "{from_export}");
    let summary = |out: &str| out.split_once(": ").map(|(_, s)| s.trim().to_string());
    assert_eq!(
        summary(&from_export.stdout),
        summary(&from_db.stdout),
        "{from_export}"
    );
    let pinned = std::fs::read_to_string(&pin).unwrap();
    let text = std::fs::read_to_string(&export).unwrap();
    let needle = serde_json::to_string(&pinned).unwrap();
    assert!(text.contains(&needle), "the export lacks the policy text");
    let swapped_text = serde_json::to_string(&std::fs::read_to_string(&wrong).unwrap()).unwrap();
    std::fs::write(&export, text.replace(&needle, &swapped_text)).unwrap();
    let r = reverify(&export);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("(good at ")
            && r.stdout.contains("recorded accepted, now rejected (MRTD)"),
        "{r}"
    );

    // A record whose policy blob is gone is not re-appraised under the default policy (which
    // pins nothing), and an accepted record stripped of its evidence is not passed over.
    for (name, sql, needle) in [
        (
            "no-policy.db",
            "DELETE FROM blobs WHERE data = ?1",
            "a blob it names (certificate, evidence or policy) is missing",
        ),
        (
            "no-evidence.db",
            "UPDATE appraisals SET certificate = NULL, evidence = NULL, challenge = NULL,
             nonce = NULL WHERE target = 'good' AND length(?1) > 0",
            "holds no evidence to re-appraise",
        ),
        // The certificate kept, which passes alone: still not re-checked on it alone.
        (
            "certificate-only.db",
            "UPDATE appraisals SET evidence = NULL, challenge = NULL, nonce = NULL
             WHERE target = 'good' AND length(?1) > 0",
            "holds no evidence to re-appraise",
        ),
    ] {
        let broken = dir.path().join(name);
        std::fs::copy(&db, &broken).unwrap();
        let c = rusqlite::Connection::open(&broken).unwrap();
        let n = c
            .execute(sql, rusqlite::params![std::fs::read(&pin).unwrap()])
            .unwrap();
        assert!(n >= 1, "{name}");
        let r = reverify(&broken);
        assert_eq!(r.code, 1, "{name}: {r}");
        assert!(
            r.stdout.contains("(good at ") && r.stdout.contains(needle),
            "{name}: {r}"
        );
    }

    // A file altered so that reading it would run code (a view recursing without end where
    // the records were) is refused by every auditor command before it is read, naming the
    // file: exit 1, as for any tampering. Bounded here, so a regression fails, not hangs.
    let crafted = dir.path().join("crafted.db");
    std::fs::copy(&db, &crafted).unwrap();
    rusqlite::Connection::open(&crafted)
        .unwrap()
        .execute_batch(
            "DROP TABLE appraisals;
             CREATE VIEW appraisals AS WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL
             SELECT n + 1 FROM c WHERE n < 100000) SELECT n AS seq, 'good' AS target,
             'u' AS url, 0 AS at, 'accepted' AS verdict, NULL AS failed_check,
             NULL AS certificate, NULL AS evidence, NULL AS challenge, NULL AS nonce,
             X'00' AS policy, '' AS report, '' AS verifier_version, X'' AS prev_hash,
             X'' AS hash FROM c;",
        )
        .unwrap();
    let out = dir.path().join("crafted.out");
    for r in [
        tdx_agent(&["evidence", "verify", path_str(&crafted)]),
        reverify(&crafted),
        evidence_out("report", &crafted, &out),
        evidence_out("export", &crafted, &out),
    ] {
        assert_eq!(r.code, 1, "{r}");
        assert!(
            r.stderr.contains(&format!(
                "archive {}: not an intact archive",
                path_str(&crafted)
            )) && r.stderr.contains("view"),
            "{r}"
        );
    }
    assert!(!out.exists());
    // A value of another type than its column's is the record altered (exit 1, named), and
    // text from the archive reaches the terminal escaped: an altered target cannot clear the
    // auditor's screen.
    let retyped = dir.path().join("retyped.db");
    std::fs::copy(&db, &retyped).unwrap();
    rusqlite::Connection::open(&retyped)
        .unwrap()
        .execute(
            "UPDATE appraisals SET at = 'yesterday'
             WHERE seq = (SELECT MIN(seq) FROM appraisals WHERE target = 'good')",
            [],
        )
        .unwrap();
    for r in [
        tdx_agent(&["evidence", "verify", path_str(&retyped)]),
        reverify(&retyped),
    ] {
        assert_eq!(r.code, 1, "{r}");
        assert!(
            r.stderr
                .contains("(good at (time unreadable)): its at was altered"),
            "{r}"
        );
    }
    let escaped = dir.path().join("escaped.db");
    std::fs::copy(&db, &escaped).unwrap();
    rusqlite::Connection::open(&escaped)
        .unwrap()
        .execute(
            "UPDATE appraisals SET target = char(27) || '[2J' || char(27) || '[H',
             evidence = NULL WHERE seq = (SELECT MIN(seq) FROM appraisals WHERE target = 'good')",
            [],
        )
        .unwrap();
    let r = tdx_agent(&["evidence", "verify", path_str(&escaped)]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("(\\u{1b}[2J\\u{1b}[H at "), "{r}");
    let r = reverify_target(&escaped, "\x1b[2J\x1b[H", good_td.root_str());
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("(\\u{1b}[2J\\u{1b}[H at ") && r.stdout.contains("holds no evidence"),
        "{r}"
    );
    for text in [&r.stdout, &r.stderr] {
        assert!(
            !text.contains('\x1b'),
            "an escape reached the terminal: {r}"
        );
    }

    // ...or when the collateral a record's challenge quote was appraised with is swapped for
    // another PKI's (the other agent's, as it serves it).
    let foreign = support::Https::connect(&other.addr, other_td.root_der())
        .await
        .unwrap()
        .get("/.well-known/attestation")
        .await
        .json()["collateral"]
        .clone();
    assert!(foreign.is_object(), "{foreign}");
    let swapped = dir.path().join("swapped-collateral.db");
    std::fs::copy(&db, &swapped).unwrap();
    {
        let c = rusqlite::Connection::open(&swapped).unwrap();
        let evidence: Vec<(Vec<u8>, Vec<u8>)> = c
            .prepare("SELECT b.sha256, b.data FROM blobs b JOIN appraisals a ON a.evidence = b.sha256 WHERE a.target = 'good' GROUP BY b.sha256")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!evidence.is_empty());
        for (key, data) in evidence {
            let mut doc: serde_json::Value = serde_json::from_slice(&data).unwrap();
            doc["collateral"] = foreign.clone();
            c.execute(
                "UPDATE blobs SET data = ?1 WHERE sha256 = ?2",
                rusqlite::params![serde_json::to_vec(&doc).unwrap(), key],
            )
            .unwrap();
        }
    }
    let r = reverify(&swapped);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("(good at ") && r.stdout.contains("recorded accepted, now rejected"),
        "{r}"
    );

    // A rejected record rewritten as accepted: found, by record.
    conn.execute(
        "UPDATE appraisals SET verdict = 'accepted', failed_check = NULL
         WHERE seq = (SELECT MIN(seq) FROM appraisals WHERE target = 'drifted')",
        [],
    )
    .unwrap();
    let r = tdx_agent(&["evidence", "verify", path_str(&db)]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("record #") && r.stderr.contains("altered"),
        "{r}"
    );
    // Nor rendered: no page shows the forged verdict (under a head an auditor pinned, the
    // last row's being untouched), and the page written before stays as it was.
    let r = evidence_out("report", &db, &page);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("record #") && r.stderr.contains("altered"),
        "{r}"
    );
    assert_eq!(std::fs::read_to_string(&page).unwrap(), html);

    // Nor is it exported: the export stops there, with what came before it; into a file,
    // nothing is written (the earlier export stays as it was).
    let r = tdx_agent(&["evidence", "export", path_str(&db)]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("export stopped") && r.stderr.contains("altered"),
        "{r}"
    );
    let kept = dir.path().join("kept.jsonl");
    std::fs::write(&kept, "an earlier export\n").unwrap();
    let r = evidence_out("export", &db, &kept);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("altered"), "{r}");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        "an earlier export\n"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")),
        "a temporary file was left"
    );

    // A truncated tail is found against the pinned head (and only so).
    let copy = dir.path().join("copy.db");
    drop(conn);
    std::fs::copy(&db, &copy).unwrap();
    let conn = rusqlite::Connection::open(&copy).unwrap();
    conn.execute(
        "UPDATE appraisals SET verdict = 'rejected', failed_check = 'MRTD'
         WHERE seq = (SELECT MIN(seq) FROM appraisals WHERE target = 'drifted')",
        [],
    )
    .unwrap();
    conn.execute(
        "DELETE FROM appraisals WHERE seq = (SELECT MAX(seq) FROM appraisals)",
        [],
    )
    .unwrap();
    drop(conn);
    let r = tdx_agent(&["evidence", "verify", path_str(&copy)]);
    assert_eq!(r.code, 0, "{r}");
    let r = tdx_agent(&["evidence", "verify", path_str(&copy), "--head", &head]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("pinned head"), "{r}");
}

/// A real Prometheus (Debian's package), scraping `target` every second and evaluating the
/// shipped rules every second with their `for:` durations shortened to 1 s; killed on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        let shipped =
            std::fs::read_to_string(support::repo().join("deploy/prometheus/tdx-agent.rules.yml"))
                .unwrap();
        let rules: String = shipped
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 1s\n", &l[..l.len() - l.trim_start().len()]),
                None => format!("{l}\n"),
            })
            .collect();
        write(&dir.join("rules.yml"), &rules);
        let config = write(
            &dir.join("prometheus.yml"),
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\nscrape_configs:\n  - job_name: watch\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        );
        let port = support::free_port();
        let log = dir.join("prometheus.log");
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", path_str(&config)))
            .arg(format!(
                "--storage.tsdb.path={}",
                path_str(&dir.join("data"))
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus not found: apt-get install prometheus (.ci/run does)");
        Prometheus {
            child,
            url: format!("127.0.0.1:{port}"),
            log,
        }
    }

    /// The alerts Prometheus's HTTP API reports (none while it is still starting). A
    /// Prometheus that exited (its port taken, a rule it refuses) fails the test here, with
    /// its log, rather than as "no alert yet" at the poll's deadline.
    async fn alerts(&mut self) -> Vec<serde_json::Value> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("prometheus exited ({status}):\n{log}");
        }
        let Ok(mut tcp) = tokio::net::TcpStream::connect(&self.url).await else {
            return Vec::new();
        };
        let req = format!("GET /api/v1/alerts HTTP/1.0\r\nHost: {}\r\n\r\n", self.url);
        if tcp.write_all(req.as_bytes()).await.is_err() {
            return Vec::new();
        }
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["data"]["alerts"].as_array().cloned())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_target_fires_its_alert_in_a_real_prometheus_and_the_other_stays_green() {
    let good_td = SimTd::new();
    let good = Daemon::sim(&good_td, &[]);
    let drifted_td = SimTd::new();
    let drifted = Daemon::sim(&drifted_td, &[]);
    let dir = tempfile::tempdir().unwrap();
    let pin = pin_mrtd(&dir.path().join("good.toml"), &good_td);
    // The other agent under a policy it no longer meets (its model changed, say).
    let wrong = write(
        &dir.path().join("wrong.toml"),
        &mrtd_policy(&"00".repeat(48)),
    );
    // The webhook receiver: every POST, headers and body.
    let received: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
    let hook_addr = {
        let received = std::sync::Arc::clone(&received);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let received = std::sync::Arc::clone(&received);
                async move {
                    let sig = headers
                        .get("x-tdx-agent-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    received.lock().unwrap().push((sig, body));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    };
    let secret = b"a webhook secret of 32 bytes....";
    let secret_file = write(
        &dir.path().join("hook.secret"),
        std::str::from_utf8(secret).unwrap(),
    );
    let config = write(
        &dir.path().join("watch.toml"),
        &format!(
            "archive = \"{db}\"\nlisten = \"127.0.0.1:0\"\n[webhook]\nurl = \"http://{hook_addr}/hook\"\nsecret_file = \"{secret}\"\n\n[[target]]\nname = \"green\"\nurl = \"{url}\"\npolicy = \"{pin}\"\ninsecure_root = \"{root}\"\ninterval_secs = 1\non_failure = [\"alert\", \"webhook\"]\n\n[[target]]\nname = \"drifted\"\nurl = \"{drifted_url}\"\npolicy = \"{wrong}\"\ninsecure_root = \"{drifted_root}\"\ninterval_secs = 1\non_failure = [\"alert\", \"webhook\"]\n",
            secret = path_str(&secret_file),
            drifted_url = drifted.url(),
            drifted_root = drifted_td.root_str(),
            db = path_str(&dir.path().join("a.db")),
            url = good.url(),
            pin = path_str(&pin),
            wrong = path_str(&wrong),
            root = good_td.root_str(),
        ),
    );
    // A secret others may read is refused before anything starts, naming the fix.
    let r = tdx_agent(&["watch", "--config", path_str(&config)]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("chmod 600"), "{r}");
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let watch = support::spawn_watch(&config);
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let mut prom = Prometheus::start(&prom_dir, &watch.addr);
    let deadline = Instant::now() + Duration::from_secs(120);
    let firing = loop {
        let alerts = prom.alerts().await;
        let firing: Vec<serde_json::Value> = alerts
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect();
        // Failing from its first appraisal, the target is also not verified since watch
        // started watching it.
        let fired = |name: &str| {
            firing
                .iter()
                .any(|a| a["labels"]["alertname"] == name && a["labels"]["target"] == "drifted")
        };
        if fired("TdxAttestationFailing") && fired("TdxTargetNotVerified") {
            break firing;
        }
        assert!(
            Instant::now() < deadline,
            "TdxAttestationFailing and TdxTargetNotVerified did not both fire: {firing:?}\nwatch metrics:\n{}",
            http_get(&watch.addr, "/metrics").await.text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let failing: Vec<&serde_json::Value> = firing
        .iter()
        .filter(|a| a["labels"]["alertname"] == "TdxAttestationFailing")
        .collect();
    assert_eq!(failing.len(), 1, "{firing:?}");
    assert_eq!(failing[0]["labels"]["target"], "drifted", "{firing:?}");
    assert!(
        !firing.iter().any(|a| a["labels"]["target"] == "green"),
        "the passing target has a firing alert: {firing:?}"
    );
    // Exactly one webhook event, for the change of the failing target, signed with the secret
    // (by then the target has failed at every one of many intervals).
    let metrics = http_get(&watch.addr, "/metrics").await.text();
    assert!(
        metric(&metrics, "tdx_watch_appraisals_total{target=\"drifted\"}").unwrap_or(0.0) >= 3.0,
        "{metrics}"
    );
    let events = received.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let (sig, body) = &events[0];
    assert_eq!(
        *sig,
        tdx_net::webhook::signature(secret, body.as_bytes()),
        "the HMAC does not verify"
    );
    let event: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["target"], "drifted");
    assert_eq!(event["state"], "failing");
    assert_eq!(event["failed_check"], "MRTD");
    assert_eq!(event["report_sha256"].as_str().map(str::len), Some(64));
    // It names its archive record: the same appraisal, by sequence number and hash.
    let seq = event["record"]["seq"].as_i64().expect("record.seq");
    let (target, failed, hash): (String, String, Vec<u8>) =
        rusqlite::Connection::open(dir.path().join("a.db"))
            .unwrap()
            .query_row(
                "SELECT target, failed_check, hash FROM appraisals WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
    assert_eq!((target.as_str(), failed.as_str()), ("drifted", "MRTD"));
    assert_eq!(event["record"]["hash"], hex::encode(hash));
    // And the archive, by the random id `/readyz` shows too.
    let ready = http_get(&watch.addr, "/readyz").await.json();
    assert_eq!(event["record"]["archive"], ready["archive_id"]);
    assert_eq!(
        ready["archive_id"].as_str().map(str::len),
        Some(32),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hangs_resets_and_another_tds_certificate_are_recorded_with_their_check() {
    let td = SimTd::new();
    let other_td = SimTd::new();
    let other = Daemon::sim(&other_td, &[]);
    // A server that accepts and never answers, and one that closes every connection at once.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let reset = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = reset.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = reset.accept().await {
            drop(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let pin = pin_mrtd(&dir.path().join("td.toml"), &td);
    let db = dir.path().join("a.db");
    let target = |name: &str, url: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\nurl = \"{url}\"\npolicy = \"{}\"\ninsecure_root = \"{}\"\ninterval_secs = 1\n",
            path_str(&pin),
            td.root_str()
        )
    };
    let config = write(
        &dir.path().join("watch.toml"),
        &format!(
            "archive = \"{}\"\nlisten = \"127.0.0.1:0\"\ntimeout_secs = 2\n{}{}{}",
            path_str(&db),
            target("hang", &format!("https://{hang_addr}")),
            target("reset", &format!("https://{reset_addr}")),
            // This TD's policy and root, but another TD answers.
            target("impostor", &other.url()),
        ),
    );
    let mut watch = support::spawn_watch(&config);
    let appraisals = |text: &str, t: &str| {
        metric(
            text,
            &format!("tdx_watch_appraisals_total{{target=\"{t}\"}}"),
        )
    };
    wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        ["hang", "reset", "impostor"]
            .iter()
            .all(|n| appraisals(t, n).unwrap_or(0.0) >= 2.0)
    })
    .await;
    watch.stop();
    let r = tdx_agent(&["evidence", "export", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
    let records: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = |t: &str| records.iter().find(|r| r["target"] == t).unwrap().clone();
    let hang = first("hang");
    assert_eq!(
        (hang["verdict"].as_str(), hang["failed_check"].as_str()),
        (Some("error"), Some("timeout")),
        "{hang}"
    );
    let reset = first("reset");
    assert_eq!(reset["verdict"], "error", "{reset}");
    assert_eq!(reset["failed_check"], "connection", "{reset}");
    assert!(reset["report"]["error"].as_str().is_some(), "{reset}");
    let impostor = first("impostor");
    assert_eq!(impostor["verdict"], "rejected", "{impostor}");
    assert!(
        impostor["failed_check"]
            .as_str()
            .is_some_and(|c| c.contains("root")),
        "{impostor}"
    );
    // The refused server's certificate is kept: the refusal is re-appraised offline, agrees
    // under the root it was refused against, and disagrees under the impostor's own root.
    assert!(impostor["certificate"].is_string(), "{impostor}");
    assert!(hang["certificate"].is_null(), "{hang}");
    let reverify = |root: &str| {
        tdx_agent(&[
            "evidence",
            "reverify",
            path_str(&db),
            "--insecure-root",
            root,
        ])
    };
    let r = reverify(td.root_str());
    assert_eq!(r.code, 0, "{r}");
    assert!(!r.stdout.contains(": 0 records re-appraised"), "{r}");
    let r = reverify(other_td.root_str());
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("(impostor at ") && r.stdout.contains("now accepted"),
        "{r}"
    );
    assert!(!r.stdout.contains("(hang at "), "{r}");
    // Every record is in the chain.
    let r = tdx_agent(&["evidence", "verify", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
}

/// Collateral the agent can no longer refresh (its PCCS gone) expires: watch records the
/// target rejected by the collateral check, not as an unreachable server.
#[tokio::test(flavor = "multi_thread")]
async fn collateral_that_expires_is_recorded_with_its_check() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = tmp.path().join("sim");
    let r = tdx_agent(&[
        "sim",
        "pki",
        "--sim-dir",
        path_str(&sim),
        "--collateral-lifetime",
        "8",
    ]);
    assert_eq!(r.code, 0, "{r}");
    let listen = format!("127.0.0.1:{}", support::free_port());
    let pccs = support::SimPccs::start(path_str(&sim), &listen);
    let agent = support::Daemon::start(
        &[
            "serve",
            "--tee",
            "sim",
            "--sim-dir",
            path_str(&sim),
            "--listen",
            "127.0.0.1:0",
            "--pccs",
            &format!("http://{listen}"),
        ],
        &[],
        &[],
    );
    let policy = write(&tmp.path().join("policy.toml"), "");
    let db = tmp.path().join("a.db");
    let config = write(
        &tmp.path().join("watch.toml"),
        &format!(
            "archive = \"{}\"\nlisten = \"127.0.0.1:0\"\n[[target]]\nname = \"expiring\"\nurl = \"{}\"\npolicy = \"{}\"\ninsecure_root = \"{}\"\ninterval_secs = 1\n",
            path_str(&db),
            agent.url(),
            path_str(&policy),
            path_str(&sim.join("root.der")),
        ),
    );
    let mut watch = support::spawn_watch(&config);
    let window = "tdx_watch_failures_total{target=\"expiring\",check=\"collateral window\"}";
    wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        metric(t, "tdx_watch_last_result{target=\"expiring\"}") == Some(1.0)
    })
    .await;
    drop(pccs);
    let text = wait_metrics(&watch.addr, Duration::from_secs(90), |t| {
        metric(t, window).unwrap_or(0.0) >= 1.0
    })
    .await;
    assert_eq!(
        metric(&text, "tdx_watch_last_result{target=\"expiring\"}"),
        Some(0.0),
        "{text}"
    );
    watch.stop();
    let r = tdx_agent(&["evidence", "export", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
    let expired = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["failed_check"] == "collateral window")
        .expect("no record of the expired collateral");
    assert_eq!(expired["verdict"], "rejected", "{expired}");
    assert!(expired["certificate"].is_string(), "{expired}");

    // The record's time is taken as the appraisal begins, its checks run a moment later (the
    // report's `verified_at`). Moved up to 12 s earlier, inside the collateral's 8 s life,
    // the record would re-appraise as accepted at its time alone; `reverify` also tries the
    // report's time, where the collateral had expired, and agrees. Without that time to try
    // (the report emptied), some of the same records disagree.
    let seq = expired["seq"].as_i64().unwrap();
    let verified_at =
        tdx_core::verify::time::parse_instant(expired["report"]["verified_at"].as_str().unwrap())
            .unwrap();
    let moved = tmp.path().join("moved.db");
    let reverify_with = |at: i64, report: Option<&str>| {
        std::fs::copy(&db, &moved).unwrap();
        let conn = rusqlite::Connection::open(&moved).unwrap();
        conn.execute(
            "UPDATE appraisals SET at = ?1 WHERE seq = ?2",
            rusqlite::params![at, seq],
        )
        .unwrap();
        if let Some(r) = report {
            conn.execute(
                "UPDATE appraisals SET report = ?1 WHERE seq = ?2",
                rusqlite::params![r, seq],
            )
            .unwrap();
        }
        drop(conn);
        let _ = std::fs::remove_file(tmp.path().join("moved.db-wal"));
        tdx_agent(&[
            "evidence",
            "reverify",
            path_str(&moved),
            "--insecure-root",
            path_str(&sim.join("root.der")),
        ])
    };
    let mut disagreed_alone = 0;
    for d in 1..=12 {
        let r = reverify_with(verified_at - d, None);
        assert_eq!(r.code, 0, "moved {d} s earlier: {r}");
        if reverify_with(verified_at - d, Some("{}")).code == 1 {
            disagreed_alone += 1;
        }
    }
    assert!(
        disagreed_alone > 0,
        "no moved record disagreed at its own time alone"
    );
}

/// The archive at its cap (`max_archive_mib`, SQLite's `max_page_count`, as on a full disk):
/// watch says it is not ready and why, and every record it committed is still there.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_archive_makes_watch_not_ready_and_loses_no_committed_record() {
    let td = SimTd::new();
    let agent = Daemon::sim(&td, &[]);
    let dir = tempfile::tempdir().unwrap();
    let pin = pin_mrtd(&dir.path().join("td.toml"), &td);
    let db = dir.path().join("a.db");
    let mut config = format!(
        "archive = \"{}\"\nlisten = \"127.0.0.1:0\"\nmax_archive_mib = 1\n",
        path_str(&db)
    );
    for i in 0..8 {
        config.push_str(&format!(
            "[[target]]\nname = \"t{i}\"\nurl = \"{}\"\npolicy = \"{}\"\ninsecure_root = \"{}\"\ninterval_secs = 1\n",
            agent.url(),
            path_str(&pin),
            td.root_str()
        ));
    }
    let config = write(&dir.path().join("watch.toml"), &config);
    let mut watch = support::spawn_watch(&config);
    let body = wait_not_ready(
        &watch.addr,
        Duration::from_secs(180),
        "the archive never filled",
    )
    .await;
    assert!(
        body.contains("could not be archived") && body.contains("max_archive_mib"),
        "{body}"
    );
    let text = http_get(&watch.addr, "/metrics").await.text();
    assert_eq!(metric(&text, "tdx_watch_archive_ok"), Some(0.0), "{text}");
    let committed = metric(&text, "tdx_watch_archive_head_seq").unwrap();
    assert!(committed >= 8.0, "{text}");
    watch.stop();
    let r = tdx_agent(&["evidence", "verify", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
    let r = tdx_agent(&["evidence", "export", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
    let last_seq = r
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_f64())
        .fold(0.0, f64::max);
    assert!(
        last_seq >= committed,
        "the archive ends at #{last_seq}, watch had committed #{committed}"
    );
}

/// `targets_dir`: files added, refused and removed while `watch` runs.
#[tokio::test(flavor = "multi_thread")]
async fn targets_dir_is_read_again_while_watch_runs() {
    let td = SimTd::new();
    let agent = Daemon::sim(&td, &[]);
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets");
    std::fs::create_dir_all(&targets).unwrap();
    pin_mrtd(&targets.join("pinned.policy"), &td);
    // Relative paths in the directory's files are the directory's.
    let file = |name: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\nurl = \"{}\"\npolicy = \"pinned.policy\"\ninsecure_root = \"{}\"\ninterval_secs = 1\n",
            agent.url(),
            td.root_str()
        )
    };
    write(&targets.join("a.toml"), &file("a"));
    let config = write(
        &dir.path().join("watch.toml"),
        &format!(
            "archive = \"{}\"\nlisten = \"127.0.0.1:0\"\ntargets_dir = \"{}\"\ntargets_reload_secs = 1\n",
            path_str(&dir.path().join("a.db")),
            path_str(&targets)
        ),
    );
    let mut watch = support::spawn_watch(&config);
    let result = |t: &str, n: &str| metric(t, &format!("tdx_watch_last_result{{target=\"{n}\"}}"));
    let count = |t: &str, n: &str| {
        metric(t, &format!("tdx_watch_appraisals_total{{target=\"{n}\"}}")).unwrap_or(0.0)
    };
    wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        result(t, "a") == Some(1.0)
    })
    .await;

    // A new file: its target is watched.
    write(&targets.join("b.toml"), &file("b"));
    wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        result(t, "b") == Some(1.0)
    })
    .await;

    // A file watch refuses: not ready, naming it, while the targets it had are still watched.
    write(
        &targets.join("c.toml"),
        &format!("{}surprise = 1\n", file("c")),
    );
    let body = wait_not_ready(
        &watch.addr,
        Duration::from_secs(60),
        "c.toml was not refused",
    )
    .await;
    assert!(
        body.contains("c.toml") && body.contains("surprise"),
        "{body}"
    );
    let before = http_get(&watch.addr, "/metrics").await.text();
    assert_eq!(
        metric(&before, "tdx_watch_targets_config_ok"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(result(&before, "c"), None, "{before}");
    let a_before = count(&before, "a");
    wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        count(t, "a") > a_before
    })
    .await;

    // A FIFO where a file should be would block the read forever: refused as not a regular
    // file, and watch goes on answering (a hung reload kept /readyz saying ready).
    std::fs::remove_file(targets.join("c.toml")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(targets.join("c.toml"))
        .status()
        .unwrap();
    assert!(made.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = wait_not_ready(&watch.addr, Duration::from_secs(60), "FIFO").await;
        if body.contains("c.toml") && body.contains("not a regular file") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the FIFO c.toml was not refused: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The bad file fixed away and `a` removed: ready again, `a` no longer watched or shown.
    std::fs::remove_file(targets.join("c.toml")).unwrap();
    std::fs::remove_file(targets.join("a.toml")).unwrap();
    let text = wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        result(t, "a").is_none() && metric(t, "tdx_watch_targets_config_ok") == Some(1.0)
    })
    .await;
    assert_eq!(http_get(&watch.addr, "/readyz").await.status, 200);
    let a_after = count(&text, "a");
    let b_after = count(&text, "b");
    wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        count(t, "b") >= b_after + 2.0
    })
    .await;
    let text = http_get(&watch.addr, "/metrics").await.text();
    assert_eq!(
        count(&text, "a"),
        a_after,
        "a removed target was appraised:\n{text}"
    );
    watch.stop();
}

/// A webhook receiver learns every change of a target's state: a change whose delivery failed
/// is sent again, and a target restarted (its policy changed in `targets_dir`) or a restarted
/// `watch` takes up the state of its last record, so a recovery after a restart is sent.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_changes_are_delivered_across_restarts_and_failed_deliveries() {
    let td = SimTd::new();
    let agent = Daemon::sim(&td, &[]);
    let dir = tempfile::tempdir().unwrap();
    // Every POST with the status it was answered with: the first four (every attempt at the
    // first event) are refused.
    type Posts = std::sync::Arc<std::sync::Mutex<Vec<(u16, String)>>>;
    let posts: Posts = Default::default();
    let hook_addr = {
        let posts = std::sync::Arc::clone(&posts);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let posts = std::sync::Arc::clone(&posts);
                async move {
                    let mut p = posts.lock().unwrap();
                    let status = if p.len() < 4 { 500 } else { 200 };
                    p.push((status, body));
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    };
    let delivered = |posts: &Posts| -> Vec<String> {
        posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| {
                let event: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(event["target"], "t", "{event}");
                event["state"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let wait_delivered = |n: usize| {
        let posts = std::sync::Arc::clone(&posts);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let states = delivered(&posts);
                if states.len() >= n {
                    return states;
                }
                assert!(
                    Instant::now() < deadline,
                    "{n} events never delivered: {:?}",
                    posts.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let secret = write(
        &dir.path().join("hook.secret"),
        "a webhook secret of 32 bytes....",
    );
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let targets = dir.path().join("targets");
    std::fs::create_dir_all(&targets).unwrap();
    // The policy is swapped in whole (renamed into place), so no read sees it half written.
    let policy = |pinned: bool| {
        let text = if pinned {
            mrtd_policy(td.measurements()["mrtd"].as_str().unwrap())
        } else {
            mrtd_policy(&"00".repeat(48))
        };
        let tmp = write(&targets.join(".t.policy.tmp"), &text);
        std::fs::rename(tmp, targets.join("t.policy")).unwrap();
    };
    policy(false);
    write(
        &targets.join("t.toml"),
        &format!(
            "[[target]]\nname = \"t\"\nurl = \"{}\"\npolicy = \"t.policy\"\ninsecure_root = \"{}\"\ninterval_secs = 1\non_failure = [\"alert\", \"webhook\"]\n",
            agent.url(),
            td.root_str()
        ),
    );
    let config = write(
        &dir.path().join("watch.toml"),
        &format!(
            "archive = \"{}\"\nlisten = \"127.0.0.1:0\"\ntargets_dir = \"{}\"\ntargets_reload_secs = 1\n[webhook]\nurl = \"http://{hook_addr}/hook\"\nsecret_file = \"{}\"\n",
            path_str(&dir.path().join("a.db")),
            path_str(&targets),
            path_str(&secret),
        ),
    );
    let mut watch = support::spawn_watch(&config);
    // Every attempt at "failing" was refused: a later appraisal, still failing, sends it again.
    assert_eq!(wait_delivered(1).await, ["failing"]);
    {
        let p = posts.lock().unwrap();
        assert!(p.len() >= 5, "{p:?}");
        // Sent again as the same event (the same body, so the same signature): it names the
        // appraisal that changed the state, so a receiver de-duplicating by record sees one.
        let seq = |body: &str| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["record"]["seq"].clone()
        };
        assert!(seq(&p[0].1).is_i64(), "{p:?}");
        assert_eq!(seq(&p[0].1), seq(&p[4].1), "{p:?}");
        assert_eq!(p[0].1, p[4].1);
    }
    // The policy fixed: the target restarts with it, and its first pass is a recovery.
    policy(true);
    assert_eq!(wait_delivered(2).await, ["failing", "recovered"]);
    policy(false);
    assert_eq!(wait_delivered(3).await, ["failing", "recovered", "failing"]);
    // watch restarted while the target failed, which passes by then: a recovery too.
    watch.stop();
    policy(true);
    let mut watch = support::spawn_watch(&config);
    assert_eq!(
        wait_delivered(4).await,
        ["failing", "recovered", "failing", "recovered"]
    );
    watch.stop();
}

/// Measurements that change while the policy refuses them at the handshake (a model update
/// the policy does not allow yet) are counted as a change.
#[tokio::test(flavor = "multi_thread")]
async fn a_measurement_change_refused_at_the_handshake_is_counted() {
    let td = SimTd::new();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--tee",
            "sim",
            "--sim-dir",
            td.dir_str(),
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        Daemon::start(&args, &[], &[])
    };
    let agent = serve(&[]);
    let dir = tempfile::tempdir().unwrap();
    let wrong = write(
        &dir.path().join("wrong.toml"),
        &mrtd_policy(&"00".repeat(48)),
    );
    let config = write(
        &dir.path().join("watch.toml"),
        &format!(
            "archive = \"{}\"\nlisten = \"127.0.0.1:0\"\n[[target]]\nname = \"refused\"\nurl = \"{}\"\npolicy = \"{}\"\ninsecure_root = \"{}\"\ninterval_secs = 1\n",
            path_str(&dir.path().join("a.db")),
            agent.url(),
            path_str(&wrong),
            td.root_str(),
        ),
    );
    let mut watch = support::spawn_watch(&config);
    let refused = "tdx_watch_failures_total{target=\"refused\",check=\"MRTD\"}";
    let changes = "tdx_watch_measurement_changes_total{target=\"refused\"}";
    let text = wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        metric(t, refused).unwrap_or(0.0) >= 2.0
    })
    .await;
    // At 0 from the start (so increase() sees the first change), and no change yet.
    assert_eq!(metric(&text, changes), Some(0.0), "{text}");
    // The TD reboots into a model, measured into RTMR3, at the same address.
    drop(agent);
    assert_eq!(
        tdx_agent(&["sim", "reset", "--sim-dir", td.dir_str()]).code,
        0
    );
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    write(&model.join("config.json"), "{\"layers\": 2}\n");
    let _agent = serve(&["--model-dir", path_str(&model)]);
    let before = metric(&text, refused).unwrap();
    let text = wait_metrics(&watch.addr, Duration::from_secs(60), |t| {
        metric(t, changes).unwrap_or(0.0) >= 1.0
    })
    .await;
    // Refused all along: the change was seen in refused appraisals.
    assert!(metric(&text, refused).unwrap() > before, "{text}");
    assert_eq!(
        metric(&text, "tdx_watch_last_result{target=\"refused\"}"),
        Some(0.0),
        "{text}"
    );
    watch.stop();
}
