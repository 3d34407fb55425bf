//! GPUs attested with the TD, against the same agent without GPUs, in the same run:
//! - full RA-TLS handshakes against `serve --gpus 8` (8 simulated GPUs) vs `serve` without
//!   GPUs, interleaved rounds: the median of the per-round rate ratios (target >= 0.9);
//! - the first `tdx-agent attest --nonce` (a new process: cold caches) with a policy
//!   requiring 8 GPUs, which fetches and verifies their evidence, vs `attest --nonce` against
//!   the agent without GPUs: the median difference (target: under 50 ms more).
//!
//! Needs the release binary: run through scripts/bench.sh, which builds it and sets
//! TDX_AGENT_BIN (or build it and run `cargo bench --bench gpu_attest`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench may fail loudly

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, client_config_no_alpn, handshakes, median};

const GPUS: u32 = 8;
/// Odd, so the median is one round.
const ROUNDS: usize = 21;
const PER_ROUND: usize = 200;
const ATTESTS: usize = 11;

fn run(bin: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `serve` on a fresh simulated TD with `gpus` simulated GPUs (none for 0).
fn serve(bin: &str, sim: &str, gpus: u32) -> (Proc, std::net::SocketAddr) {
    let n = gpus.to_string();
    let args: &[&str] = if gpus > 0 { &["--gpus", &n] } else { &[] };
    common::serve_sim(bin, sim, args, args)
}

/// Wall time of one `attest --nonce` process.
fn attest(bin: &str, addr: std::net::SocketAddr, sim: &str, policy: &str, gpus: bool) -> Duration {
    let url = format!("https://{addr}");
    let root = format!("{sim}/root.der");
    let gpu_roots = format!("{sim}/gpu-roots.pem");
    let mut args = vec![
        "attest",
        url.as_str(),
        "--nonce",
        "--policy",
        policy,
        "--insecure-root",
        root.as_str(),
    ];
    if gpus {
        args.extend(["--insecure-gpu-roots", gpu_roots.as_str()]);
    }
    let t = Instant::now();
    let out = run(bin, &args);
    let took = t.elapsed();
    if gpus {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("[pass] gpu[{}] measurements", GPUS - 1)),
            "{text}"
        );
    }
    took
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let bin = common::release_bin();
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (with_sim, without_sim) = (dir("sim-gpus"), dir("sim-none"));
    let (with, with_addr) = serve(&bin, &with_sim, GPUS);
    let (without, without_addr) = serve(&bin, &without_sim, 0);
    // Wait for the GPUs to be attested (the first certificate already carries them; readiness
    // follows the same issue).
    let policy = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let gpus_policy = policy("gpus.toml", &format!("[gpu]\ncount = {GPUS}\n"));
    let none_policy = policy("none.toml", "");

    // 1. Full handshakes.
    let cfg = {
        let mut c = (*client_config_no_alpn()).clone();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        std::sync::Arc::new(c)
    };
    for addr in [with_addr, without_addr] {
        handshakes(addr, 100, cfg.clone()).await;
    }
    let mut ratios = Vec::new();
    let mut rates = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first, so drift on a shared machine hits both alike.
        let (a, b) = if round % 2 == 0 {
            let a = handshakes(with_addr, PER_ROUND, cfg.clone()).await;
            (a, handshakes(without_addr, PER_ROUND, cfg.clone()).await)
        } else {
            let b = handshakes(without_addr, PER_ROUND, cfg.clone()).await;
            (handshakes(with_addr, PER_ROUND, cfg.clone()).await, b)
        };
        let (ra, rb) = (
            PER_ROUND as f64 / a.as_secs_f64(),
            PER_ROUND as f64 / b.as_secs_f64(),
        );
        rates.0.push(ra);
        rates.1.push(rb);
        ratios.push(ra / rb);
    }
    println!(
        "full RA-TLS handshakes (TLS 1.3, no resumption, one client, {ROUNDS} rounds of {PER_ROUND}):"
    );
    println!(
        "  serve --gpus {GPUS}: {:>6.0} /s (median)",
        median(&rates.0)
    );
    println!("  serve, no GPUs: {:>6.0} /s (median)", median(&rates.1));
    let ratio = median(&ratios);
    println!(
        "  ratio with {GPUS} GPUs / without: {ratio:.3} (target >= 0.9: {})",
        if ratio >= 0.9 { "met" } else { "NOT met" }
    );

    // 2. The first attest --nonce, in a new process each time (nothing cached).
    let mut with_ms = Vec::new();
    let mut without_ms = Vec::new();
    for i in 0..ATTESTS {
        let run_with = || attest(&bin, with_addr, &with_sim, &gpus_policy, true);
        let run_without = || attest(&bin, without_addr, &without_sim, &none_policy, false);
        let (a, b) = if i % 2 == 0 {
            let a = run_with();
            (a, run_without())
        } else {
            let b = run_without();
            (run_with(), b)
        };
        with_ms.push(a.as_secs_f64() * 1000.0);
        without_ms.push(b.as_secs_f64() * 1000.0);
    }
    let extra: Vec<f64> = with_ms
        .iter()
        .zip(&without_ms)
        .map(|(a, b)| a - b)
        .collect();
    let extra = median(&extra);
    println!("first `attest --nonce` (new process each, {ATTESTS} interleaved runs):");
    println!(
        "  with {GPUS} GPUs (fetch and verify their evidence): {:>6.1} ms (median)",
        median(&with_ms)
    );
    println!("  without GPUs: {:>6.1} ms (median)", median(&without_ms));
    println!(
        "  difference: {extra:.1} ms (target < 50 ms: {})",
        if extra < 50.0 { "met" } else { "NOT met" }
    );
    drop((with, without));
}
