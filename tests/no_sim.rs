//! The build guest images ship (`--no-default-features`, docs/image.md) has no simulated TD:
//! every way of asking for it (`--tee sim`, `tee.kind = "sim"`, `tdx-agent sim`) is refused
//! with a message that says so, before anything is bound, while the rest of the binary works;
//! nor has it the test-only RTMR3 crash points.
//!
//! scripts/test.sh builds that binary and puts it beside the test build's `tdx-agent` as
//! `tdx-agent-nosim`; a missing one fails this test rather than skipping it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{Run, run, tdx_agent, vector_path};

/// What the binary says when the simulation was left out (tdx_tee::SIM_NOT_BUILT).
const NOT_BUILT: &str = "built without the simulated TD";

fn nosim_bin() -> PathBuf {
    let p = PathBuf::from(support::bin()).with_file_name("tdx-agent-nosim");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p tdx-agent --no-default-features` and copy \
         target/debug/tdx-agent there (scripts/test.sh does both)",
        p.display()
    );
    p
}

fn nosim(args: &[&str]) -> Run {
    run(Command::new(nosim_bin())
        .args(args)
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR")))
}

#[test]
fn the_image_build_refuses_the_simulated_td_every_way_it_is_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let sim_dir = tmp.path().join("sim");
    let d = sim_dir.to_str().unwrap();
    // A real simulation directory, made by the development build: the refusal is about the
    // binary, not a missing directory.
    assert_eq!(tdx_agent(&["sim", "pki", "--sim-dir", d]).code, 0);
    let rd = "00".repeat(64);

    let quote = nosim(&[
        "quote",
        "--tee",
        "sim",
        "--sim-dir",
        d,
        "--report-data",
        &rd,
    ]);
    assert_eq!(quote.code, 2, "{quote}");
    assert!(
        quote.stderr.contains("--tee sim") && quote.stderr.contains(NOT_BUILT),
        "{quote}"
    );
    assert!(quote.stdout.is_empty(), "{quote}");

    let meas = nosim(&["measurements", "--tee", "sim", "--sim-dir", d]);
    assert_eq!(meas.code, 2, "{meas}");
    assert!(meas.stderr.contains(NOT_BUILT), "{meas}");

    for sub in [
        vec!["sim", "pki", "--sim-dir", d],
        vec!["sim", "reset", "--sim-dir", d],
    ] {
        let r = nosim(&sub);
        assert_eq!(r.code, 2, "{sub:?}: {r}");
        assert!(r.stderr.contains(NOT_BUILT), "{sub:?}: {r}");
    }

    // serve refuses while validating its configuration, before binding the port (which a
    // listener already holds, so a bind attempt would fail with another message).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let serve = nosim(&["serve", "--tee", "sim", "--sim-dir", d, "--listen", &listen]);
    assert_eq!(serve.code, 2, "{serve}");
    assert!(
        serve.stderr.contains("tee.kind") && serve.stderr.contains(NOT_BUILT),
        "{serve}"
    );

    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[tee]\nkind = \"sim\"\nsim_dir = \"{d}\"\n"),
    )
    .unwrap();
    let check = nosim(&["config", "check", config.to_str().unwrap()]);
    assert_ne!(check.code, 0, "{check}");
    assert!(check.stderr.contains(NOT_BUILT), "{check}");
    // The development build accepts the same file: the refusal comes from the build.
    let dev = tdx_agent(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(dev.code, 0, "{dev}");
}

#[test]
fn the_image_build_still_verifies_real_quotes() {
    let quote = vector_path("phala-dcap-qvl/tdx_quote");
    let collateral = vector_path("phala-dcap-qvl/tdx_quote_collateral.json");
    let args = [
        "verify",
        &quote,
        "--collateral",
        &collateral,
        "--at",
        "1751328000",
    ];
    let ok = nosim(&args);
    let dev = tdx_agent(&args);
    assert_eq!(
        (ok.code, &ok.stdout),
        (dev.code, &dev.stdout),
        "{ok}\n{dev}"
    );
    assert_eq!(ok.code, 0, "{ok}");
}

/// The test-only crash points (docs/formats.md §11) are not in the image build: the variable
/// that arms them appears in the development binary and nowhere in the image's.
#[test]
fn the_image_build_has_no_crash_points() {
    let needle = b"TDX_AGENT_INSECURE_CRASH_AT";
    let contains = |path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    };
    assert!(
        contains(std::path::Path::new(support::bin())),
        "the development build must have the crash points (else this test proves nothing)"
    );
    assert!(!contains(&nosim_bin()), "the image build has crash points");
}
