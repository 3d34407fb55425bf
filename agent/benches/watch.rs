//! `tdx-agent watch` under load, against a baseline from the same run: one simulated agent
//! serving many target names, each appraised every `WATCH_INTERVAL_SECS` (default 10) for
//! `WATCH_SECS` (default 60); `WATCH_TARGETS` targets (default 500). Prints appraisals per
//! second against the rate a tight loop of the same appraisal reaches in-process (no
//! scheduling, no archive), whether every target kept its interval, the watcher's peak RSS,
//! and the archive's bytes per appraisal (target: under 20 KB).
//!
//! Needs the release binary: scripts/bench.sh builds it and sets TDX_AGENT_BIN.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench may fail loudly

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let bin = common::release_bin();
    let targets = env_num("WATCH_TARGETS", 500);
    let interval = env_num("WATCH_INTERVAL_SECS", 10);
    let secs = env_num("WATCH_SECS", 60);
    let tmp = tempfile::tempdir().unwrap();
    let sim = tmp.path().join("sim");
    let sim = sim.to_str().unwrap();
    let (_agent, addr) = common::serve_sim(&bin, sim, &[], &[]);
    let url = format!("https://{addr}");
    let policy = tmp.path().join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    let root = format!("{sim}/root.der");

    // Baseline: the same appraisal (handshake, evidence, challenge) in a tight loop, in process.
    let client = tdx_client::Client::new(
        tdx_core::verify::Verifier::with_insecure_root(std::fs::read(&root).unwrap()),
        tdx_core::verify::Policy::default(),
    )
    .unwrap();
    let target = tdx_client::Target::parse(&url).unwrap();
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < Duration::from_secs(10) {
        tdx_client::attest::attest_recorded(&client, &target)
            .await
            .unwrap();
        n += 1;
    }
    let baseline = f64::from(n) / started.elapsed().as_secs_f64();

    let db = tmp.path().join("archive.db");
    let mut config = format!(
        "archive = \"{}\"\nlisten = \"127.0.0.1:0\"\nconcurrency = 64\n",
        db.display()
    );
    for i in 0..targets {
        config.push_str(&format!(
            "[[target]]\nname = \"t{i}\"\nurl = \"{url}\"\npolicy = \"{}\"\ninsecure_root = \"{root}\"\ninterval_secs = {interval}\n",
            policy.display()
        ));
    }
    let config_path = tmp.path().join("watch.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.args(["watch", "--config", config_path.to_str().unwrap()]);
    let (watch, _watch_addr) = common::spawn_listening(cmd, "tdx-agent watch");
    let pid = watch.0.id();
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(watch);
    let elapsed = started.elapsed().as_secs_f64();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    let records: i64 = conn
        .query_row("SELECT COUNT(*) FROM appraisals", [], |r| r.get(0))
        .unwrap();
    let accepted: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM appraisals WHERE verdict = 'accepted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // The fewest appraisals any target got: with the first one within a tenth of an interval
    // and then one per interval (jitter a tenth either way), keeping up means at least this.
    let fewest: i64 = conn
        .query_row(
            "SELECT MIN(n) FROM (SELECT COUNT(*) AS n FROM appraisals GROUP BY target)",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    let expected = (secs as f64 / (interval as f64 * 1.1)).floor() as i64;
    drop(conn);
    let bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let rate = records as f64 / elapsed;
    println!(
        "watch: {targets} targets every {interval} s for {secs} s against one simulated agent"
    );
    println!("  baseline, one appraisal after another in process: {baseline:.1} /s");
    println!(
        "  watch: {records} appraisals ({accepted} accepted), {rate:.1} /s = {:.2} of the baseline (needed: {:.1} /s)",
        rate / baseline,
        targets as f64 / interval as f64
    );
    println!(
        "  every interval kept: {} (fewest appraisals of a target {fewest}, at least {expected} expected)",
        if fewest >= expected { "yes" } else { "NO" }
    );
    println!("  watch peak RSS: {:.1} MiB", peak as f64 / 1024.0);
    println!(
        "  archive: {bytes} bytes, {:.1} KB per appraisal (target < 20 KB: {})",
        bytes as f64 / records.max(1) as f64 / 1000.0,
        if (bytes as f64 / records.max(1) as f64) < 20_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
