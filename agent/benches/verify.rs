//! Verification cost: `Verifier::appraise` vs calling dcap-qvl directly on the same inputs,
//! interleaved in one run so machine noise hits both alike. Prints times and their ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use tdx_core::verify::{Collateral, Expectations, Policy, Verifier};

const ROUNDS: usize = 30;
const PER_ROUND: usize = 50;

fn vector(path: &str) -> Vec<u8> {
    let full = format!("{}/../tests/vectors/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let quote = vector("phala-dcap-qvl/tdx_quote");
    let text = String::from_utf8(vector("phala-dcap-qvl/tdx_quote_collateral.json")).unwrap();
    let raw = Collateral::from_bundle_json(&text, "bench").unwrap();
    let v3: dcap_qvl::QuoteCollateralV3 = (&raw).into();
    let collateral = raw.prepare().unwrap();
    let now = 1_751_328_000;
    let verifier = Verifier::production();
    let policy = Policy::default();
    let expect = Expectations::default();
    let dcap = dcap_qvl::verify::QuoteVerifier::new_prod();

    // Warm-up, and a sanity check that both accept.
    assert!(
        verifier
            .appraise(&quote, &collateral, now, &policy, &expect)
            .accepted()
    );
    assert!(dcap.verify(&quote, &v3, now as u64).is_ok());

    let mut ours = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            black_box(dcap.verify(black_box(&quote), &v3, now as u64).ok());
        }
        direct.push(t.elapsed() / PER_ROUND as u32);
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            black_box(verifier.appraise(black_box(&quote), &collateral, now, &policy, &expect));
        }
        ours.push(t.elapsed() / PER_ROUND as u32);
    }
    let (ours, direct) = (median(ours), median(direct));
    println!("verify (warm collateral), median of {ROUNDS} rounds x {PER_ROUND}:");
    println!(
        "  dcap-qvl directly:        {:>9.1} us",
        direct.as_secs_f64() * 1e6
    );
    println!(
        "  tdx-agent appraise:       {:>9.1} us",
        ours.as_secs_f64() * 1e6
    );
    println!(
        "  ratio appraise / dcap-qvl: {:.3} (target <= 1.05)",
        ours.as_secs_f64() / direct.as_secs_f64()
    );

    // A simulated quote: register state read from disk, body built, two ECDSA signatures.
    let tmp = tempfile::tempdir().unwrap();
    let fx = tdx_sim::SimFixture::create(tmp.path(), Default::default()).unwrap();
    let mut times = Vec::new();
    for i in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            black_box(fx.quote(&[i as u8; 64]).unwrap());
        }
        times.push(t.elapsed() / PER_ROUND as u32);
    }
    println!(
        "simulated quote (quote_delay_ms = 0), median: {:.1} us",
        median(times).as_secs_f64() * 1e6
    );
}
