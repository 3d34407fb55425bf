//! Crash consistency of runtime measurements (docs/formats.md §11, "Crash recovery"): `serve`
//! on the emulator is killed with SIGKILL (by itself, through the test build's crash points,
//! `TDX_AGENT_INSECURE_CRASH_AT`) at each step of "log the event, fsync, extend RTMR3", then restarted in the same
//! boot (same mount, same registers, same state directory). Every restart must replay to the
//! live RTMR3, complete the one event that was logged but not extended, or refuse by name;
//! the emulator's count of extends shows that nothing is ever extended twice.

use super::*;
use std::os::unix::process::ExitStatusExt as _;
use tdx_tee::crash_point::{CrashPoint, ENV};

/// How long a debug `serve` may take to reach its crash point or to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// One simulated TD with its emulator, PCCS and a `serve` configuration that measures two
/// startup events (agent-config, vllm-cmdline).
struct Rig {
    sim: SimTd,
    emu: Emulator,
    _pccs: SimPccs,
    config: PathBuf,
}

impl Rig {
    fn new() -> Option<Rig> {
        let sim = SimTd::new();
        let emu = Emulator::start(&sim, &[])?;
        let pccs = SimPccs::start(sim.dir_str(), "127.0.0.1:0");
        let config = serve_config(&sim, &emu, &pccs.url);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("\n[model]\nvllm_cmdline = [\"vllm\", \"serve\", \"/models/tiny\"]\n");
        std::fs::write(&config, text).unwrap();
        Some(Rig {
            sim,
            emu,
            _pccs: pccs,
            config,
        })
    }

    fn log(&self) -> PathBuf {
        self.sim.tmp.path().join("run/rtmr3-events.jsonl")
    }

    fn socket(&self) -> PathBuf {
        self.sim.tmp.path().join("run/admin.sock")
    }

    fn audit(&self) -> String {
        std::fs::read_dir(self.sim.tmp.path().join("audit"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }

    /// RTMR3 as the register file shows it now.
    fn live_rtmr3(&self) -> String {
        hex::encode(std::fs::read(self.emu.measurements().join("rtmr3:sha384")).unwrap())
    }

    fn extends(&self) -> u64 {
        self.emu.stats()["extends"]
    }

    /// The event lines (and an unterminated tail, if any) of the log file.
    fn log_kinds(&self) -> (Vec<String>, bool) {
        let text = std::fs::read_to_string(self.log()).unwrap();
        let torn = !text.ends_with('\n');
        let kinds = text
            .lines()
            .skip(1)
            .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
            .map(|l| l.event.kind)
            .collect();
        (kinds, torn)
    }

    fn serve(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start(&["serve", "--config", path_str(&self.config)], env, &[])
    }

    /// `serve` to its exit, for a start that must not reach the listening line.
    fn serve_to_exit(&self, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
        let stderr_path = tempfile::NamedTempFile::new_in(self.sim.tmp.path())
            .unwrap()
            .into_temp_path();
        let mut cmd = support::command();
        cmd.args(["serve", "--config", path_str(&self.config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "serve kept running: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, std::fs::read_to_string(&stderr_path).unwrap())
    }

    /// The log replays to the live register, lists `kinds`, and the emulator extended
    /// exactly `extends` times since it was mounted.
    fn assert_consistent(&self, what: &str, kinds: &[&str], extends: u64) {
        let (lines, replayed) = rtmr3_log_replay(&self.log());
        let logged: Vec<&str> = lines.iter().map(|l| l.event.kind.as_str()).collect();
        assert_eq!(logged, kinds, "{what}: the log");
        assert_eq!(self.live_rtmr3(), replayed, "{what}: RTMR3 against the log");
        assert_eq!(self.extends(), extends, "{what}: extends so far");
    }
}

/// The crash must have happened where it was armed: killed by SIGKILL, having said so.
fn assert_crashed_at(
    point: CrashPoint,
    kind: &str,
    status: std::process::ExitStatus,
    stderr: &str,
) {
    assert_eq!(
        status.signal(),
        Some(9),
        "{}: {status:?}\n{stderr}",
        point.name()
    );
    let said = format!("crash point {} reached for a {kind:?} event", point.name());
    assert!(stderr.contains(&said), "{}: {stderr}", point.name());
}

/// Restart twice in the same boot: each start is consistent and the second extends nothing.
fn restart_twice(rig: &Rig, what: &str, kinds: &[&str], extends: u64) -> String {
    let mut daemon = rig.serve(&[]);
    rig.assert_consistent(&format!("{what}, first restart"), kinds, extends);
    let stderr = daemon.stderr();
    daemon.stop();
    let mut daemon = rig.serve(&[]);
    rig.assert_consistent(&format!("{what}, second restart"), kinds, extends);
    daemon.stop();
    stderr
}

/// A crash while measuring the second startup event (vllm-cmdline, after agent-config was
/// extended): every restart ends with both events logged and extended once each.
#[test]
fn a_crash_at_each_step_of_a_startup_measurement_recovers_on_restart() {
    for point in CrashPoint::ALL {
        let Some(mut rig) = Rig::new() else {
            return;
        };
        let what = point.name();
        let armed = format!("{}:vllm-cmdline", point.name());
        let (status, stderr) = rig.serve_to_exit(&[(ENV, &armed)]);
        assert_crashed_at(point, "vllm-cmdline", status, &stderr);

        // What the crash left.
        let (kinds, torn) = rig.log_kinds();
        let logged_second = matches!(
            point,
            CrashPoint::BetweenWriteAndFsync | CrashPoint::AfterFsync | CrashPoint::AfterExtend
        );
        let want: &[&str] = if logged_second {
            &["agent-config", "vllm-cmdline"]
        } else {
            &["agent-config"]
        };
        assert_eq!(kinds, want, "{what}: the log after the crash");
        assert_eq!(torn, point == CrashPoint::TornLogWrite, "{what}: torn tail");
        let extended_second = point == CrashPoint::AfterExtend;
        assert_eq!(rig.extends(), 1 + u64::from(extended_second), "{what}");

        let stderr = restart_twice(&rig, what, &["agent-config", "vllm-cmdline"], 2);
        let completed = matches!(
            point,
            CrashPoint::BetweenWriteAndFsync | CrashPoint::AfterFsync
        );
        assert_eq!(
            stderr.contains("logged but not extended"),
            completed,
            "{what}: completing the pending event\n{stderr}"
        );
        assert_eq!(
            stderr.contains("half-written line"),
            point == CrashPoint::TornLogWrite,
            "{what}: the torn line\n{stderr}"
        );
        if point == CrashPoint::TornLogWrite {
            assert!(
                rig.audit().contains("rtmr3_log_torn_line_dropped"),
                "{what}"
            );
        }
        rig.emu.stop();
    }
}

/// A crash during an admin-socket extend of a running agent: the restart keeps the event if
/// it was logged (extending it once if the crash came first), drops it if it was not.
#[test]
fn a_crash_at_each_step_of_an_admin_extend_recovers_on_restart() {
    for point in CrashPoint::ALL {
        let Some(mut rig) = Rig::new() else {
            return;
        };
        let what = point.name();
        let armed = format!("{}:crash-test", point.name());
        let mut daemon = rig.serve(&[(ENV, &armed)]);
        rig.assert_consistent(what, &["agent-config", "vllm-cmdline"], 2);
        let r = tdx_agent(&[
            "admin",
            "--socket",
            path_str(&rig.socket()),
            "extend",
            "--type",
            "crash-test",
            "--data",
            r#"{"n":1}"#,
        ]);
        assert_ne!(r.code, 0, "{what}: the agent died before answering: {r}");
        let status = daemon
            .wait_exit(EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("{what}: serve did not crash\n{}", daemon.stderr()));
        assert_crashed_at(point, "crash-test", status, &daemon.stderr());
        drop(daemon);

        let logged = matches!(
            point,
            CrashPoint::BetweenWriteAndFsync | CrashPoint::AfterFsync | CrashPoint::AfterExtend
        );
        let kinds: &[&str] = if logged {
            &["agent-config", "vllm-cmdline", "crash-test"]
        } else {
            &["agent-config", "vllm-cmdline"]
        };
        let (after_crash, torn) = rig.log_kinds();
        assert_eq!(after_crash, kinds, "{what}: the log after the crash");
        assert_eq!(torn, point == CrashPoint::TornLogWrite, "{what}: torn tail");
        assert_eq!(
            rig.extends(),
            2 + u64::from(point == CrashPoint::AfterExtend),
            "{what}"
        );

        let stderr = restart_twice(&rig, what, kinds, 2 + u64::from(logged));
        assert_eq!(
            stderr.contains("logged but not extended"),
            matches!(
                point,
                CrashPoint::BetweenWriteAndFsync | CrashPoint::AfterFsync
            ),
            "{what}\n{stderr}"
        );
        rig.emu.stop();
    }
}

/// What a restart cannot explain it refuses by name: RTMR3 moved by someone else after a
/// crash left an event logged but not extended. Nothing is extended, however often it is
/// started.
#[test]
fn a_restart_refuses_by_name_what_the_log_cannot_explain() {
    let Some(mut rig) = Rig::new() else {
        return;
    };
    let armed = format!("{}:vllm-cmdline", CrashPoint::AfterFsync.name());
    let (status, stderr) = rig.serve_to_exit(&[(ENV, &armed)]);
    assert_crashed_at(CrashPoint::AfterFsync, "vllm-cmdline", status, &stderr);
    assert_eq!(rig.extends(), 1);
    // Someone else extends RTMR3 through the register file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(rig.emu.measurements().join("rtmr3:sha384"))
        .unwrap()
        .write_all(&[0x5a; 48])
        .unwrap();
    assert_eq!(rig.extends(), 2);
    for attempt in 0..2 {
        let (status, stderr) = rig.serve_to_exit(&[]);
        assert!(
            status.code().is_some_and(|c| c != 0),
            "restart {attempt}: {status:?}\n{stderr}"
        );
        assert!(
            stderr.contains("RTMR3 is")
                && stderr.contains("rtmr3-events.jsonl")
                && stderr.contains("refusing to serve"),
            "restart {attempt}: {stderr}"
        );
        assert_eq!(rig.extends(), 2, "restart {attempt} extended");
    }
    assert!(rig.audit().contains("startup_measurement_refused"));
    rig.emu.stop();
}
