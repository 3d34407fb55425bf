//! Model hashing throughput: `measure::model::manifest` vs the coreutils pipeline the docs give
//! (`find | sort | xargs sha256sum`, one sha256sum process) over the same tree, alternated so
//! machine noise hits both alike; both must print the same manifest.
//!
//! Both sides read from the page cache: the tree is written (and synced, so no writeback runs
//! during timing) just before, and nothing is dropped. This compares hashing and parallelism,
//! not disks. Shard size: TDX_AGENT_BENCH_MODEL_MB (default 256), four shards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tdx_core::measure::model::manifest;

const ROUNDS: usize = 3;
const SHARDS: usize = 4;
const SMALL_FILES: usize = 32;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Incompressible-looking bytes without a dependency: xorshift64.
fn fill(path: &Path, bytes: u64, seed: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut state = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

fn coreutils(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"cd "$1" && find -L . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0r sha256sum --"#)
        .arg("sh")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (sha256sum pipeline, ours) median wall times over `dir`, after checking they agree.
fn race(dir: &Path) -> (Duration, Duration, u64) {
    let (mut theirs, mut ours) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let text = coreutils(dir);
        theirs.push(t.elapsed());
        let t = Instant::now();
        let m = manifest(dir).unwrap();
        ours.push(t.elapsed());
        assert_eq!(m.text(), text, "manifest differs from sha256sum's");
        bytes = m.total_bytes;
    }
    (median(theirs), median(ours), bytes)
}

fn report(title: &str, (theirs, ours, bytes): (Duration, Duration, u64)) {
    let gbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    println!("{title}: {:.2} GB, median of {ROUNDS}:", bytes as f64 / 1e9);
    println!(
        "  sha256sum pipeline (1 process): {:>6.2} GB/s",
        gbs(theirs)
    );
    println!("  tdx-agent manifest():           {:>6.2} GB/s", gbs(ours));
    println!(
        "  speed ratio tdx-agent / sha256sum: {:.2} (target > 1)",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

fn main() {
    let mb: u64 = std::env::var("TDX_AGENT_BENCH_MODEL_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(256);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(model.join("tokenizer")).unwrap();
    for i in 0..SHARDS {
        let name = format!("model-{:05}-of-{SHARDS:05}.safetensors", i + 1);
        fill(&model.join(name), mb << 20, i as u64 + 1);
    }
    for i in 0..SMALL_FILES {
        let size = 1024 << (i % 7);
        fill(
            &model.join(format!("tokenizer/part{i:02}.json")),
            size,
            1000 + i as u64,
        );
    }
    // One shard alone: one core each, so this compares the SHA-256 code, not parallelism.
    let single = tmp.path().join("single");
    std::fs::create_dir(&single).unwrap();
    std::os::unix::fs::symlink(
        model.join(format!("model-00001-of-{SHARDS:05}.safetensors")),
        single.join("shard.safetensors"),
    )
    .unwrap();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("model hashing, page cache warm for both sides, {cores} cores available");
    report(
        &format!("{SHARDS} x {mb} MiB shards + {SMALL_FILES} small files"),
        race(&model),
    );
    report(&format!("one {mb} MiB file (one core each)"), race(&single));
}
