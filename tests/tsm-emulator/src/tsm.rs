//! The emulated kernel: configfs-tsm report entries, the TDX GetQuote path with its failure
//! modes, and the switches that provoke them. No FUSE here: `fs.rs` maps file operations
//! onto these calls, and the unit tests below drive them directly.
//!
//! Modelled on drivers/virt/coco/tsm-report.c and drivers/virt/coco/tdx-guest/tdx-guest.c:
//! - `generation` shows the entry's write generation; every committed inblob write bumps it.
//! - Reading `outblob` returns the cached quote while the read generation equals the write
//!   generation, else makes a new one (under the one guest-wide lock) with the current
//!   REPORTDATA: EINVAL if inblob was never written or is not 64 bytes, EBUSY while the host
//!   still holds the buffer of an earlier timed-out or interrupted request, EINTR, ETIMEDOUT,
//!   EIO from the host; ENOTTY once the provider is gone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fuser::Errno;
use tdx_sim::SimTd;
use tdx_tee::{Rtmr, Sha384};

/// TSM_INBLOB_MAX: configfs refuses a write past it with EFBIG.
pub const INBLOB_MAX: usize = 64;
/// TDX_REPORTDATA_LEN: anything else in inblob makes GetQuote fail with EINVAL.
pub const REPORTDATA_LEN: usize = 64;
/// What `provider` shows for TDX.
pub const PROVIDER: &str = "tdx_guest";
/// The REPORTDATA the emulated "other writer" of `race_next` puts into an entry.
pub const FOREIGN_REPORTDATA: [u8; REPORTDATA_LEN] = [0xEE; REPORTDATA_LEN];

/// A poisoned lock here only means a panicking test thread; the state is still consistent
/// (every update is a plain assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The switches in MOUNTDIR/.control, one file each (see docs/tsm-emulator.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switches {
    /// 1: the tdx_guest provider is registered. 0: mkdir fails with ENXIO.
    pub provider: bool,
    /// The next N GetQuote calls fail with EIO (the host's QGS failed).
    pub fail_next: u64,
    /// The next N GetQuote calls time out (ETIMEDOUT) and leave the buffer with the host.
    pub timeout_next: u64,
    /// The next N GetQuote calls are interrupted (EINTR) and leave the buffer with the host.
    pub interrupt_next: u64,
    /// The host still holds the quote buffer (set only by a timed-out or interrupted
    /// GetQuote): every GetQuote fails with EBUSY until cleared.
    pub host_busy: bool,
    /// The next N quote generations are preceded by another writer's inblob write.
    pub race_next: u64,
    /// How long the host takes to answer a GetQuote.
    pub delay_ms: u64,
    /// How long a GetQuote that times out blocks before ETIMEDOUT (the kernel waits 30 s).
    pub timeout_ms: u64,
}

impl Switches {
    pub fn new(delay_ms: u64, timeout_ms: u64) -> Self {
        Switches {
            provider: true,
            fail_next: 0,
            timeout_next: 0,
            interrupt_next: 0,
            host_busy: false,
            race_next: 0,
            delay_ms,
            timeout_ms,
        }
    }
}

/// One control file: its name and whether it can be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Provider,
    FailNext,
    TimeoutNext,
    InterruptNext,
    HostBusy,
    RaceNext,
    DelayMs,
    TimeoutMs,
    Stats,
}

impl Control {
    pub const ALL: [Control; 9] = [
        Control::Provider,
        Control::FailNext,
        Control::TimeoutNext,
        Control::InterruptNext,
        Control::HostBusy,
        Control::RaceNext,
        Control::DelayMs,
        Control::TimeoutMs,
        Control::Stats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Control::Provider => "provider",
            Control::FailNext => "fail_next",
            Control::TimeoutNext => "timeout_next",
            Control::InterruptNext => "interrupt_next",
            Control::HostBusy => "host_busy",
            Control::RaceNext => "race_next",
            Control::DelayMs => "delay_ms",
            Control::TimeoutMs => "timeout_ms",
            Control::Stats => "stats",
        }
    }

    pub fn writable(self) -> bool {
        self != Control::Stats
    }
}

/// Counters shown in .control/stats.
#[derive(Debug, Default)]
pub struct Stats {
    pub mkdirs: AtomicU64,
    pub rmdirs: AtomicU64,
    pub commits: AtomicU64,
    pub quotes_ok: AtomicU64,
    pub quotes_failed: AtomicU64,
    pub races: AtomicU64,
    pub extends: AtomicU64,
    /// The most GetQuote calls ever in progress at once: 1 while the guest-wide lock holds,
    /// whatever the load (tests read this rather than timing quotes).
    pub max_concurrent: AtomicU64,
}

/// Counts one GetQuote in progress for as long as it lives, whichever way it ends.
struct InProgress<'a> {
    now: &'a AtomicU64,
}

impl<'a> InProgress<'a> {
    fn enter(now: &'a AtomicU64, max: &AtomicU64) -> Self {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(n, Ordering::SeqCst);
        InProgress { now }
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One report entry (`report/NAME`).
#[derive(Debug)]
pub struct Entry {
    pub id: u64,
    pub name: String,
    state: Mutex<EntryState>,
}

#[derive(Debug, Default)]
struct EntryState {
    /// None: never written (GetQuote refuses with EINVAL).
    inblob: Option<Vec<u8>>,
    write_generation: u64,
    read_generation: u64,
    outblob: Option<Arc<Vec<u8>>>,
}

/// The emulated guest kernel.
pub struct Kernel {
    td: SimTd,
    switches: Mutex<Switches>,
    pub stats: Stats,
    /// Live entries by name (configfs keeps them in creation order; readdir here is by name).
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    next_id: AtomicU64,
    /// tsm_rwsem plus the TDX driver's quote_lock: one quote at a time, guest-wide. The FUSE
    /// layer also funnels every report operation through one FIFO worker, so waiters are
    /// served in arrival order as with the kernel's rwsem.
    tsm_lock: Mutex<()>,
    /// GetQuote calls in progress now (for `Stats::max_concurrent`).
    quoting: AtomicU64,
}

impl Kernel {
    pub fn new(td: SimTd, switches: Switches) -> Self {
        Kernel {
            td,
            switches: Mutex::new(switches),
            stats: Stats::default(),
            entries: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            tsm_lock: Mutex::new(()),
            quoting: AtomicU64::new(0),
        }
    }

    // --- report/ namespace ----------------------------------------------------------------

    /// `mkdir report/NAME`.
    pub fn mkdir(&self, name: &str) -> Result<Arc<Entry>, Errno> {
        if !lock(&self.switches).provider {
            return Err(Errno::ENXIO);
        }
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        let mut entries = lock(&self.entries);
        if entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let entry = Arc::new(Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            state: Mutex::new(EntryState::default()),
        });
        entries.insert(name.to_owned(), Arc::clone(&entry));
        self.stats.mkdirs.fetch_add(1, Ordering::Relaxed);
        Ok(entry)
    }

    /// `rmdir report/NAME`: configfs removes an entry with its attribute files in it.
    pub fn rmdir(&self, name: &str) -> Result<(), Errno> {
        match lock(&self.entries).remove(name) {
            Some(_) => {
                self.stats.rmdirs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            None => Err(Errno::ENOENT),
        }
    }

    pub fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        lock(&self.entries).get(name).cloned()
    }

    pub fn entry_by_id(&self, id: u64) -> Option<Arc<Entry>> {
        lock(&self.entries).values().find(|e| e.id == id).cloned()
    }

    pub fn entries(&self) -> Vec<Arc<Entry>> {
        lock(&self.entries).values().cloned().collect()
    }

    // --- entry attributes ------------------------------------------------------------------

    /// `cat generation`.
    pub fn generation(&self, entry: &Entry) -> String {
        let _tsm = lock(&self.tsm_lock);
        format!("{}\n", lock(&entry.state).write_generation)
    }

    /// `cat provider`.
    pub fn provider(&self) -> Result<String, Errno> {
        let _tsm = lock(&self.tsm_lock);
        if lock(&self.switches).provider {
            Ok(format!("{PROVIDER}\n"))
        } else {
            Err(Errno::ENXIO)
        }
    }

    /// The inblob write configfs makes when the writer closes the file. Its errors are lost
    /// (close() cannot report them), so there are none to return.
    pub fn commit_inblob(&self, entry: &Entry, data: Vec<u8>) {
        let _tsm = lock(&self.tsm_lock);
        let mut st = lock(&entry.state);
        st.write_generation = st.write_generation.wrapping_add(1);
        st.inblob = Some(data);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// `cat outblob`: the cached quote, or a new one for the current REPORTDATA.
    pub fn outblob(&self, entry: &Entry) -> Result<Arc<Vec<u8>>, Errno> {
        let _tsm = lock(&self.tsm_lock);
        let mut st = lock(&entry.state);
        if st.inblob.is_none() {
            return Err(Errno::EINVAL);
        }
        if let Some(q) = &st.outblob
            && st.read_generation == st.write_generation
        {
            return Ok(Arc::clone(q));
        }
        if !lock(&self.switches).provider {
            return Err(Errno::ENOTTY);
        }
        if take(&mut lock(&self.switches).race_next) {
            // Another process wrote this entry's inblob after our writer did.
            st.inblob = Some(FOREIGN_REPORTDATA.to_vec());
            st.write_generation = st.write_generation.wrapping_add(1);
            self.stats.races.fetch_add(1, Ordering::Relaxed);
        }
        let inblob = st.inblob.clone().unwrap_or_default();
        let quoting = InProgress::enter(&self.quoting, &self.stats.max_concurrent);
        let made = self.get_quote(&inblob);
        drop(quoting);
        match made {
            Ok(quote) => {
                let quote = Arc::new(quote);
                st.outblob = Some(Arc::clone(&quote));
                st.read_generation = st.write_generation;
                self.stats.quotes_ok.fetch_add(1, Ordering::Relaxed);
                Ok(quote)
            }
            Err(e) => {
                self.stats.quotes_failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// tdx_report_new(): the TDVMCALL GetQuote and the wait for the host.
    fn get_quote(&self, inblob: &[u8]) -> Result<Vec<u8>, Errno> {
        let report_data: [u8; REPORTDATA_LEN] = inblob.try_into().map_err(|_| Errno::EINVAL)?;
        let mut sw = lock(&self.switches);
        if sw.host_busy {
            return Err(Errno::EBUSY);
        }
        if take(&mut sw.interrupt_next) {
            sw.host_busy = true;
            return Err(Errno::EINTR);
        }
        if take(&mut sw.timeout_next) {
            sw.host_busy = true;
            let wait = sw.timeout_ms;
            drop(sw);
            sleep_ms(wait);
            return Err(Errno::ETIMEDOUT);
        }
        let fail = take(&mut sw.fail_next);
        let delay = sw.delay_ms;
        drop(sw);
        sleep_ms(delay);
        if fail {
            return Err(Errno::EIO);
        }
        self.td
            .quote_builder(&report_data)
            .and_then(|b| b.build())
            .map_err(|e| {
                eprintln!("tsm-emulator: the simulated TD cannot make a quote: {e}");
                Errno::EIO
            })
    }

    // --- measurements/ -----------------------------------------------------------------------

    /// The register behind a measurements/ file, read from the simulated TD's live state.
    pub fn register(&self, reg: Register) -> Result<Sha384, Errno> {
        let m = self
            .td
            .state()
            .map_err(|e| {
                eprintln!("tsm-emulator: cannot read the simulated TD's registers: {e}");
                Errno::EIO
            })?
            .measurements();
        Ok(match reg {
            Register::Mrtd => m.mrtd,
            Register::Rtmr(r) => m.rtmr[r.index()],
            Register::MrConfigId => m.mrconfigid,
            Register::MrOwner => m.mrowner,
            Register::MrOwnerConfig => m.mrownerconfig,
        })
    }

    /// A write to `rtmrN:sha384`: exactly 48 bytes at offset 0 extend, anything else EINVAL.
    pub fn extend(&self, rtmr: Rtmr, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let digest: Sha384 = match (offset, data.try_into()) {
            (0, Ok(d)) => d,
            _ => return Err(Errno::EINVAL),
        };
        self.td.extend(rtmr, &digest).map_err(|e| {
            eprintln!("tsm-emulator: cannot extend {rtmr}: {e}");
            Errno::EIO
        })?;
        self.stats.extends.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    // --- .control/ ---------------------------------------------------------------------------

    pub fn control_text(&self, c: Control) -> String {
        let sw = lock(&self.switches);
        let flag = |b: bool| if b { 1 } else { 0 };
        match c {
            Control::Provider => format!("{}\n", flag(sw.provider)),
            Control::FailNext => format!("{}\n", sw.fail_next),
            Control::TimeoutNext => format!("{}\n", sw.timeout_next),
            Control::InterruptNext => format!("{}\n", sw.interrupt_next),
            Control::HostBusy => format!("{}\n", flag(sw.host_busy)),
            Control::RaceNext => format!("{}\n", sw.race_next),
            Control::DelayMs => format!("{}\n", sw.delay_ms),
            Control::TimeoutMs => format!("{}\n", sw.timeout_ms),
            Control::Stats => {
                drop(sw);
                self.stats_text()
            }
        }
    }

    /// A write to a control file: one decimal number (a trailing newline is fine).
    pub fn set_control(&self, c: Control, data: &[u8]) -> Result<(), Errno> {
        let text = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?;
        let n: u64 = text.trim().parse().map_err(|_| Errno::EINVAL)?;
        let flag = || match n {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Errno::EINVAL),
        };
        let mut sw = lock(&self.switches);
        match c {
            Control::Provider => sw.provider = flag()?,
            Control::FailNext => sw.fail_next = n,
            Control::TimeoutNext => sw.timeout_next = n,
            Control::InterruptNext => sw.interrupt_next = n,
            // Only a timed-out or interrupted request hands the buffer to the host; the
            // switch can only give it back.
            Control::HostBusy => {
                if flag()? {
                    return Err(Errno::EINVAL);
                }
                sw.host_busy = false;
            }
            Control::RaceNext => sw.race_next = n,
            Control::DelayMs => sw.delay_ms = n,
            Control::TimeoutMs => sw.timeout_ms = n,
            Control::Stats => return Err(Errno::EACCES),
        }
        Ok(())
    }

    pub fn stats_text(&self) -> String {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "entries {}\nmkdirs {}\nrmdirs {}\ncommits {}\nquotes_ok {}\nquotes_failed {}\nraces {}\nextends {}\nmax_concurrent {}\n",
            lock(&self.entries).len(),
            get(&s.mkdirs),
            get(&s.rmdirs),
            get(&s.commits),
            get(&s.quotes_ok),
            get(&s.quotes_failed),
            get(&s.races),
            get(&s.extends),
            get(&s.max_concurrent),
        )
    }
}

/// A register file under measurements/.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    Mrtd,
    Rtmr(Rtmr),
    MrConfigId,
    MrOwner,
    MrOwnerConfig,
}

impl Register {
    pub const ALL: [Register; 8] = [
        Register::Mrtd,
        Register::Rtmr(Rtmr::R0),
        Register::Rtmr(Rtmr::R1),
        Register::Rtmr(Rtmr::R2),
        Register::Rtmr(Rtmr::R3),
        Register::MrConfigId,
        Register::MrOwner,
        Register::MrOwnerConfig,
    ];

    /// The file name the kernel (Linux 6.16+) gives it.
    pub fn file_name(self) -> &'static str {
        match self {
            Register::Mrtd => "mrtd:sha384",
            Register::Rtmr(Rtmr::R0) => "rtmr0:sha384",
            Register::Rtmr(Rtmr::R1) => "rtmr1:sha384",
            Register::Rtmr(Rtmr::R2) => "rtmr2:sha384",
            Register::Rtmr(Rtmr::R3) => "rtmr3:sha384",
            Register::MrConfigId => "mrconfigid",
            Register::MrOwner => "mrowner",
            Register::MrOwnerConfig => "mrownerconfig",
        }
    }

    pub fn writable(self) -> bool {
        matches!(self, Register::Rtmr(_))
    }
}

/// Decrement a "next N" counter; true if it was non-zero.
fn take(counter: &mut u64) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

fn sleep_ms(ms: u64) {
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use tdx_sim::{SimFixture, SimSettings};

    use super::*;

    fn kernel() -> (tempfile::TempDir, Kernel) {
        let tmp = tempfile::tempdir().unwrap();
        let fx = SimFixture::create(&tmp.path().join("sim"), SimSettings::default()).unwrap();
        let td = SimTd::new(fx.dir.clone(), Arc::clone(&fx.pki));
        (tmp, Kernel::new(td, Switches::new(0, 10)))
    }

    fn report_data(quote: &[u8]) -> &[u8] {
        &quote[48 + 520..48 + 584]
    }

    #[test]
    fn write_commit_bumps_generation_and_outblob_is_cached_until_the_next_write() {
        let (_tmp, k) = kernel();
        let e = k.mkdir("a").unwrap();
        assert_eq!(k.generation(&e), "0\n");
        assert_eq!(k.outblob(&e).unwrap_err(), Errno::EINVAL, "never written");
        k.commit_inblob(&e, vec![1; 64]);
        assert_eq!(k.generation(&e), "1\n");
        let q1 = k.outblob(&e).unwrap();
        assert_eq!(report_data(&q1), &[1; 64]);
        assert!(Arc::ptr_eq(&q1, &k.outblob(&e).unwrap()), "cached");
        k.commit_inblob(&e, vec![2; 64]);
        assert_eq!(k.generation(&e), "2\n");
        assert_eq!(report_data(&k.outblob(&e).unwrap()), &[2; 64]);
        assert_eq!(k.stats.quotes_ok.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn short_inblob_is_einval_and_names_are_unique() {
        let (_tmp, k) = kernel();
        let e = k.mkdir("a").unwrap();
        assert_eq!(k.mkdir("a").unwrap_err(), Errno::EEXIST);
        k.commit_inblob(&e, vec![1; 10]);
        assert_eq!(k.outblob(&e).unwrap_err(), Errno::EINVAL);
        k.rmdir("a").unwrap();
        assert_eq!(k.rmdir("a").unwrap_err(), Errno::ENOENT);
        assert!(k.entries().is_empty());
    }

    #[test]
    fn switches_make_each_documented_error() {
        let (_tmp, k) = kernel();
        let e = k.mkdir("a").unwrap();
        k.commit_inblob(&e, vec![3; 64]);

        k.set_control(Control::FailNext, b"1\n").unwrap();
        assert_eq!(k.outblob(&e).unwrap_err(), Errno::EIO);
        k.set_control(Control::TimeoutNext, b"1").unwrap();
        assert_eq!(k.outblob(&e).unwrap_err(), Errno::ETIMEDOUT);
        assert_eq!(k.control_text(Control::HostBusy), "1\n");
        assert_eq!(k.outblob(&e).unwrap_err(), Errno::EBUSY);
        k.set_control(Control::HostBusy, b"0").unwrap();
        k.set_control(Control::InterruptNext, b"1").unwrap();
        assert_eq!(k.outblob(&e).unwrap_err(), Errno::EINTR);
        assert_eq!(k.outblob(&e).unwrap_err(), Errno::EBUSY);
        k.set_control(Control::HostBusy, b"0").unwrap();
        assert_eq!(report_data(&k.outblob(&e).unwrap()), &[3; 64]);

        k.set_control(Control::Provider, b"0").unwrap();
        assert_eq!(k.mkdir("b").unwrap_err(), Errno::ENXIO);
        assert_eq!(k.provider().unwrap_err(), Errno::ENXIO);
        k.commit_inblob(&e, vec![4; 64]);
        assert_eq!(k.outblob(&e).unwrap_err(), Errno::ENOTTY);
        k.set_control(Control::Provider, b"1").unwrap();
        assert_eq!(k.provider().unwrap(), "tdx_guest\n");

        assert_eq!(
            k.set_control(Control::HostBusy, b"1").unwrap_err(),
            Errno::EINVAL,
            "EBUSY comes only after a timeout or an interruption"
        );
        for bad in [&b"x"[..], b"-1", b"", b"2"] {
            assert_eq!(
                k.set_control(Control::Provider, bad).unwrap_err(),
                Errno::EINVAL,
                "{bad:?}"
            );
        }
        assert_eq!(
            k.set_control(Control::Stats, b"0").unwrap_err(),
            Errno::EACCES
        );
        let stats = k.control_text(Control::Stats);
        assert!(stats.contains("quotes_failed 5\n"), "{stats}");
    }

    /// The guest-wide lock alone, without the FUSE layer's one worker: quotes from several
    /// threads never overlap (the delay would make them overlap, were nothing serialising).
    #[test]
    fn the_kernel_lock_lets_one_quote_run_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let fx = SimFixture::create(&tmp.path().join("sim"), SimSettings::default()).unwrap();
        let td = SimTd::new(fx.dir.clone(), Arc::clone(&fx.pki));
        let k = Kernel::new(td, Switches::new(100, 10));
        std::thread::scope(|scope| {
            for i in 0..3u8 {
                let k = &k;
                scope.spawn(move || {
                    let e = k.mkdir(&format!("e{i}")).unwrap();
                    k.commit_inblob(&e, vec![i; 64]);
                    assert_eq!(report_data(&k.outblob(&e).unwrap()), &[i; 64]);
                });
            }
        });
        let stats = k.control_text(Control::Stats);
        assert!(stats.contains("quotes_ok 3\n"), "{stats}");
        assert!(stats.contains("max_concurrent 1\n"), "{stats}");
    }

    #[test]
    fn race_is_another_writer_between_write_and_read() {
        let (_tmp, k) = kernel();
        let e = k.mkdir("a").unwrap();
        k.commit_inblob(&e, vec![5; 64]);
        k.set_control(Control::RaceNext, b"1").unwrap();
        let q = k.outblob(&e).unwrap();
        assert_eq!(report_data(&q), &FOREIGN_REPORTDATA);
        assert_eq!(k.generation(&e), "2\n");
        assert_eq!(k.control_text(Control::RaceNext), "0\n");
    }

    #[test]
    fn extend_takes_exactly_48_bytes_at_offset_0() {
        let (_tmp, k) = kernel();
        let before = k.register(Register::Rtmr(Rtmr::R3)).unwrap();
        assert_eq!(before, [0; 48]);
        assert_eq!(k.extend(Rtmr::R3, 0, &[1; 47]).unwrap_err(), Errno::EINVAL);
        assert_eq!(k.extend(Rtmr::R3, 1, &[1; 48]).unwrap_err(), Errno::EINVAL);
        k.extend(Rtmr::R3, 0, &[1; 48]).unwrap();
        let expected = tdx_core::measure::rtmr3_log::replay([&[1u8; 48]]);
        assert_eq!(k.register(Register::Rtmr(Rtmr::R3)).unwrap(), expected);
        // Quotes carry it.
        let e = k.mkdir("a").unwrap();
        k.commit_inblob(&e, vec![0; 64]);
        let q = k.outblob(&e).unwrap();
        assert_eq!(&q[48 + 472..48 + 520], &expected);
    }
}
