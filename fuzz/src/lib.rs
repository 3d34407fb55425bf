//! Fixtures the fuzz targets share: real vectors compiled in (so a target needs no files at
//! run time), the instants they are valid at, and a scratch file for the parsers that only
//! read from disk.
#![forbid(unsafe_code)]
// A fixture that does not load is a broken build of the harness, not a finding: panicking
// on it here is what makes the harness fail loudly instead of fuzzing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A file under the repository's tests/vectors/, compiled in.
#[macro_export]
macro_rules! vector {
    ($path:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/",
            $path
        ))
    };
}

/// A file under fuzz/fixtures/ (written by examples/gen_seeds.rs), compiled in.
#[macro_export]
macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/", $path))
    };
}

/// Real Intel collateral, UpToDate for the real quote `phala-dcap-qvl/tdx_quote`
/// (tests/vectors/README.md), so that quote's appraisal runs every check.
pub fn intel_collateral() -> &'static tdx_core::verify::PreparedCollateral {
    static C: OnceLock<tdx_core::verify::PreparedCollateral> = OnceLock::new();
    C.get_or_init(|| {
        let text =
            std::str::from_utf8(vector!("phala-dcap-qvl/tdx_quote_collateral.json")).unwrap();
        tdx_core::verify::Collateral::from_bundle_json(text, "vector")
            .unwrap()
            .prepare()
            .unwrap()
    })
}

/// An instant inside [`intel_collateral`]'s window, so appraisals get past the window check.
pub fn intel_now() -> i64 {
    intel_collateral().window().not_before() + 1
}

/// The simulated TD's collateral and root (examples/gen_seeds.rs), for the RA-TLS targets.
pub struct SimFixture {
    pub root_der: Vec<u8>,
    pub collateral: tdx_core::verify::Collateral,
    pub now: i64,
}

pub fn sim() -> &'static SimFixture {
    static S: OnceLock<SimFixture> = OnceLock::new();
    S.get_or_init(|| {
        let collateral = tdx_core::verify::Collateral::from_bundle_json(
            std::str::from_utf8(fixture!("sim_collateral.json")).unwrap(),
            "fixture",
        )
        .unwrap();
        let now = collateral.window().unwrap().not_before() + 1;
        SimFixture {
            root_der: fixture!("sim_root.der").to_vec(),
            collateral,
            now,
        }
    })
}

/// The GPU vector whose RIMs and chain verify (tests/vectors/nvidia/solpbc), and its instant.
pub const GPU_AT: i64 = 1_796_396_400; // 2026-12-04T15:00:00Z, as its expected-at file
pub const GPU_REPORT: &[u8] = vector!("nvidia/solpbc/hopper-595.71.05-96.00.88.00.11/report.bin");
pub const GPU_CHAIN_PEM: &[u8] =
    vector!("nvidia/solpbc/hopper-595.71.05-96.00.88.00.11/cert_chain.pem");

pub fn gpu_nonce() -> [u8; 32] {
    let text = std::str::from_utf8(vector!(
        "nvidia/solpbc/hopper-595.71.05-96.00.88.00.11/nonce.hex"
    ))
    .unwrap();
    let mut out = [0u8; 32];
    hex_decode(text.trim(), &mut out);
    out
}

fn hex_decode(text: &str, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
}

/// The RIMs of the GPU vector, as collateral.
pub fn gpu_collateral() -> &'static tdx_core::gpu::GpuCollateral {
    static C: OnceLock<tdx_core::gpu::GpuCollateral> = OnceLock::new();
    C.get_or_init(|| tdx_core::gpu::GpuCollateral {
        rims: vec![
            tdx_core::gpu::RimFile {
                id: Some("NV_GPU_DRIVER_GH100_595.71.05".into()),
                xml: vector!(
                    "nvidia/solpbc/hopper-595.71.05-96.00.88.00.11/NV_GPU_DRIVER_GH100_595.71.05.xml"
                )
                .to_vec(),
            },
            tdx_core::gpu::RimFile {
                id: Some("NV_GPU_VBIOS_1010_0210_886_9600880011".into()),
                xml: vector!(
                    "nvidia/solpbc/hopper-595.71.05-96.00.88.00.11/NV_GPU_VBIOS_1010_0210_886_9600880011.xml"
                )
                .to_vec(),
            },
        ],
        ocsp: Vec::new(),
    })
}

pub fn gpu_roots() -> &'static tdx_core::gpu::GpuRoots {
    static R: OnceLock<tdx_core::gpu::GpuRoots> = OnceLock::new();
    R.get_or_init(|| tdx_core::gpu::GpuRoots::nvidia().unwrap())
}

/// A policy that asks for every GPU check (one GPU, RIMs and OCSP on), so a fuzzed report
/// reaches all of them.
pub fn gpu_policy() -> tdx_core::gpu::GpuPolicy {
    tdx_core::gpu::GpuPolicy {
        count: 1,
        ..Default::default()
    }
}

/// A per-process scratch directory for the readers that take a path (audit log, RTMR3 log).
pub fn scratch_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let d = base.join(format!("tdx-agent-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Write `data` to `name` in [`scratch_dir`] and return its path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let p = scratch_dir().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Split `data` at the first `0xFF 0x00` separators into at most `n` parts: how the targets
/// that take several inputs (one HTTP answer per PCCS path, several audit files) carve one
/// fuzz input. Missing parts are empty.
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(2).position(|w| w == [0xFF, 0x00]) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => break,
        }
    }
    out.push(rest);
    while out.len() < n {
        out.push(&[]);
    }
    out
}
