//! `tdx-agent watch` over simulated agents, end to end: every target appraised on its
//! interval, the evidence archived in a hash chain, the metrics per target; then the auditor
//! commands on the archive: intact, edited, truncated (docs/watch.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Daemon, Listening, SimTd, http_get, metric, path_str, tdx_agent};

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
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

#[tokio::test(flavor = "multi_thread")]
async fn watch_archives_every_appraisal_and_auditors_find_any_edit() {
    let good_td = SimTd::new();
    let other_td = SimTd::new();
    let good = Daemon::sim(&good_td, &[]);
    let other = Daemon::sim(&other_td, &[]);
    let dir = tempfile::tempdir().unwrap();
    let m = good_td.measurements();
    let pin = write(
        &dir.path().join("good.toml"),
        &format!(
            "[measurements]\nmrtd = [\"{}\"]\n",
            m["mrtd"].as_str().unwrap()
        ),
    );
    let wrong = write(
        &dir.path().join("wrong.toml"),
        &format!("[measurements]\nmrtd = [\"{}\"]\n", "00".repeat(48)),
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
    let mut watch = Listening::spawn(
        "watch",
        "tdx-agent watch listening on ",
        &["watch", "--config", path_str(&config)],
        &[],
        &[],
    );
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
    assert_eq!(http_get(&watch.addr, "/readyz").await.status, 200);
    watch.stop();

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

    // Re-appraised offline at their own times, every record with evidence agrees...
    let reverify = |db: &Path| {
        tdx_agent(&[
            "evidence",
            "reverify",
            path_str(db),
            "--insecure-root",
            good_td.root_str(),
        ])
    };
    let r = reverify(&db);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains(", 0 disagree"), "{r}");
    assert!(!r.stdout.contains(": 0 records re-appraised"), "{r}");
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

    // A truncated tail is found against the pinned head (and only so).
    let copy = dir.path().join("copy.db");
    let r = tdx_agent(&["evidence", "export", path_str(&db)]);
    assert_eq!(r.code, 0, "{r}");
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
