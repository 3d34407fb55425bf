//! The booted-image test (issues 5 and 6, docs/image.md): `image/build.sh --test-image` bakes
//! this build's `tdx-agent` and `tsm-emulator` into a Debian guest image (the base, kernel and
//! initrd cached under ~/.cache/tdx-agent), qemu boots it with TCG (KVM only with
//! `TDX_AGENT_QEMU_KVM=1`), and the agent runs the production path, `[tee] kind = "configfs"`
//! at the kernel's default paths, under the shipped hardened `systemd/tdx-agent.service`
//! (byte for byte, no drop-in), against the configfs-tsm emulator mounted at
//! /sys/kernel/config/tsm/report and /sys/class/misc/tdx_guest/measurements. So the unit's
//! sandbox is shown to allow what production needs: creating report entries, reading quotes
//! and extending RTMR3 through sysfs. From the host:
//!
//! - `tdx-agent attest --nonce --json` through the forwarded agent port verifies it (RA-TLS
//!   and a fresh challenge, against the simulated root the build copied out), and the RTMR3 it
//!   attests is the one the guest reads from the emulator's register file, which the agent
//!   extended (the emulator counts the extends and quotes);
//! - `/readyz` answers 200 and the gRPC health probe (Python grpcio-health-checking) SERVING;
//! - a stand-in listener on 0.0.0.0 at vLLM's port answers inside the guest (the guest-side
//!   probe on the second serial port says so, and who listens) while the host's connection
//!   through the forwarded port gets nothing, and the nftables drop counter (read by the probe)
//!   goes up.
//!
//! Boot-to-ready time and the total are printed to stderr even when the test passes.
//!
//! Needs root, debootstrap, mkfs.ext4, qemu-system-x86_64 (image/install-deps.sh; .ci/run runs
//! it). Where they are missing the test fails; only `TDX_AGENT_SKIP_BOOTED_IMAGE=1` skips it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Run, bin, tdx_agent};

/// The emulator the image runs, built next to `tdx-agent` (`cargo build -p tsm-emulator`;
/// scripts/test.sh does).
fn emulator_bin() -> PathBuf {
    Path::new(bin())
        .parent()
        .expect("tdx-agent has a parent directory")
        .join("tsm-emulator")
}

const OPT_OUT: &str = "TDX_AGENT_SKIP_BOOTED_IMAGE";
const KVM: &str = "TDX_AGENT_QEMU_KVM";
const AGENT_PORT: u16 = 8443;
const VLLM_PORT: u16 = 8000;
/// What the guest-side probe reports mounted at /sys/kernel/config/tsm/report and
/// /sys/class/misc/tdx_guest/measurements: the emulator's file system (FUSE, fsname
/// `tsm-emulator`), its `report/` and `measurements/` directories bound there.
const TSM_MOUNTS: &str = "tsm-emulator[/report],tsm-emulator[/measurements]";
/// Boot to a ready agent under TCG takes about 40 s on 2 busy cores; leave room for a slow runner.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Progress lines that reach the log even when the test passes (libtest captures only the
/// print macros, not writes to the stderr handle).
fn say(msg: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "booted_image: {msg}");
}

fn hint() -> &'static str {
    "run image/install-deps.sh as root (CI: .ci/run does), or set TDX_AGENT_SKIP_BOOTED_IMAGE=1 \
     to skip this test locally"
}

fn preflight() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the booted-image test builds an image with debootstrap and chroot, which need root; {}",
        hint()
    );
    assert!(
        emulator_bin().is_file(),
        "{} is missing: build it first with `cargo build -p tsm-emulator` (scripts/test.sh does)",
        emulator_bin().display()
    );
    for tool in [
        "debootstrap",
        "mkfs.ext4",
        "qemu-system-x86_64",
        "curl",
        "sha256sum",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} not found: {}", hint());
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A booted guest; qemu is killed and reaped on drop (also when an assertion fails).
struct Guest {
    child: Child,
    console: PathBuf,
    probe: PathBuf,
    agent_port: u16,
    vllm_port: u16,
    started: Instant,
}

impl Guest {
    fn boot(dir: &Path) -> Guest {
        let agent_port = support::free_port();
        let mut vllm_port = support::free_port();
        while vllm_port == agent_port {
            vllm_port = support::free_port();
        }
        let console = dir.join("console.log");
        let probe = dir.join("probe.log");
        let cmdline = std::fs::read_to_string(dir.join("cmdline")).expect("the image's cmdline");
        let kvm = std::env::var(KVM).is_ok_and(|v| v == "1");
        let (accel, cpu) = if kvm { ("kvm", "host") } else { ("tcg", "max") };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine", "q35", "-accel", accel, "-cpu", cpu, "-smp", "2", "-m", "1024",
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initrd.img"))
        // panic=1 with -no-reboot: a guest that panics ends qemu instead of hanging.
        .args(["-append", &format!("{} panic=1", cmdline.trim())])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            dir.join("disk.raw").display()
        ))
        // User-mode networking: the host reaches the guest only through these forwards,
        // and inside the guest that traffic comes from 10.0.2.2, never from loopback.
        .args([
            "-netdev",
            &format!(
                "user,id=n0,hostfwd=tcp:127.0.0.1:{agent_port}-:{AGENT_PORT},\
                     hostfwd=tcp:127.0.0.1:{vllm_port}-:{VLLM_PORT}"
            ),
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        // ttyS0: the console (kernel, systemd, the journal); ttyS1: the probe only.
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", probe.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("qemu.out")).expect("qemu.out"))
        .stderr(std::fs::File::create(dir.join("qemu.err")).expect("qemu.err"));
        say(&format!(
            "booting with {accel} (KVM only with {KVM}=1); agent at 127.0.0.1:{agent_port}, \
             vLLM's port forwarded from 127.0.0.1:{vllm_port}"
        ));
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting qemu-system-x86_64: {e}; {}", hint()));
        Guest {
            child,
            console,
            probe,
            agent_port,
            vllm_port,
            started,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.agent_port)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.agent_port)
    }

    /// What to show when something fails: qemu's own errors, the console and the probe.
    fn diagnostics(&self) -> String {
        let dir = self.console.parent().expect("a directory");
        format!(
            "--- qemu stderr\n{}\n--- console (last 60 lines)\n{}\n--- probe (ttyS1)\n{}",
            tail(&dir.join("qemu.err"), 20),
            tail(&self.console, 60),
            tail(&self.probe, 20)
        )
    }

    fn check_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "qemu exited ({st}) before the test ended\n{}",
                self.diagnostics()
            );
        }
    }

    /// The probe's lines (complete ones only), `key=value` fields parsed.
    fn probe_lines(&self) -> Vec<Vec<(String, String)>> {
        let text = std::fs::read(&self.probe).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        complete
            .lines()
            .filter_map(|l| l.trim().strip_prefix("TDXPROBE "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// Wait until the latest probe line satisfies `pred`; returns it.
    fn wait_probe(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(last) = self.probe_lines().pop()
                && pred(&last)
            {
                return last;
            }
            self.check_running();
            if Instant::now() >= deadline {
                panic!(
                    "the guest-side probe did not report {what} within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a [(String, String)], key: &str) -> &'a str {
    line.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The emulator's (quotes_ok, extends) ("Q/E" in the probe line).
fn emulator_counts(line: &[(String, String)]) -> Option<(u64, u64)> {
    let (q, e) = field(line, "emu").split_once('/')?;
    Some((q.parse().ok()?, e.parse().ok()?))
}

/// The first 16 hex digits of a file's SHA-256, as the guest-side probe reports its unit.
fn sha256_prefix(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(16)
        .collect()
}

/// Packets counted by `vllm_drop` ("PACKETS/BYTES" in the probe line).
fn drops(line: &[(String, String)]) -> Option<u64> {
    field(line, "vllm_drop").split('/').next()?.parse().ok()
}

fn curl_readyz(addr: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg(format!("https://{addr}/readyz"))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

fn grpc_client(py: &str, addr: &str, mode: &str) -> Run {
    let out = Command::new(py)
        .arg(support::repo().join("tests/python/grpc_client.py"))
        .args(["--addr", addr, "--mode", mode, "--proto-dir"])
        .arg(support::repo().join("proto"))
        .stdin(Stdio::null())
        .output()
        .expect("running tests/python/grpc_client.py");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Connect through the forwarded vLLM port and ask for /health. slirp accepts the host side at
/// once and then tries the guest; Some(bytes) if anything came back within `wait`.
fn host_reaches_vllm_port(port: u16, wait: Duration) -> Option<Vec<u8>> {
    let addr = format!("127.0.0.1:{port}");
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().expect("address"), wait) else {
        return None;
    };
    let _ = s.set_read_timeout(Some(wait));
    let _ = s.write_all(b"GET /health HTTP/1.0\r\nHost: guest\r\n\r\n");
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[test]
fn booted_image_serves_attestation_and_keeps_vllm_port_closed() {
    if std::env::var(OPT_OUT).is_ok_and(|v| v == "1") {
        say(&format!("SKIPPED: {OPT_OUT}=1 (never set this in CI)"));
        return;
    }
    preflight();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();

    // 1. The test image (the cached base makes this seconds after the first run).
    let build_log = dir.join("build.log");
    let st = Command::new("bash")
        .arg(support::repo().join("image/build.sh"))
        .args([
            "--test-image",
            "--format",
            "raw",
            "--binary",
            bin(),
            "--tsm-emulator",
        ])
        .arg(emulator_bin())
        .arg("--out")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&build_log).expect("build.log"))
        .status()
        .expect("running image/build.sh");
    let log = std::fs::read_to_string(&build_log).unwrap_or_default();
    assert!(
        st.success(),
        "image/build.sh --test-image failed ({st}); {}\n--- its log (last 60 lines)\n{}",
        hint(),
        tail(&build_log, 60)
    );
    for line in log.lines().filter(|l| l.starts_with("image/build.sh:")) {
        say(line);
    }
    let built = t0.elapsed();
    say(&format!("image built in {:.1} s", built.as_secs_f64()));
    let root = dir.join("root.der");
    assert!(root.is_file(), "the build copied out no root.der");

    // 2. Boot, and wait for /readyz 200 from the host.
    let mut guest = Guest::boot(dir);
    let deadline = guest.started + READY_TIMEOUT;
    let readyz = loop {
        guest.check_running();
        if let Some((200, body)) = curl_readyz(&guest.addr()) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the agent in the guest was not ready within {READY_TIMEOUT:?} (last /readyz: {:?})\n{}",
            curl_readyz(&guest.addr()),
            guest.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let boot_to_ready = guest.started.elapsed();
    say(&format!(
        "boot-to-ready: {:.1} s (qemu start to /readyz 200 through the forwarded port)",
        boot_to_ready.as_secs_f64()
    ));
    say(&format!("/readyz: {}", readyz.trim()));

    // 3. The agent runs the shipped unit on the emulator at the kernel's paths, and has
    //    extended RTMR3 through sysfs from inside its sandbox.
    let unit_hash = sha256_prefix(&support::repo().join("systemd/tdx-agent.service"));
    let tee = guest.wait_probe(
        "the agent active on the emulator at the kernel's paths",
        Duration::from_secs(60),
        |l| {
            field(l, "agent") == "active"
                && field(l, "tsm") == TSM_MOUNTS
                && emulator_counts(l).is_some_and(|(_, extends)| extends >= 1)
                && field(l, "rtmr3").len() == 96
        },
    );
    assert_eq!(
        field(&tee, "unit"),
        unit_hash,
        "the image's tdx-agent.service is not systemd/tdx-agent.service: {tee:?}"
    );
    assert_eq!(
        field(&tee, "dropins"),
        "none",
        "tdx-agent.service has drop-ins: the shipped unit must run as it is: {tee:?}"
    );
    assert_eq!(
        field(&tee, "restarts"),
        "0",
        "tdx-agent.service restarted: {tee:?}\n{}",
        guest.diagnostics()
    );
    assert_ne!(
        field(&tee, "rtmr3"),
        "0".repeat(96),
        "RTMR3 was never extended"
    );
    say(&format!(
        "inside the guest: tdx-agent.service (sha256 {unit_hash}.., no drop-ins, 0 restarts) on \
         the emulator ({}), RTMR3 {}.., emulator quotes/extends {}",
        field(&tee, "tsm"),
        &field(&tee, "rtmr3")[..16],
        field(&tee, "emu")
    ));

    // 4. attest through the forwarded port: RA-TLS plus a fresh challenge; the attested RTMR3
    //    is the emulator's register.
    let r = tdx_agent(&[
        "attest",
        &guest.url(),
        "--insecure-root",
        root.to_str().expect("UTF-8 path"),
        "--nonce",
        "--json",
    ]);
    assert_eq!(
        r.code,
        0,
        "attest through the forwarded port: {r}\n{}",
        guest.diagnostics()
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("attest --json printed no JSON ({e}): {r}"));
    assert_eq!(v["verdict"], "accepted", "{v}");
    // The probe reports once a second or so: wait for it to see the challenge's quote.
    let now = guest.wait_probe(
        "the emulator's count including the challenge's quote",
        Duration::from_secs(30),
        |l| emulator_counts(l).is_some_and(|(quotes, _)| quotes >= 2),
    );
    assert_eq!(
        v["measurements"]["rtmr3"].as_str(),
        Some(field(&now, "rtmr3")),
        "the attested RTMR3 is not the emulator's register file as the guest reads it: {now:?}"
    );
    say(&format!(
        "attest --nonce: accepted; RTMR3 {}.. equals the emulator's rtmr3:sha384; emulator \
         quotes/extends {}",
        &field(&now, "rtmr3")[..16],
        field(&now, "emu")
    ));

    // 5. The third-party probes: /readyz over Python's ssl, gRPC health over grpcio.
    let py = support::python();
    let r = grpc_client(py, &guest.addr(), "readyz");
    assert_eq!(r.code, 0, "python /readyz: {r}\n{}", guest.diagnostics());
    let r = grpc_client(py, &guest.addr(), "health");
    assert_eq!(r.code, 0, "gRPC health: {r}\n{}", guest.diagnostics());
    assert!(r.stdout.contains("SERVING"), "gRPC health: {r}");
    say(&format!("gRPC health: {}", r.stdout.trim()));

    // 6. Inside the guest the stand-in answers, on loopback and on the guest's own address,
    //    and listens on 0.0.0.0 (as a misconfigured vLLM would).
    let inside = guest.wait_probe(
        "the stand-in answering on 0.0.0.0",
        Duration::from_secs(60),
        |l| {
            field(l, "standin_loopback") == "ok"
                && field(l, "standin_own_addr") == "ok"
                && field(l, "listen")
                    .split(',')
                    .any(|a| a == format!("0.0.0.0:{VLLM_PORT}"))
                && drops(l).is_some()
        },
    );
    let before = drops(&inside).expect("a counter value");
    say(&format!(
        "inside the guest: stand-in answers on 127.0.0.1 and {} (listening on {}); vllm_drop {} packets",
        field(&inside, "addr"),
        field(&inside, "listen"),
        before
    ));
    if let Some(active) = guest
        .probe_lines()
        .iter()
        .find(|l| field(l, "agent") == "active")
    {
        say(&format!(
            "guest uptime when the probe first saw tdx-agent.service active (READY=1): {} s",
            field(active, "uptime")
        ));
    }

    // 7. From the host, the same port gets nothing, and the drop counter goes up.
    let got = host_reaches_vllm_port(guest.vllm_port, Duration::from_secs(5));
    assert!(
        got.is_none(),
        "the host reached vLLM's port through the forward: {:?}\n{}",
        got.map(|b| String::from_utf8_lossy(&b).into_owned()),
        guest.diagnostics()
    );
    let after = guest.wait_probe(
        "the vllm_drop counter going up",
        Duration::from_secs(30),
        |l| drops(l).is_some_and(|n| n > before),
    );
    say(&format!(
        "host -> vLLM's port: no answer in 5 s; vllm_drop {} -> {} packets",
        before,
        drops(&after).unwrap_or(0)
    ));
    // The stand-in still answers inside: the drop was the firewall, not a dead listener.
    assert_eq!(field(&after, "standin_loopback"), "ok", "{after:?}");

    say(&format!(
        "total {:.1} s (build {:.1} s, boot-to-ready {:.1} s)",
        t0.elapsed().as_secs_f64(),
        built.as_secs_f64(),
        boot_to_ready.as_secs_f64()
    ));
}
