//! The simulated TD end to end through real processes: `sim pki`, `sim pccs`, `quote`,
//! `measurements`, `verify --pccs`, `sim reset`, and refusal to fall back to simulation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use support::tdx_agent;

#[test]
fn sample_quote_verifies_against_the_sim_root_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let r = tdx_agent(&["sim", "pki", "--sim-dir", d]);
    assert_eq!(r.code, 0, "{r}");
    let quote = format!("{d}/sample-quote.dat");
    let coll = format!("{d}/sample-collateral.json");
    let root = format!("{d}/root.der");

    let ok = tdx_agent(&[
        "verify",
        &quote,
        "--collateral",
        &coll,
        "--insecure-root",
        &root,
        "--json",
    ]);
    assert_eq!(ok.code, 0, "{ok}");
    let v: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(v["tcb_status"], "UpToDate");
    assert_eq!(v["root"]["kind"], "insecure");

    let prod = tdx_agent(&["verify", &quote, "--collateral", &coll]);
    assert_eq!(prod.code, 1, "{prod}");
    assert!(prod.stderr.contains("embedded root certificate"), "{prod}");

    // `sim pki` again shows the same PKI: the root does not change under clients' feet.
    let before = std::fs::read(&root).unwrap();
    assert_eq!(tdx_agent(&["sim", "pki", "--sim-dir", d]).code, 0);
    assert_eq!(std::fs::read(&root).unwrap(), before);
}

#[test]
fn quotes_verify_through_the_simulated_pccs_and_its_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("sim");
    let d = d.to_str().unwrap();
    let cache = tmp.path().join("cache");
    let cache = cache.to_str().unwrap();
    assert_eq!(tdx_agent(&["sim", "pki", "--sim-dir", d]).code, 0);
    let root = format!("{d}/root.der");

    // A fresh quote over our own REPORTDATA, from the simulated TD.
    let rd = "ab".repeat(64);
    let qfile = tmp.path().join("q.dat");
    let q = qfile.to_str().unwrap();
    let r = tdx_agent(&[
        "quote",
        "--report-data",
        &rd,
        "--tee",
        "sim",
        "--sim-dir",
        d,
        "--out",
        q,
    ]);
    assert_eq!(r.code, 0, "{r}");

    let pccs = support::SimPccs::start(d, "127.0.0.1:0");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "verify",
            q,
            "--pccs",
            pccs.url.as_str(),
            "--insecure-root",
            root.as_str(),
            "--collateral-cache",
            cache,
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        tdx_agent(&refs)
    };
    let ok = run(&["--expect-report-data", &rd]);
    assert_eq!(ok.code, 0, "{ok}");
    let wrong = run(&["--expect-report-data", &"cd".repeat(64)]);
    assert_eq!(wrong.code, 1, "{wrong}");
    assert!(wrong.stderr.contains("REPORTDATA binding"), "{wrong}");

    // Against the production root the same quote is refused.
    let prod = tdx_agent(&[
        "verify",
        q,
        "--pccs",
        &pccs.url,
        "--collateral-cache",
        cache,
    ]);
    assert_eq!(prod.code, 1, "{prod}");

    // The PCCS goes away: the cached collateral, still valid, carries on.
    let url = pccs.url.clone();
    drop(pccs);
    let cached = tdx_agent(&[
        "verify",
        q,
        "--pccs",
        &url,
        "--insecure-root",
        &root,
        "--collateral-cache",
        cache,
    ]);
    assert_eq!(cached.code, 0, "{cached}");
    // No cache and no PCCS: a network error, exit 2, saying what failed.
    let empty = tmp.path().join("empty-cache");
    let none = tdx_agent(&[
        "verify",
        q,
        "--pccs",
        &url,
        "--insecure-root",
        &root,
        "--collateral-cache",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(none.code, 2, "{none}");
    assert!(none.stderr.contains("PCCS"), "{none}");
}

#[test]
fn registers_persist_until_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    assert_eq!(
        tdx_agent(&["sim", "pki", "--sim-dir", d, "--mrtd", &"5a".repeat(48)]).code,
        0
    );
    let m = tdx_agent(&["measurements", "--tee", "sim", "--sim-dir", d, "--json"]);
    assert_eq!(m.code, 0, "{m}");
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    assert_eq!(v["tee"], "simulated");
    assert_eq!(v["mrtd"], "5a".repeat(48));
    assert_eq!(v["rtmr3"], "00".repeat(48));

    // Extend RTMR3 through the library, as the agent will, then reset = reboot.
    let dir = tdx_sim::SimDir::open(tmp.path()).unwrap();
    let td = tdx_sim::SimTd::open(&dir).unwrap();
    td.extend(tdx_tee::Rtmr::R3, &[7; 48]).unwrap();
    let m = tdx_agent(&["measurements", "--tee", "sim", "--sim-dir", d, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    assert_ne!(v["rtmr3"], "00".repeat(48));
    assert_eq!(tdx_agent(&["sim", "reset", "--sim-dir", d]).code, 0);
    let m = tdx_agent(&["measurements", "--tee", "sim", "--sim-dir", d, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    assert_eq!(v["rtmr3"], "00".repeat(48));
}

#[test]
fn no_silent_fallback_to_simulation() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-tsm");
    let r = tdx_agent(&[
        "quote",
        "--report-data",
        &"00".repeat(64),
        "--tsm-report-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("configfs-tsm"), "{r}");

    let r = tdx_agent(&["measurements", "--tee", "sim"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("--sim-dir"), "{r}");

    let r = tdx_agent(&[
        "measurements",
        "--tee",
        "sim",
        "--sim-dir",
        tmp.path().to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("sim pki"), "{r}");

    let r = tdx_agent(&[
        "quote",
        "--report-data",
        "abcd",
        "--tee",
        "sim",
        "--sim-dir",
        "x",
    ]);
    assert_eq!(r.code, 2, "{r}");
    // The length check itself, not clap's usage line (which names every flag).
    assert!(
        r.stderr.contains("--report-data: 2 bytes, expected 64"),
        "{r}"
    );
}
