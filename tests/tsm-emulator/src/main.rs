//! tsm-emulator: a FUSE file system that behaves like the kernel's configfs-tsm report
//! interface and the TDX measurement-register sysfs files, backed by the simulated TD of
//! tdx-agent, so the production `--tee configfs` path runs for real without TDX hardware.
//!
//! ```text
//! tsm-emulator MOUNTDIR --sim-dir DIR [--quote-delay-ms N] [--quote-timeout-ms N] [--allow-other]
//! ```
//!
//! Mounts MOUNTDIR (with `report/`, `measurements/` and the switches in `.control/`), prints
//! `ready` on stdout once mounted, and unmounts on SIGTERM or SIGINT. Test support only: it
//! is not part of the shipped binary. See docs/tsm-emulator.md.
#![forbid(unsafe_code)]

mod fs;
mod tsm;

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tdx_sim::{SimDir, SimTd};

#[derive(Debug, Parser)]
#[command(
    name = "tsm-emulator",
    about = "Emulate configfs-tsm reports and TDX measurement registers on FUSE (test support)"
)]
struct Args {
    /// Where to mount (created if missing): MOUNTDIR/report, MOUNTDIR/measurements,
    /// MOUNTDIR/.control.
    mountdir: PathBuf,
    /// The simulated TD and PKI (`tdx-agent sim pki --sim-dir DIR`): quotes verify against
    /// DIR/root.der and the registers are DIR/td-state.json's.
    #[arg(long, value_name = "DIR")]
    sim_dir: PathBuf,
    /// How long each GetQuote takes (default: the simulation's quote_delay_ms; today's
    /// kernels take about 1000).
    #[arg(long, value_name = "N")]
    quote_delay_ms: Option<u64>,
    /// How long a GetQuote switched to time out blocks before ETIMEDOUT (the kernel: 30 s).
    #[arg(long, value_name = "N", default_value_t = 200)]
    quote_timeout_ms: u64,
    /// Let other users (not only the one that mounted) use the file system.
    #[arg(long)]
    allow_other: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsm-emulator: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let dir = SimDir::open(&args.sim_dir).map_err(|e| e.to_string())?;
    let td = SimTd::open(&dir).map_err(|e| e.to_string())?;
    let delay = match args.quote_delay_ms {
        Some(ms) => ms,
        None => dir.settings().map_err(|e| e.to_string())?.quote_delay_ms,
    };
    let kernel = tsm::Kernel::new(td, tsm::Switches::new(delay, args.quote_timeout_ms));

    std::fs::create_dir_all(&args.mountdir)
        .map_err(|e| format!("creating {}: {e}", args.mountdir.display()))?;
    // Our effective uid and gid, without libc: /proc/self belongs to them.
    let me = std::fs::metadata("/proc/self").map_err(|e| format!("/proc/self: {e}"))?;
    let filesystem = fs::TsmFs::new(kernel, me.uid(), me.gid())
        .map_err(|e| format!("starting the worker thread: {e}"))?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("tsm-emulator".into()),
        fuser::MountOption::Subtype("tsm".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoExec,
    ];
    if args.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    let session = fuser::Session::new(filesystem, &args.mountdir, &config).map_err(|e| {
        format!(
            "mounting {}: {e} (needs /dev/fuse, and fusermount3 from Debian's fuse3 when not root)",
            args.mountdir.display()
        )
    })?;
    let background = session.spawn().map_err(|e| format!("FUSE session: {e}"))?;
    // The handlers go in before `ready`: a test may signal as soon as it reads it, and a
    // process started from a background job inherits SIGINT ignored, so a SIGINT arriving
    // before the handler was lost and the emulator never stopped.
    let stop = Stop::install().map_err(|e| format!("signal handling: {e}"))?;
    println!("ready");
    let _ = std::io::stdout().flush();
    eprintln!(
        "tsm-emulator: mounted {} (sim dir {}, quote delay {delay} ms)",
        args.mountdir.display(),
        args.sim_dir.display()
    );

    let why = stop.wait(&background);
    eprintln!(
        "tsm-emulator: {why}: unmounting {}",
        args.mountdir.display()
    );
    if background.guard.is_finished() {
        // Unmounted from outside (fusermount3 -u): nothing left to do.
        return background
            .join()
            .map_err(|e| format!("FUSE session ended: {e}"));
    }
    match background.umount_and_join() {
        Ok(()) => Ok(()),
        Err(e) => {
            // Busy (a process still has a file open or its cwd inside): detach it lazily so
            // the mount point is free; exiting closes /dev/fuse and ends the connection.
            lazy_unmount(&args.mountdir);
            Err(format!(
                "unmounting {}: {e}; detached it lazily",
                args.mountdir.display()
            ))
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment [`Stop::install`] returns.
struct Stop {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (term, int) = rt.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })?;
        Ok(Stop { rt, term, int })
    }

    /// Block until SIGTERM or SIGINT arrives, or the session ends by itself.
    fn wait(self, background: &fuser::BackgroundSession) -> &'static str {
        let Stop {
            rt,
            mut term,
            mut int,
        } = self;
        rt.block_on(async {
            loop {
                tokio::select! {
                    _ = term.recv() => return "SIGTERM",
                    _ = int.recv() => return "SIGINT",
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if background.guard.is_finished() {
                            return "the file system was unmounted";
                        }
                    }
                }
            }
        })
    }
}

fn lazy_unmount(mountdir: &Path) {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountdir)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(mountdir)
            .status();
    }
}
