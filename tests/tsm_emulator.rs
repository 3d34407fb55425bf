//! The production `--tee configfs` path against the FUSE configfs-tsm and measurement-register
//! emulator (tests/tsm-emulator, docs/tsm-emulator.md): quotes through the real provider,
//! the generation race, every kernel error, RTMR3 through sysfs, and `serve` attested end to
//! end.
//!
//! Needs the emulator binary next to `tdx-agent` (`cargo build -p tsm-emulator`;
//! scripts/test.sh builds it) and a usable /dev/fuse. Without FUSE the tests fail loudly,
//! in CI always; a local run may set TDX_AGENT_ALLOW_NO_FUSE=1 to let them pass without
//! running (they still say so on stderr).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

mod support;

// Crash consistency of RTMR3 measurements on the emulator, in a file of its own.
#[path = "tsm_emulator/crash.rs"]
mod crash;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Daemon, SimPccs, SimTd, admin_extend, bin, path_str, tdx_agent};
use tdx_core::measure::rtmr3_log::{LogLine, replay};
use tdx_tee::configfs::{ConfigfsPaths, ConfigfsTee};
use tdx_tee::{Rtmr, Tee, TeeError};

const HEADER_LEN: usize = 48;
const REPORTDATA_AT: usize = HEADER_LEN + 520;
const RTMR3_AT: usize = HEADER_LEN + 472;

fn emulator_bin() -> PathBuf {
    Path::new(bin())
        .parent()
        .expect("tdx-agent has a parent directory")
        .join("tsm-emulator")
}

/// Whether the environment says this is CI (`CI=true`, `CI=1`, ...).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Why FUSE cannot be used here, if it cannot.
fn fuse_unusable() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("cannot open /dev/fuse read-write: {e}"));
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        })
        .unwrap_or(false);
    let fusermount = Command::new("fusermount3")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root && !fusermount {
        return Some(
            "not root and no fusermount3 (apt-get install fuse3, or run scripts/setup.sh)".into(),
        );
    }
    None
}

/// `tsm-emulator MOUNT --sim-dir DIR` as a child process; stopped (and unmounted) on drop.
struct Emulator {
    child: Child,
    mount: PathBuf,
    stderr_path: PathBuf,
}

impl Emulator {
    /// None only where FUSE is unusable and a local run allowed that (never in CI).
    fn start(sim: &SimTd, extra: &[&str]) -> Option<Emulator> {
        if let Some(why) = fuse_unusable() {
            let msg = format!(
                "\n!!! tsm_emulator: FUSE IS UNUSABLE HERE: {why}.\n!!! The configfs-tsm path of \
                 the agent is NOT being tested.\n"
            );
            // Straight to stderr: the test harness captures eprintln! of passing tests.
            let _ = writeln!(std::io::stderr(), "{msg}");
            if in_ci() {
                panic!("{msg}CI must run these tests: install fuse3 and give the job /dev/fuse");
            }
            if std::env::var("TDX_AGENT_ALLOW_NO_FUSE").as_deref() == Ok("1") {
                let _ = writeln!(
                    std::io::stderr(),
                    "!!! TDX_AGENT_ALLOW_NO_FUSE=1: not running this test\n"
                );
                return None;
            }
            panic!(
                "{msg}Fix FUSE, or set TDX_AGENT_ALLOW_NO_FUSE=1 to run the rest of the suite \
                 locally without these tests"
            );
        }
        let exe = emulator_bin();
        assert!(
            exe.exists(),
            "{} is missing: build it first with `cargo build -p tsm-emulator` \
             (scripts/test.sh does)",
            exe.display()
        );
        let mount = sim.tmp.path().join("mnt");
        let stderr_path = sim.tmp.path().join("tsm-emulator.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("creating the stderr file");
        let mut child = Command::new(&exe)
            .arg(&mount)
            .args(["--sim-dir", sim.dir_str()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut emu = Emulator {
            child,
            mount,
            stderr_path,
        };
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        if line.trim() != "ready" {
            let status = emu.child.try_wait();
            panic!(
                "tsm-emulator did not get ready (status {status:?}, stdout {line:?})\n{}",
                emu.stderr()
            );
        }
        assert!(
            emu.mounted(),
            "ready, but {} is not mounted",
            emu.mount.display()
        );
        Some(emu)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn report(&self) -> PathBuf {
        self.mount.join("report")
    }

    fn measurements(&self) -> PathBuf {
        self.mount.join("measurements")
    }

    fn report_str(&self) -> String {
        path_str(&self.report()).to_owned()
    }

    fn measurements_str(&self) -> String {
        path_str(&self.measurements()).to_owned()
    }

    /// `--tee configfs --tsm-report-dir MOUNT/report --measurements-dir MOUNT/measurements`.
    fn tee_args(&self) -> Vec<String> {
        vec![
            "--tee".into(),
            "configfs".into(),
            "--tsm-report-dir".into(),
            self.report_str(),
            "--measurements-dir".into(),
            self.measurements_str(),
        ]
    }

    /// The production provider, in this process.
    fn tee(&self) -> ConfigfsTee {
        ConfigfsTee::new(ConfigfsPaths {
            report_dir: self.report(),
            measurements_dir: self.measurements(),
            ccel_data: self.mount.join("no-ccel"),
        })
    }

    /// Set a switch in MOUNT/.control.
    fn control(&self, name: &str, value: &str) {
        std::fs::write(self.mount.join(".control").join(name), value)
            .unwrap_or_else(|e| panic!("setting .control/{name} to {value}: {e}"));
    }

    fn stats(&self) -> HashMap<String, u64> {
        read_stats(&self.mount.join(".control/stats"))
    }

    /// The names in report/.
    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(self.report())
            .expect("listing report/")
            .map(|e| {
                e.expect("report/ entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn mounted(&self) -> bool {
        let mount = self
            .mount
            .canonicalize()
            .unwrap_or_else(|_| self.mount.clone());
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(path_str(&mount)))
    }

    fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(st.success(), "kill -TERM {}", self.child.id());
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting for tsm-emulator") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: a clean exit and nothing left mounted.
    fn stop(&mut self) {
        self.sigterm();
        let st = self.wait_exit(Duration::from_secs(20));
        assert!(
            st.is_some_and(|s| s.success()),
            "tsm-emulator did not exit cleanly after SIGTERM: {st:?}\n{}",
            self.stderr()
        );
        assert!(!self.mounted(), "{} still mounted", self.mount.display());
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.sigterm();
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if self.mounted() {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mount)
                .status();
        }
    }
}

/// MOUNT/.control/stats as a map.
fn read_stats(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .expect("reading .control/stats")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn rd(i: u32) -> [u8; 64] {
    let mut r = [0u8; 64];
    r[..4].copy_from_slice(&i.to_le_bytes());
    r[60..].copy_from_slice(b"tsm!");
    r
}

fn report_data_of(quote: &[u8]) -> &[u8] {
    &quote[REPORTDATA_AT..REPORTDATA_AT + 64]
}

fn quote_cli(emu: &Emulator, report_data: &[u8; 64], out: &Path) -> support::Run {
    let hex = hex::encode(report_data);
    let mut args = vec!["quote".to_string(), "--report-data".into(), hex];
    args.extend(emu.tee_args());
    args.extend(["--out".into(), path_str(out).to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tdx_agent(&args)
}

// ---------------------------------------------------------------------------------------------

/// The kernel ABI as the emulator reproduces it, poked with plain file operations.
#[test]
fn the_emulator_behaves_like_configfs_tsm_and_the_register_files() {
    let sim = SimTd::new();
    let Some(mut emu) = Emulator::start(&sim, &[]) else {
        return;
    };
    let entry = emu.report().join("raw");
    std::fs::create_dir(&entry).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&entry)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["generation", "inblob", "outblob", "provider"]);
    assert_eq!(
        std::fs::read_to_string(entry.join("provider")).unwrap(),
        "tdx_guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(entry.join("generation")).unwrap(),
        "0\n"
    );
    // configfs reports PAGE_SIZE, not the content's length.
    assert_eq!(
        std::fs::metadata(entry.join("outblob")).unwrap().len(),
        4096
    );

    // Never written: EINVAL.
    let err = std::fs::read(entry.join("outblob")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(22), "{err}");

    // More than 64 bytes fails at write() with EFBIG, not at close.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(entry.join("inblob"))
        .unwrap();
    let err = f.write(&[1u8; 65]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(27), "{err}");
    // Short: committed at close (generation moves), then EINVAL at outblob.
    f.write_all(&[1u8; 10]).unwrap();
    assert_eq!(
        std::fs::read_to_string(entry.join("generation")).unwrap(),
        "0\n"
    );
    drop(f);
    assert_eq!(
        std::fs::read_to_string(entry.join("generation")).unwrap(),
        "1\n"
    );
    let err = std::fs::read(entry.join("outblob")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(22), "{err}");

    // 64 bytes: a quote over them, cached until the next write, which bumps generation.
    std::fs::OpenOptions::new()
        .write(true)
        .open(entry.join("inblob"))
        .unwrap()
        .write_all(&rd(1))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(entry.join("generation")).unwrap(),
        "2\n"
    );
    let q1 = std::fs::read(entry.join("outblob")).unwrap();
    assert!(
        q1.len() > 4096,
        "a quote with its certification data: {}",
        q1.len()
    );
    assert_eq!(report_data_of(&q1), rd(1));
    assert_eq!(std::fs::read(entry.join("outblob")).unwrap(), q1, "cached");
    assert_eq!(emu.stats()["quotes_ok"], 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(entry.join("inblob"))
        .unwrap()
        .write_all(&rd(2))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(entry.join("generation")).unwrap(),
        "3\n"
    );
    assert_eq!(
        report_data_of(&std::fs::read(entry.join("outblob")).unwrap()),
        rd(2)
    );

    // Attributes cannot be created, removed or opened the wrong way; entries only in report/.
    for (path, errno) in [
        (entry.join("auxblob"), 13), // EACCES: no create
        (entry.join("outblob"), 13), // read-only
        (emu.measurements().join("mrtd:sha384"), 13),
    ] {
        let err = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(errno), "{}: {err}", path.display());
    }
    assert!(
        std::fs::read(entry.join("inblob")).is_err(),
        "inblob is write-only"
    );
    assert_eq!(
        std::fs::create_dir(entry.join("sub"))
            .unwrap_err()
            .raw_os_error(),
        Some(1)
    );
    assert_eq!(
        std::fs::create_dir(emu.measurements().join("x"))
            .unwrap_err()
            .raw_os_error(),
        Some(1)
    );
    assert_eq!(
        std::fs::create_dir(&entry).unwrap_err().raw_os_error(),
        Some(17)
    );

    // Registers: 48 raw bytes; RTMRs extend only with a 48-byte write at offset 0.
    let rtmr2 = emu.measurements().join("rtmr2:sha384");
    let before: [u8; 48] = std::fs::read(&rtmr2).unwrap().try_into().unwrap();
    for bad in [&[7u8; 47][..], &[7u8; 49][..]] {
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&rtmr2)
            .unwrap()
            .write(bad)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(22), "{} bytes: {err}", bad.len());
    }
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&rtmr2)
            .unwrap();
        let err = f.write_at(&[7u8; 48], 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(22), "offset 1: {err}");
    }
    assert_eq!(
        std::fs::read(&rtmr2).unwrap(),
        before,
        "refused writes change nothing"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&rtmr2)
        .unwrap()
        .write_all(&[7u8; 48])
        .unwrap();
    let after = std::fs::read(&rtmr2).unwrap();
    let mut chained = before.to_vec();
    chained.extend_from_slice(&[7u8; 48]);
    {
        use sha2::Digest as _;
        assert_eq!(after, sha2::Sha384::digest(&chained).to_vec());
    }

    std::fs::remove_dir(&entry).unwrap();
    assert!(emu.entries().is_empty());
    emu.stop();
}

/// `tdx-agent quote` and the library's ConfigfsTee make quotes that verify against the
/// simulated root and carry the registers the measurement files show.
#[test]
fn quotes_through_the_real_provider_verify() {
    let sim = SimTd::new();
    let Some(mut emu) = Emulator::start(&sim, &[]) else {
        return;
    };
    let pccs = SimPccs::start(sim.dir_str(), "127.0.0.1:0");
    let out = sim.tmp.path().join("quote.bin");
    let r = quote_cli(&emu, &rd(42), &out);
    assert_eq!(r.code, 0, "{r}");
    let quote = std::fs::read(&out).unwrap();
    assert_eq!(report_data_of(&quote), rd(42));
    let v = tdx_agent(&[
        "verify",
        path_str(&out),
        "--pccs",
        &pccs.url,
        "--insecure-root",
        sim.root_str(),
        "--json",
    ]);
    assert_eq!(v.code, 0, "{v}");
    let report: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    // The same quote is refused against Intel's production root.
    let prod = tdx_agent(&["verify", path_str(&out), "--pccs", &pccs.url]);
    assert_eq!(prod.code, 1, "{prod}");

    // The library provider: quotes, and registers read from sysfs.
    let tee = emu.tee();
    let q = tee.quote(&rd(43)).unwrap();
    assert_eq!(report_data_of(&q), rd(43));
    let m = tee.measurements().unwrap();
    assert_eq!(&q[RTMR3_AT..RTMR3_AT + 48], &m.rtmr[3]);
    let mut args = vec!["measurements".to_string(), "--json".into()];
    args.extend(emu.tee_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = tdx_agent(&args);
    assert_eq!(cli.code, 0, "{cli}");
    let cli: serde_json::Value = serde_json::from_str(&cli.stdout).unwrap();
    assert_eq!(cli["tee"], "configfs");
    assert_eq!(cli["mrtd"], hex::encode(m.mrtd));
    assert_eq!(cli["rtmr0"], hex::encode(m.rtmr[0]));
    assert_eq!(
        report["measurements"]["mrtd"],
        hex::encode(m.mrtd),
        "{report}"
    );
    // The sim's registers are the ones the emulator serves.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sim.dir.join("td-state.json")).unwrap())
            .unwrap();
    assert_eq!(state["mrtd"], hex::encode(m.mrtd));

    // An extension through the provider shows in the next quote.
    tee.extend_rtmr(Rtmr::R3, &[9; 48]).unwrap();
    let q = tee.quote(&rd(44)).unwrap();
    assert_eq!(&q[RTMR3_AT..RTMR3_AT + 48], &replay([&[9u8; 48]]));

    assert!(emu.entries().is_empty(), "{:?}", emu.entries());
    let stats = emu.stats();
    assert_eq!(stats["mkdirs"], stats["rmdirs"], "{stats:?}");
    emu.stop();
}

/// Another writer between the agent's inblob write and its generation read: caught by the
/// generation check and retried with a fresh entry, by the emulator's hook and by a second
/// process writing the agent's entry for real.
#[test]
fn a_racing_writer_is_detected_by_the_generation_check_and_retried() {
    let sim = SimTd::new();
    let Some(mut emu) = Emulator::start(&sim, &[]) else {
        return;
    };
    let tee = emu.tee();

    // The hook: one race, retried.
    emu.control("race_next", "1");
    let q = tee.quote(&rd(1)).unwrap();
    assert_eq!(report_data_of(&q), rd(1));
    let s = emu.stats();
    assert_eq!((s["races"], s["mkdirs"], s["rmdirs"]), (1, 2, 2), "{s:?}");

    // Three in a row: the provider gives up with its race error.
    emu.control("race_next", "3");
    match tee.quote(&rd(2)).unwrap_err() {
        e @ TeeError::GenerationRace { attempts: 3, .. } => {
            assert!(e.to_string().contains("another writer"), "{e}")
        }
        other => panic!("expected GenerationRace, got {other:?}"),
    }
    assert!(emu.entries().is_empty());

    // Two real processes: `tdx-agent quote`, and this test writing into its entry while the
    // (slow) quote is being made. The kernel lock queues our write behind the quote and
    // before the agent's second generation read.
    emu.control("delay_ms", "800");
    let before = emu.stats();
    let report = emu.report();
    let stats_path = emu.mount.join(".control/stats");
    let commits_before = before["commits"];
    let racer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Wait until the agent has made its entry and committed its REPORTDATA (after its
        // first generation read): its next step is the outblob read that makes the quote.
        let name = loop {
            assert!(Instant::now() < deadline, "the agent made no entry");
            if read_stats(&stats_path)["commits"] > commits_before {
                let found = std::fs::read_dir(&report)
                    .unwrap()
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n.starts_with("tdx-agent-"));
                if let Some(n) = found {
                    break n;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(report.join(&name).join("inblob"))
            .unwrap();
        f.write_all(&[0xAB; 64]).unwrap();
        drop(f);
        name
    });
    let out = sim.tmp.path().join("raced.bin");
    let r = quote_cli(&emu, &rd(3), &out);
    let raced_entry = racer.join().unwrap();
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stderr
            .contains("another writer changed the TSM report entry"),
        "{r}"
    );
    assert!(r.stderr.contains(&raced_entry), "{r}");
    assert_eq!(report_data_of(&std::fs::read(&out).unwrap()), rd(3));
    let after = emu.stats();
    assert_eq!(after["mkdirs"] - before["mkdirs"], 2, "{after:?}");
    assert_eq!(after["commits"] - before["commits"], 3, "{after:?}");
    assert_eq!(after["races"], before["races"], "no hook involved");
    assert!(emu.entries().is_empty(), "{:?}", emu.entries());
    emu.stop();
}

/// Each failure of the kernel is the provider's own clear error, and leaves no entry.
#[test]
fn kernel_errors_become_the_providers_clear_errors() {
    let sim = SimTd::new();
    let Some(mut emu) = Emulator::start(&sim, &["--quote-timeout-ms", "50"]) else {
        return;
    };
    let tee = emu.tee();
    type Check = fn(&TeeError) -> bool;
    // (switch to set, or "" for none; its value; the error expected, or "" for a quote).
    let cases: [(&str, &str, Check, &str); 9] = [
        (
            "provider",
            "0",
            |e| matches!(e, TeeError::NoProvider { .. }),
            "ENXIO",
        ),
        ("provider", "1", |_| false, ""),
        (
            "fail_next",
            "1",
            |e| matches!(e, TeeError::QuoteFailed { .. }),
            "EIO",
        ),
        ("", "", |_| false, ""),
        (
            "timeout_next",
            "1",
            |e| matches!(e, TeeError::QuoteTimeout { .. }),
            "ETIMEDOUT",
        ),
        // EBUSY only after a timed-out or interrupted request: the host still holds the buffer.
        ("", "", |e| matches!(e, TeeError::Busy { .. }), "EBUSY"),
        ("host_busy", "0", |_| false, ""),
        (
            "interrupt_next",
            "1",
            |e| matches!(e, TeeError::Interrupted { .. }),
            "EINTR",
        ),
        ("", "", |e| matches!(e, TeeError::Busy { .. }), "EBUSY"),
    ];
    for (i, (switch, value, is_expected, errno)) in cases.into_iter().enumerate() {
        if !switch.is_empty() {
            emu.control(switch, value);
        }
        let res = tee.quote(&rd(i as u32));
        if errno.is_empty() {
            let q = res.unwrap_or_else(|e| panic!("case {i}, after {switch}={value}: {e}"));
            assert_eq!(report_data_of(&q), rd(i as u32));
        } else {
            let err = res.expect_err(switch);
            assert!(is_expected(&err), "case {i}, {switch}={value}: got {err:?}");
            assert!(err.to_string().contains(errno), "{err}");
        }
        assert!(emu.entries().is_empty(), "case {i}: {:?}", emu.entries());
    }
    // Only the host lets go of the buffer; the switch cannot make it busy by fiat.
    std::fs::write(emu.mount.join(".control/host_busy"), "1").unwrap_err();
    // A timeout leaves the buffer with the host too.
    emu.control("host_busy", "0");
    emu.control("timeout_next", "1");
    assert!(matches!(
        tee.quote(&rd(101)).unwrap_err(),
        TeeError::QuoteTimeout { .. }
    ));
    assert!(matches!(
        tee.quote(&rd(102)).unwrap_err(),
        TeeError::Busy { .. }
    ));
    emu.control("host_busy", "0");
    tee.quote(&rd(103)).unwrap();

    // The same errors reach a user of the CLI as words, with exit status 2.
    let out = sim.tmp.path().join("q.bin");
    for (switch, words) in [
        ("provider", "no TSM provider is registered"),
        ("fail_next", "GetQuote call failed (EIO)"),
        ("timeout_next", "ETIMEDOUT"),
    ] {
        emu.control(switch, if switch == "provider" { "0" } else { "1" });
        let r = quote_cli(&emu, &rd(7), &out);
        assert_eq!(r.code, 2, "{r}");
        assert!(r.stderr.contains(words), "{switch}: {r}");
        if switch == "provider" {
            emu.control("provider", "1");
        }
    }
    let r = quote_cli(&emu, &rd(7), &out);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("EBUSY"), "{r}");
    emu.control("host_busy", "0");
    assert!(emu.entries().is_empty());
    emu.stop();
}

/// Quote requests from several processes queue behind the one kernel lock: the emulator
/// counts the quote generations in progress at once, which stays 1 however the three
/// requests overlap (the 300 ms delay makes them overlap, were nothing serialising them).
#[test]
fn concurrent_requests_are_serialised_by_the_kernel_lock() {
    let sim = SimTd::new();
    let Some(mut emu) = Emulator::start(&sim, &["--quote-delay-ms", "300"]) else {
        return;
    };
    let emu_ref = Arc::new((emu.report(), emu.measurements()));
    let threads: Vec<_> = (0..3u32)
        .map(|i| {
            let paths = Arc::clone(&emu_ref);
            std::thread::spawn(move || {
                // One provider per thread: nothing in this process serialises them.
                let tee = ConfigfsTee::new(ConfigfsPaths {
                    report_dir: paths.0.clone(),
                    measurements_dir: paths.1.clone(),
                    ccel_data: PathBuf::from("/nonexistent"),
                });
                let q = tee.quote(&rd(i)).unwrap();
                assert_eq!(report_data_of(&q), rd(i));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = emu.stats();
    assert_eq!(stats["quotes_ok"], 3, "{stats:?}");
    assert_eq!(stats["max_concurrent"], 1, "not serialised: {stats:?}");
    assert!(emu.entries().is_empty());
    emu.stop();
}

/// 1000 quotes through the provider, about one in twenty failing through every switch, and
/// not one entry left behind.
#[test]
fn a_thousand_quotes_some_failing_leave_no_entry() {
    let sim = SimTd::new();
    let Some(mut emu) = Emulator::start(&sim, &["--quote-timeout-ms", "5"]) else {
        return;
    };
    let tee = emu.tee();
    #[derive(Debug, PartialEq)]
    enum Want {
        Ok,
        Failed,
        Timeout,
        Interrupted,
        Busy,
        NoProvider,
    }
    let mut failures = 0;
    for i in 0..1000u32 {
        let want = match i % 100 {
            10 => {
                emu.control("fail_next", "1");
                Want::Failed
            }
            30 => {
                emu.control("timeout_next", "1");
                Want::Timeout
            }
            31 | 91 => Want::Busy,
            32 | 92 => {
                emu.control("host_busy", "0");
                Want::Ok
            }
            50 => {
                emu.control("provider", "0");
                Want::NoProvider
            }
            51 => {
                emu.control("provider", "1");
                Want::Ok
            }
            70 => {
                emu.control("race_next", "1");
                Want::Ok
            }
            90 => {
                emu.control("interrupt_next", "1");
                Want::Interrupted
            }
            _ => Want::Ok,
        };
        let got = match tee.quote(&rd(i)) {
            Ok(q) => {
                assert_eq!(report_data_of(&q), rd(i), "quote {i}");
                Want::Ok
            }
            Err(TeeError::QuoteFailed { .. }) => Want::Failed,
            Err(TeeError::QuoteTimeout { .. }) => Want::Timeout,
            Err(TeeError::Interrupted { .. }) => Want::Interrupted,
            Err(TeeError::Busy { .. }) => Want::Busy,
            Err(TeeError::NoProvider { .. }) => Want::NoProvider,
            Err(e) => panic!("quote {i}: unexpected {e:?}"),
        };
        assert_eq!(got, want, "quote {i}");
        if got != Want::Ok {
            failures += 1;
        }
    }
    assert_eq!(failures, 60);
    assert!(emu.entries().is_empty(), "left behind: {:?}", emu.entries());
    let s = emu.stats();
    assert_eq!(s["entries"], 0, "{s:?}");
    // 990 entries for the quotes that got past mkdir, 10 more for the raced attempts.
    assert_eq!((s["mkdirs"], s["rmdirs"]), (1000, 1000), "{s:?}");
    // 940 good quotes and the 10 made for the racing writer; 50 GetQuote failures.
    assert_eq!((s["quotes_ok"], s["quotes_failed"]), (950, 50), "{s:?}");
    emu.stop();
}

fn serve_config(sim: &SimTd, emu: &Emulator, pccs: &str) -> PathBuf {
    let t = sim.tmp.path();
    let text = format!(
        r#"listen = "127.0.0.1:0"
state_dir = "{state}"

[tee]
kind = "configfs"
tsm_report_dir = "{report}"
measurements_dir = "{measurements}"
ccel_data = "{ccel}"

[collateral]
pccs_url = "{pccs}"
cache_dir = "{cache}"
insecure_root = "{root}"

[audit]
dir = "{audit}"
"#,
        state = path_str(&t.join("run")),
        report = emu.report_str(),
        measurements = emu.measurements_str(),
        ccel = path_str(&t.join("no-ccel")),
        cache = path_str(&t.join("collateral-cache")),
        root = sim.root_str(),
        audit = path_str(&t.join("audit")),
    );
    let path = t.join("serve.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rtmr3_log_replay(path: &Path) -> (Vec<LogLine>, String) {
    let lines: Vec<LogLine> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let digests: Vec<[u8; 48]> = lines.iter().map(|l| l.event.digest().unwrap()).collect();
    (lines, hex::encode(replay(digests.iter())))
}

/// `serve --tee configfs` on the emulator: it extends its configuration event into RTMR3
/// through sysfs (the register replays its log), and `attest` verifies it end to end.
#[test]
fn serve_on_the_emulator_measures_into_rtmr3_and_attests_end_to_end() {
    let sim = SimTd::new();
    let Some(mut emu) = Emulator::start(&sim, &[]) else {
        return;
    };
    let pccs = SimPccs::start(sim.dir_str(), "127.0.0.1:0");
    let config = serve_config(&sim, &emu, &pccs.url);
    let mut daemon = Daemon::start(&["serve", "--config", path_str(&config)], &[], &[]);

    let measurements = || -> serde_json::Value {
        let mut args = vec!["measurements".to_string(), "--json".into()];
        args.extend(emu.tee_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = tdx_agent(&args);
        assert_eq!(r.code, 0, "{r}");
        serde_json::from_str(&r.stdout).unwrap()
    };
    let log = sim.tmp.path().join("run/rtmr3-events.jsonl");
    let (lines, replayed) = rtmr3_log_replay(&log);
    assert_eq!(lines.len(), 1, "the agent-config event only");
    assert_eq!(lines[0].event.kind, "agent-config");
    assert_ne!(replayed, hex::encode([0u8; 48]));
    assert_eq!(measurements()["rtmr3"], replayed.as_str());
    assert!(emu.stats()["extends"] >= 1);

    let attest = |nonce: bool| -> serde_json::Value {
        let url = daemon.url();
        let mut args = vec![
            "attest",
            url.as_str(),
            "--insecure-root",
            sim.root_str(),
            "--json",
        ];
        if nonce {
            args.push("--nonce");
        }
        let r = tdx_agent(&args);
        assert_eq!(r.code, 0, "attest: {r}\n--- serve\n{}", daemon.stderr());
        serde_json::from_str(&r.stdout).unwrap()
    };
    let v = attest(true);
    assert_eq!(v["measurements"]["rtmr3"], replayed.as_str(), "{v}");
    assert_eq!(v["verdict"], "accepted", "{v}");

    // A runtime event through the admin socket: extended through sysfs, logged, attested.
    let socket = sim.tmp.path().join("run/admin.sock");
    let r = admin_extend(
        path_str(&socket),
        "model",
        r#"{"digest":"ab12","name":"tiny"}"#,
    );
    assert_eq!(r.code, 0, "{r}");
    let (lines, replayed) = rtmr3_log_replay(&log);
    assert_eq!(lines.len(), 2);
    assert_eq!(measurements()["rtmr3"], replayed.as_str());
    assert_eq!(attest(false)["measurements"]["rtmr3"], replayed.as_str());
    assert_eq!(attest(true)["measurements"]["rtmr3"], replayed.as_str());

    daemon.stop();
    assert!(emu.entries().is_empty(), "{:?}", emu.entries());
    let s = emu.stats();
    assert!(s["quotes_ok"] >= 3, "{s:?}");
    assert_eq!(s["mkdirs"], s["rmdirs"], "{s:?}");
    emu.stop();
}

/// SIGINT unmounts as cleanly as SIGTERM, and an unmount from outside ends the emulator.
#[test]
fn the_emulator_unmounts_on_sigint_and_stops_when_unmounted() {
    let sim = SimTd::new();
    let Some(mut emu) = Emulator::start(&sim, &[]) else {
        return;
    };
    let st = Command::new("kill")
        .args(["-INT", &emu.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let st = emu.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", emu.stderr());
    assert!(!emu.mounted());
    drop(emu);

    let Some(mut emu) = Emulator::start(&sim, &[]) else {
        return;
    };
    let st = Command::new("fusermount3")
        .args(["-u"])
        .arg(&emu.mount)
        .status()
        .expect("fusermount3 (apt-get install fuse3)");
    assert!(st.success());
    let st = emu.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", emu.stderr());
    let mut stderr = String::new();
    std::fs::File::open(&emu.stderr_path)
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("unmounted"), "{stderr}");
}
