//! The shipped systemd units: `systemd-analyze verify` accepts them, the agent's unit passes
//! `systemd-analyze security --offline=true --threshold=20` (exposure 2.0 or less), and the
//! example configuration is one the agent accepts; with the GPU drop-in too.
//!
//! `verify` insists that every ExecStart binary exists, so the units are checked from a copy
//! whose ExecStart paths point at this build's binary (the agent) and at /bin/true (vLLM,
//! which is not installed here); nothing else is changed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::path::Path;
use std::process::Command;

use support::{bin, tdx_agent};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn units_with_local_binaries() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let agent = std::fs::read_to_string(repo().join("systemd/tdx-agent.service")).unwrap();
    assert!(agent.contains("ExecStart=/usr/bin/tdx-agent "));
    let agent = agent.replace(
        "ExecStart=/usr/bin/tdx-agent ",
        &format!("ExecStart={} ", bin()),
    );
    std::fs::write(dir.path().join("tdx-agent.service"), agent).unwrap();
    let vllm = std::fs::read_to_string(repo().join("systemd/vllm.service")).unwrap();
    assert!(vllm.contains("ExecStart=/opt/vllm/bin/vllm "));
    let vllm = vllm.replace("ExecStart=/opt/vllm/bin/vllm ", "ExecStart=/bin/true ");
    std::fs::write(dir.path().join("vllm.service"), vllm).unwrap();
    dir
}

fn systemd_analyze(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("systemd-analyze is needed for this test (Debian: apt-get install systemd; scripts/setup.sh does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn units_verify() {
    let dir = units_with_local_binaries();
    let (code, text) =
        systemd_analyze(dir.path(), &["verify", "tdx-agent.service", "vllm.service"]);
    assert_eq!(code, 0, "{text}");
    // verify exits 0 on some warnings; none is acceptable in our units.
    assert!(
        !text.contains("tdx-agent.service:") && !text.contains("vllm.service:"),
        "{text}"
    );
}

/// `systemd-analyze security --offline` of the agent's unit in `dir` (with any drop-ins beside
/// it): its exit status, its exposure figure and its text.
fn agent_exposure(dir: &Path) -> (i32, f64, String) {
    let (code, text) = systemd_analyze(
        dir,
        &[
            "security",
            "--offline=true",
            "--threshold=20",
            "tdx-agent.service",
        ],
    );
    let figure: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for tdx-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"));
    (code, figure, text)
}

#[test]
fn agent_unit_exposure_is_at_most_2() {
    let dir = units_with_local_binaries();
    let (code, figure, text) = agent_exposure(dir.path());
    eprintln!("tdx-agent.service exposure: {figure}");
    assert_eq!(code, 0, "over the threshold:\n{text}");
    assert!(figure <= 2.0, "exposure {figure}:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("PrivateDevices=") && l.contains("no access to hardware")),
        "{text}"
    );
}

/// The GPU drop-in (image/build.sh --nvidia-gpus) opens NVIDIA's character devices to NVML,
/// which the unit's private /dev hides, and nothing else: the device policy stays closed.
#[test]
fn nvidia_gpus_drop_in_opens_only_nvidia_devices() {
    let dir = units_with_local_binaries();
    let drop_ins = dir.path().join("tdx-agent.service.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::copy(
        repo().join("systemd/tdx-agent-nvidia-gpus.conf"),
        drop_ins.join("nvidia-gpus.conf"),
    )
    .unwrap();
    let (code, text) = systemd_analyze(dir.path(), &["verify", "tdx-agent.service"]);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("tdx-agent.service"), "{text}");
    assert!(!text.contains("nvidia-gpus.conf"), "{text}");

    let (code, figure, text) = agent_exposure(dir.path());
    eprintln!("tdx-agent.service exposure with the GPU drop-in: {figure}");
    assert_eq!(code, 0, "over the threshold:\n{text}");
    assert!(figure <= 2.0, "exposure {figure}:\n{text}");
    let acl = text
        .lines()
        .find(|l| l.contains("DeviceAllow="))
        .unwrap_or_else(|| panic!("no DeviceAllow line:\n{text}"));
    let allowed: Vec<&str> = acl
        .split("special devices: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no device list in {acl:?}"))
        .split_whitespace()
        .take_while(|w| w.contains(':'))
        .collect();
    let mut allowed = allowed.clone();
    allowed.sort_unstable();
    assert_eq!(
        allowed,
        [
            "/dev/nvidiactl:rw",
            "char-nvidia-frontend:rw",
            "char-nvidia:rw",
            "char-rtc:r"
        ],
        "{acl}"
    );
}

#[test]
fn example_config_is_accepted() {
    let path = repo().join("systemd/config.toml");
    let r = tdx_agent(&["config", "check", path.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r}");
}
