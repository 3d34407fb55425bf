//! The configfs-tsm quote provider: TD quotes from the kernel, registers from sysfs or a quote.
//!
//! Protocol (docs/design.md §3): make a fresh report entry, check `provider`, read `generation` G,
//! write the 64-byte REPORTDATA to `inblob`, read the quote from `outblob`, and read
//! `generation` again. Binary writes commit on close() and their errors are lost there, so
//! G+1 is the only proof that the quote answers our REPORTDATA and not another writer's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rand_core::{OsRng, RngCore};

use super::fsops::{RealFs, TsmFs};
use super::sysfs::{DEFAULT_MEASUREMENTS_DIR, SysfsRegisters};
use super::{Measurements, ReportData, Rtmr, Sha384, Tee, TeeError, TeeKind};

// Linux x86_64 errno values. Spelled out here rather than pulling in `libc` for eight numbers.
const ENOENT: i32 = 2;
const EINTR: i32 = 4;
const EIO: i32 = 5;
const ENXIO: i32 = 6;
const EBUSY: i32 = 16;
const EINVAL: i32 = 22;
const EFBIG: i32 = 27;
const ETIMEDOUT: i32 = 110;

/// Where configfs-tsm reports are made.
pub const DEFAULT_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";
/// The raw TCG2 boot event log the firmware publishes through ACPI.
pub const DEFAULT_CCEL_DATA: &str = "/sys/firmware/acpi/tables/data/CCEL";

/// Longest outblob accepted. The kernel caps what a provider may return at TSM_OUTBLOB_MAX
/// (32 KiB, include/linux/tsm.h) and TDX quotes are about 5-8 KiB; twice the kernel's cap
/// leaves room for a kernel that raises it, and bounds what a broken one can make us hold.
pub const OUTBLOB_MAX: usize = 64 * 1024;
/// Longest `generation` accepted: a u64 in decimal is at most 20 digits, plus a newline.
const GENERATION_MAX: usize = 32;
/// Longest `provider` accepted: provider names are short identifiers (`tdx_guest`).
const PROVIDER_MAX: usize = 64;
/// Longest CCEL log area accepted. Its size is the log area the firmware reserved (the CCEL
/// table's LAML): 64 KiB in TDVF/OVMF, a few MiB at most in any firmware seen so far. 16 MiB
/// leaves room for any real log while bounding what a broken or hostile file can make the
/// agent hold (the log is parsed in memory).
pub const CCEL_MAX: usize = 16 * 1024 * 1024;

/// How many fresh entries one request may use before giving up on a racing writer.
const MAX_ATTEMPTS: u32 = 3;

/// The smallest possible TD quote: 48-byte header, 584-byte v4 TD body, u32 signature length.
pub const MIN_QUOTE_LEN: usize = HEADER_LEN + TD_BODY_LEN + 4;

use tdx_core::quote::layout::{HEADER_LEN, TD10_BODY_LEN as TD_BODY_LEN};

/// The kernel paths the provider uses. Overridable for the FUSE emulator and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigfsPaths {
    pub report_dir: PathBuf,
    pub measurements_dir: PathBuf,
    pub ccel_data: PathBuf,
}

impl Default for ConfigfsPaths {
    fn default() -> Self {
        Self {
            report_dir: PathBuf::from(DEFAULT_REPORT_DIR),
            measurements_dir: PathBuf::from(DEFAULT_MEASUREMENTS_DIR),
            ccel_data: PathBuf::from(DEFAULT_CCEL_DATA),
        }
    }
}

/// Makes quotes through configfs-tsm, one at a time.
pub struct TsmReport<F: TsmFs> {
    fs: F,
    report_dir: PathBuf,
    /// Two requests from this process would only queue on the kernel's lock while each
    /// holds an entry; serialising here keeps at most one entry alive.
    in_flight: Mutex<()>,
}

/// Process-wide, so two `TsmReport`s on the same directory never pick the same name.
static ENTRY_COUNTER: AtomicU64 = AtomicU64::new(0);

impl<F: TsmFs> TsmReport<F> {
    pub fn new(report_dir: impl Into<PathBuf>, fs: F) -> Self {
        Self {
            fs,
            report_dir: report_dir.into(),
            in_flight: Mutex::new(()),
        }
    }

    pub fn report_dir(&self) -> &Path {
        &self.report_dir
    }

    /// A quote whose REPORTDATA is `report_data`. Blocks for as long as the kernel takes
    /// (about a second today, up to its 30 s timeout).
    pub fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, TeeError> {
        // A panic in an earlier request leaves nothing behind (the entry guard removed it),
        // so a poisoned lock carries no broken state.
        let _one_in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut attempt = 1;
        loop {
            match self.attempt(report_data)? {
                Attempt::Quote(quote) => return Ok(quote),
                Attempt::Raced {
                    path,
                    before,
                    after,
                    expected,
                } => {
                    if attempt >= MAX_ATTEMPTS {
                        return Err(TeeError::GenerationRace {
                            path,
                            attempts: attempt,
                            before,
                            after,
                            expected,
                        });
                    }
                    tracing::warn!(
                        entry = %path.display(),
                        before, after, expected, attempt,
                        "another writer changed the TSM report entry; retrying with a fresh entry"
                    );
                    attempt += 1;
                }
            }
        }
    }

    fn attempt(&self, report_data: &ReportData) -> Result<Attempt, TeeError> {
        let entry = self.make_entry()?;
        let dir = entry.path.clone();

        let provider_path = dir.join("provider");
        let provider = self.read(&provider_path, "provider", PROVIDER_MAX)?;
        let provider = String::from_utf8_lossy(&provider);
        let provider = provider.strip_suffix('\n').unwrap_or(&provider);
        if provider != "tdx_guest" {
            return Err(TeeError::WrongProvider {
                path: provider_path,
                found: provider.to_owned(),
            });
        }

        let generation_path = dir.join("generation");
        let before = self.read_generation(&generation_path)?;
        let expected = before.checked_add(1).ok_or_else(|| TeeError::Malformed {
            path: generation_path.clone(),
            what: "generation",
            detail: format!("{before} cannot be incremented"),
        })?;

        let inblob = dir.join("inblob");
        self.fs
            .write_file(&inblob, report_data)
            .map_err(|source| match source.raw_os_error() {
                Some(EFBIG) => TeeError::ReportDataTooLarge {
                    path: inblob.clone(),
                },
                _ => TeeError::Io {
                    op: "write",
                    path: inblob.clone(),
                    source,
                },
            })?;

        let outblob = dir.join("outblob");
        let quote = self
            .fs
            .read_file(&outblob, OUTBLOB_MAX)
            .map_err(|source| outblob_error(outblob.clone(), source))?;
        if quote.len() > OUTBLOB_MAX {
            return Err(TeeError::TooLarge {
                path: outblob,
                what: "the quote",
                limit: OUTBLOB_MAX,
            });
        }

        let after = self.read_generation(&generation_path)?;
        if after != expected {
            // The outblob may be another writer's quote; never return it.
            return Ok(Attempt::Raced {
                path: dir,
                before,
                after,
                expected,
            });
        }
        if quote.len() < MIN_QUOTE_LEN {
            return Err(TeeError::ShortQuote {
                path: outblob,
                len: quote.len(),
            });
        }
        // Belt and braces on top of the generation check: a quote over any other REPORTDATA
        // would bind someone else's key or nonce.
        let (_, body) =
            tdx_core::quote::parse_head_only(&quote).map_err(|e| TeeError::Malformed {
                path: outblob.clone(),
                what: "quote",
                detail: e.to_string(),
            })?;
        if &body.report_data != report_data {
            return Err(TeeError::Malformed {
                path: outblob,
                what: "quote",
                detail: "its REPORTDATA is not the one written to inblob".into(),
            });
        }
        Ok(Attempt::Quote(quote))
    }

    fn make_entry(&self) -> Result<Entry<'_, F>, TeeError> {
        let path = self.report_dir.join(unique_name(&self.report_dir)?);
        match self.fs.mkdir(&path) {
            Ok(()) => Ok(Entry { fs: &self.fs, path }),
            Err(err) => Err(match err.raw_os_error() {
                Some(ENXIO) => TeeError::NoProvider { path },
                Some(ENOENT) => TeeError::NoReportDir {
                    path: self.report_dir.clone(),
                },
                _ if err.kind() == std::io::ErrorKind::NotFound => TeeError::NoReportDir {
                    path: self.report_dir.clone(),
                },
                _ => TeeError::Io {
                    op: "mkdir",
                    path,
                    source: err,
                },
            }),
        }
    }

    /// Read a small attribute, refusing one longer than `limit` bytes.
    fn read(&self, path: &Path, what: &'static str, limit: usize) -> Result<Vec<u8>, TeeError> {
        let data = self
            .fs
            .read_file(path, limit)
            .map_err(|source| TeeError::Io {
                op: "read",
                path: path.to_owned(),
                source,
            })?;
        if data.len() > limit {
            return Err(TeeError::TooLarge {
                path: path.to_owned(),
                what,
                limit,
            });
        }
        Ok(data)
    }

    fn read_generation(&self, path: &Path) -> Result<u64, TeeError> {
        let raw = self.read(path, "generation", GENERATION_MAX)?;
        let malformed = |detail: String| TeeError::Malformed {
            path: path.to_owned(),
            what: "generation",
            detail,
        };
        let text = std::str::from_utf8(&raw)
            .map_err(|_| malformed(format!("not UTF-8: {}", hex::encode(&raw))))?;
        let digits = text.strip_suffix('\n').unwrap_or(text);
        // u64::from_str takes a leading '+'; the kernel never writes one.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed(format!("not a decimal number: {text:?}")));
        }
        digits
            .parse::<u64>()
            .map_err(|e| malformed(format!("{text:?}: {e}")))
    }
}

enum Attempt {
    Quote(Vec<u8>),
    Raced {
        path: PathBuf,
        before: u64,
        after: u64,
        expected: u64,
    },
}

fn outblob_error(path: PathBuf, source: std::io::Error) -> TeeError {
    match source.raw_os_error() {
        Some(EINVAL) => TeeError::InvalidReportData { path },
        Some(EIO) => TeeError::QuoteFailed { path },
        Some(ETIMEDOUT) => TeeError::QuoteTimeout { path },
        Some(EINTR) => TeeError::Interrupted { path },
        Some(EBUSY) => TeeError::Busy { path },
        _ => TeeError::Io {
            op: "read",
            path,
            source,
        },
    }
}

/// `tdx-agent-<pid>-<counter>-<random>`: the pid and counter keep this process's entries
/// apart, the random part keeps a restarted agent (same pid) off a stale entry.
fn unique_name(report_dir: &Path) -> Result<String, TeeError> {
    let mut random = [0u8; 8];
    OsRng
        .try_fill_bytes(&mut random)
        .map_err(|e| TeeError::Io {
            op: "getrandom",
            path: report_dir.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let counter = ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(format!(
        "tdx-agent-{}-{counter}-{}",
        std::process::id(),
        hex::encode(random)
    ))
}

/// A report entry that is removed when dropped: on success, on every error, and on panic.
struct Entry<'a, F: TsmFs> {
    fs: &'a F,
    path: PathBuf,
}

impl<F: TsmFs> Drop for Entry<'_, F> {
    fn drop(&mut self) {
        if let Err(err) = self.fs.rmdir(&self.path) {
            // A leftover entry holds kernel memory and the last quote; say so, loudly.
            tracing::warn!(
                entry = %self.path.display(),
                error = %err,
                "could not remove TSM report entry"
            );
        }
    }
}

/// The provider for real TDX guests (and the FUSE emulator): quotes from configfs-tsm,
/// registers from sysfs when the kernel has them, else out of a fresh quote.
pub struct ConfigfsTee<F: TsmFs = RealFs> {
    report: TsmReport<F>,
    paths: ConfigfsPaths,
}

impl ConfigfsTee<RealFs> {
    pub fn new(paths: ConfigfsPaths) -> Self {
        Self::with_fs(paths, RealFs)
    }
}

impl<F: TsmFs> ConfigfsTee<F> {
    /// The provider over any [`TsmFs`]; the register and event-log paths still use std::fs.
    pub fn with_fs(paths: ConfigfsPaths, fs: F) -> Self {
        Self {
            report: TsmReport::new(paths.report_dir.clone(), fs),
            paths,
        }
    }

    pub fn paths(&self) -> &ConfigfsPaths {
        &self.paths
    }

    /// The sysfs registers if this kernel has them (Linux 6.16+).
    fn sysfs(&self) -> Result<Option<SysfsRegisters>, TeeError> {
        let dir = &self.paths.measurements_dir;
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(Some(SysfsRegisters::new(dir.clone()))),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TeeError::Io {
                op: "stat",
                path: dir.clone(),
                source,
            }),
        }
    }
}

impl<F: TsmFs> Tee for ConfigfsTee<F> {
    fn kind(&self) -> TeeKind {
        TeeKind::Configfs
    }

    fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, TeeError> {
        self.report.quote(report_data)
    }

    fn measurements(&self) -> Result<Measurements, TeeError> {
        if let Some(sysfs) = self.sysfs()? {
            return sysfs.read_measurements();
        }
        // Pre-6.16 kernels: the registers are only visible inside a quote. Costs one quote.
        let quote = self.report.quote(&[0u8; 64])?;
        registers_from_quote(&quote, &self.paths.report_dir)
    }

    fn extend_rtmr(&self, rtmr: Rtmr, digest: &Sha384) -> Result<(), TeeError> {
        match self.sysfs()? {
            Some(sysfs) => sysfs.extend(rtmr, digest),
            None => Err(TeeError::ExtendUnavailable {
                reason: format!(
                    "{} does not exist: RTMR extension needs Linux 6.16+ with CONFIG_TSM_MEASUREMENTS",
                    self.paths.measurements_dir.display()
                ),
            }),
        }
    }

    fn boot_event_log(&self) -> Result<Vec<u8>, TeeError> {
        let path = &self.paths.ccel_data;
        let data = super::fsops::read_limited(path, CCEL_MAX).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                TeeError::EventLogUnavailable {
                    path: path.clone(),
                    detail: "the firmware published no CCEL table".to_owned(),
                }
            } else {
                TeeError::Io {
                    op: "read",
                    path: path.clone(),
                    source: err,
                }
            }
        })?;
        if data.len() > CCEL_MAX {
            return Err(TeeError::TooLarge {
                path: path.clone(),
                what: "the CCEL boot event log",
                limit: CCEL_MAX,
            });
        }
        Ok(data)
    }
}

/// The registers in a v4 or v5 TD quote the kernel just produced.
fn registers_from_quote(quote: &[u8], source: &Path) -> Result<Measurements, TeeError> {
    let (_, body) = tdx_core::quote::parse_head_only(quote).map_err(|e| TeeError::Malformed {
        path: source.to_owned(),
        what: "quote",
        detail: e.to_string(),
    })?;
    Ok(Measurements {
        mrtd: body.mrtd,
        rtmr: body.rtmr,
        mrconfigid: body.mrconfigid,
        mrowner: body.mrowner,
        mrownerconfig: body.mrownerconfig,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::io;
    use std::sync::Arc;

    use super::*;
    use tdx_core::quote::layout::TEE_TYPE_TDX;

    const REPORT_DIR: &str = "/fake/tsm/report";

    /// What the fake kernel does; every field is one documented behaviour.
    struct Script {
        mkdir_errno: Option<i32>,
        provider: Vec<u8>,
        /// Replaces the decimal generation text on every read.
        generation_text: Option<Vec<u8>>,
        inblob_errno: Option<i32>,
        outblob_errno: Option<i32>,
        /// Requests in which another writer bumps `generation` before we read it back.
        races: u32,
        /// Replaces the generated quote.
        outblob: Option<Vec<u8>>,
        panic_on_outblob: bool,
        /// Registers the generated quote reports.
        mrtd: Sha384,
        rtmr: [Sha384; 4],
    }

    impl Default for Script {
        fn default() -> Self {
            Self {
                mkdir_errno: None,
                provider: b"tdx_guest\n".to_vec(),
                generation_text: None,
                inblob_errno: None,
                outblob_errno: None,
                races: 0,
                outblob: None,
                panic_on_outblob: false,
                mrtd: [0; 48],
                rtmr: [[0; 48]; 4],
            }
        }
    }

    #[derive(Default)]
    struct EntryState {
        generation: u64,
        inblob: Option<Vec<u8>>,
    }

    #[derive(Default)]
    struct State {
        script: Script,
        live: BTreeMap<PathBuf, EntryState>,
        made: Vec<PathBuf>,
        inblobs: Vec<Vec<u8>>,
    }

    #[derive(Clone, Default)]
    struct FakeFs(Arc<Mutex<State>>);

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    impl FakeFs {
        fn with(script: Script) -> Self {
            let fake = FakeFs::default();
            fake.state().script = script;
            fake
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Every entry made was removed, and no name was used twice.
        fn assert_clean(&self) {
            let st = self.state();
            assert!(st.live.is_empty(), "leftover entries: {:?}", st.live.keys());
            let unique: HashSet<_> = st.made.iter().collect();
            assert_eq!(unique.len(), st.made.len(), "names reused: {:?}", st.made);
            for path in &st.made {
                assert_eq!(path.parent(), Some(Path::new(REPORT_DIR)));
                let name = path.file_name().unwrap().to_str().unwrap();
                let prefix = format!("tdx-agent-{}-", std::process::id());
                assert!(name.starts_with(&prefix), "{name}");
            }
        }

        fn entries_made(&self) -> usize {
            self.state().made.len()
        }

        fn split(path: &Path) -> (PathBuf, &str) {
            let dir = path.parent().unwrap().to_owned();
            let file = path.file_name().unwrap().to_str().unwrap();
            (dir, file)
        }
    }

    impl TsmFs for FakeFs {
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            let mut st = self.state();
            if path.parent() != Some(Path::new(REPORT_DIR)) {
                return Err(errno(ENOENT));
            }
            if let Some(n) = st.script.mkdir_errno {
                return Err(errno(n));
            }
            if st.live.contains_key(path) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            st.live.insert(path.to_owned(), EntryState::default());
            st.made.push(path.to_owned());
            Ok(())
        }

        fn rmdir(&self, path: &Path) -> io::Result<()> {
            match self.state().live.remove(path) {
                Some(_) => Ok(()),
                None => Err(errno(ENOENT)),
            }
        }

        fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            let (dir, file) = Self::split(path);
            let mut st = self.state();
            assert_eq!(file, "inblob", "only inblob is written");
            if let Some(n) = st.script.inblob_errno {
                return Err(errno(n));
            }
            if data.len() > 64 {
                return Err(errno(EFBIG));
            }
            st.inblobs.push(data.to_vec());
            let entry = st.live.get_mut(&dir).ok_or_else(|| errno(ENOENT))?;
            entry.inblob = Some(data.to_vec());
            entry.generation += 1;
            Ok(())
        }

        fn read_file(&self, path: &Path, _limit: usize) -> io::Result<Vec<u8>> {
            // Whole, whatever the limit: the provider must refuse what is too long itself.
            let (dir, file) = Self::split(path);
            let mut st = self.state();
            if !st.live.contains_key(&dir) {
                return Err(errno(ENOENT));
            }
            match file {
                "provider" => Ok(st.script.provider.clone()),
                "generation" => {
                    if let Some(text) = &st.script.generation_text {
                        return Ok(text.clone());
                    }
                    Ok(format!("{}\n", st.live[&dir].generation).into_bytes())
                }
                "outblob" => {
                    if st.script.panic_on_outblob {
                        drop(st);
                        panic!("scripted panic while reading outblob");
                    }
                    if let Some(n) = st.script.outblob_errno {
                        return Err(errno(n));
                    }
                    if st.script.races > 0 {
                        st.script.races -= 1;
                        st.live.get_mut(&dir).unwrap().generation += 1;
                    }
                    if let Some(blob) = &st.script.outblob {
                        return Ok(blob.clone());
                    }
                    let inblob = st.live[&dir].inblob.clone();
                    match inblob {
                        Some(rd) if rd.len() == 64 => Ok(quote_v4(
                            &st.script.mrtd,
                            &st.script.rtmr,
                            rd.as_slice().try_into().unwrap(),
                        )),
                        _ => Err(errno(EINVAL)),
                    }
                }
                other => panic!("unexpected read of {other}"),
            }
        }
    }

    /// A quote-shaped v4 blob (no valid signature) with padding after the signature data,
    /// like the kernel's outblob.
    fn quote_v4(mrtd: &Sha384, rtmr: &[Sha384; 4], report_data: &ReportData) -> Vec<u8> {
        let mut q = vec![0u8; MIN_QUOTE_LEN + 64];
        q[0..2].copy_from_slice(&4u16.to_le_bytes());
        q[2..4].copy_from_slice(&2u16.to_le_bytes());
        q[4..8].copy_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        fill_body(&mut q[HEADER_LEN..HEADER_LEN + TD_BODY_LEN], mrtd, rtmr);
        q[HEADER_LEN + 520..HEADER_LEN + 584].copy_from_slice(report_data);
        q
    }

    fn fill_body(body: &mut [u8], mrtd: &Sha384, rtmr: &[Sha384; 4]) {
        body[136..184].copy_from_slice(mrtd);
        body[184..232].fill(0xC1);
        body[232..280].fill(0xC2);
        body[280..328].fill(0xC3);
        for (i, r) in rtmr.iter().enumerate() {
            body[328 + 48 * i..376 + 48 * i].copy_from_slice(r);
        }
    }

    fn known_registers() -> (Sha384, [Sha384; 4]) {
        let mut mrtd = [0u8; 48];
        for (i, b) in mrtd.iter_mut().enumerate() {
            *b = i as u8;
        }
        (mrtd, [[0xA0; 48], [0xA1; 48], [0xA2; 48], [0xA3; 48]])
    }

    fn report(fake: &FakeFs) -> TsmReport<FakeFs> {
        TsmReport::new(REPORT_DIR, fake.clone())
    }

    fn rd(byte: u8) -> ReportData {
        [byte; 64]
    }

    /// Runs two requests under `script`, checks each result, then checks the fake is clean.
    fn twice(script: Script, check: impl Fn(Result<Vec<u8>, TeeError>)) -> FakeFs {
        let fake = FakeFs::with(script);
        let r = report(&fake);
        check(r.quote(&rd(1)));
        check(r.quote(&rd(2)));
        fake.assert_clean();
        fake
    }

    #[test]
    fn success_returns_the_quote_for_our_report_data() {
        let fake = FakeFs::default();
        let r = report(&fake);
        for byte in [0x11, 0x22, 0x33] {
            let quote = r.quote(&rd(byte)).unwrap();
            assert!(quote.len() >= MIN_QUOTE_LEN);
            assert_eq!(&quote[HEADER_LEN + 520..HEADER_LEN + 584], &rd(byte));
        }
        assert_eq!(fake.entries_made(), 3);
        let st = fake.state();
        assert!(st.inblobs.iter().all(|b| b.len() == 64));
        drop(st);
        fake.assert_clean();
    }

    #[test]
    fn names_are_unique_across_reports() {
        let fake = FakeFs::default();
        let a = report(&fake);
        let b = report(&fake);
        for _ in 0..5 {
            a.quote(&rd(1)).unwrap();
            b.quote(&rd(2)).unwrap();
        }
        assert_eq!(fake.entries_made(), 10);
        fake.assert_clean();
    }

    #[test]
    fn concurrent_requests_keep_one_entry_alive() {
        let fake = FakeFs::default();
        let r = Arc::new(report(&fake));
        let threads: Vec<_> = (0..4u8)
            .map(|i| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let quote = r.quote(&rd(i)).unwrap();
                    assert_eq!(&quote[HEADER_LEN + 520..HEADER_LEN + 584], &rd(i));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fake.entries_made(), 4);
        fake.assert_clean();
    }

    #[test]
    fn generation_moved_once_is_retried_with_a_fresh_entry() {
        let fake = FakeFs::with(Script {
            races: 1,
            ..Script::default()
        });
        let r = report(&fake);
        let quote = r.quote(&rd(7)).unwrap();
        assert_eq!(&quote[HEADER_LEN + 520..HEADER_LEN + 584], &rd(7));
        assert_eq!(fake.entries_made(), 2, "one raced entry, one good");
        r.quote(&rd(8)).unwrap();
        assert_eq!(fake.entries_made(), 3);
        fake.assert_clean();
    }

    #[test]
    fn generation_moved_every_time_gives_up_after_three_attempts() {
        let fake = FakeFs::with(Script {
            races: u32::MAX,
            ..Script::default()
        });
        let r = report(&fake);
        for request in 1..=2 {
            match r.quote(&rd(1)).unwrap_err() {
                TeeError::GenerationRace {
                    path,
                    attempts,
                    before,
                    after,
                    expected,
                } => {
                    assert_eq!(attempts, 3);
                    assert_eq!((before, after, expected), (0, 2, 1));
                    assert_eq!(path.parent(), Some(Path::new(REPORT_DIR)));
                }
                other => panic!("expected GenerationRace, got {other:?}"),
            }
            assert_eq!(fake.entries_made(), 3 * request);
        }
        fake.assert_clean();
    }

    #[test]
    fn outblob_errnos_map_to_their_meaning() {
        type IsExpected = fn(&TeeError) -> bool;
        let cases: [(i32, IsExpected); 5] = [
            (EBUSY, |e| matches!(e, TeeError::Busy { .. })),
            (EINVAL, |e| matches!(e, TeeError::InvalidReportData { .. })),
            (EIO, |e| matches!(e, TeeError::QuoteFailed { .. })),
            (ETIMEDOUT, |e| matches!(e, TeeError::QuoteTimeout { .. })),
            (EINTR, |e| matches!(e, TeeError::Interrupted { .. })),
        ];
        for (n, is_expected) in cases {
            let fake = twice(
                Script {
                    outblob_errno: Some(n),
                    ..Script::default()
                },
                |res| {
                    let err = res.unwrap_err();
                    assert!(is_expected(&err), "errno {n}: got {err:?}");
                    assert!(err.to_string().contains("outblob"), "{err}");
                },
            );
            assert_eq!(fake.entries_made(), 2, "errno {n} must not be retried");
        }
    }

    #[test]
    fn other_outblob_errno_is_io_with_op_and_path() {
        twice(
            Script {
                outblob_errno: Some(13), // EACCES
                ..Script::default()
            },
            |res| match res.unwrap_err() {
                TeeError::Io { op, path, source } => {
                    assert_eq!(op, "read");
                    assert!(path.ends_with("outblob"));
                    assert_eq!(source.raw_os_error(), Some(13));
                }
                other => panic!("expected Io, got {other:?}"),
            },
        );
    }

    #[test]
    fn enxio_at_mkdir_is_no_provider() {
        let fake = twice(
            Script {
                mkdir_errno: Some(ENXIO),
                ..Script::default()
            },
            |res| match res.unwrap_err() {
                TeeError::NoProvider { path } => {
                    assert_eq!(path.parent(), Some(Path::new(REPORT_DIR)))
                }
                other => panic!("expected NoProvider, got {other:?}"),
            },
        );
        assert_eq!(fake.entries_made(), 0);
    }

    #[test]
    fn missing_report_dir_is_no_report_dir() {
        let fake = FakeFs::default();
        let r = TsmReport::new("/fake/no/such/dir", fake.clone());
        for _ in 0..2 {
            match r.quote(&rd(1)).unwrap_err() {
                TeeError::NoReportDir { path } => {
                    assert_eq!(path, Path::new("/fake/no/such/dir"))
                }
                other => panic!("expected NoReportDir, got {other:?}"),
            }
        }
        assert_eq!(fake.entries_made(), 0);
        fake.assert_clean();
    }

    #[test]
    fn wrong_provider_is_rejected() {
        let fake = twice(
            Script {
                provider: b"sev_guest\n".to_vec(),
                ..Script::default()
            },
            |res| match res.unwrap_err() {
                TeeError::WrongProvider { path, found } => {
                    assert!(path.ends_with("provider"));
                    assert_eq!(found, "sev_guest");
                }
                other => panic!("expected WrongProvider, got {other:?}"),
            },
        );
        assert!(fake.state().inblobs.is_empty(), "no REPORTDATA sent to it");
    }

    #[test]
    fn provider_without_trailing_newline_is_accepted() {
        let fake = FakeFs::with(Script {
            provider: b"tdx_guest".to_vec(),
            ..Script::default()
        });
        report(&fake).quote(&rd(1)).unwrap();
        report(&fake).quote(&rd(2)).unwrap();
        fake.assert_clean();
    }

    #[test]
    fn short_outblob_is_short_quote() {
        twice(
            Script {
                outblob: Some(vec![0u8; MIN_QUOTE_LEN - 1]),
                ..Script::default()
            },
            |res| match res.unwrap_err() {
                TeeError::ShortQuote { path, len } => {
                    assert!(path.ends_with("outblob"));
                    assert_eq!(len, MIN_QUOTE_LEN - 1);
                }
                other => panic!("expected ShortQuote, got {other:?}"),
            },
        );
        assert_eq!(MIN_QUOTE_LEN, 636);
    }

    #[test]
    fn efbig_at_inblob_is_report_data_too_large() {
        twice(
            Script {
                inblob_errno: Some(EFBIG),
                ..Script::default()
            },
            |res| match res.unwrap_err() {
                TeeError::ReportDataTooLarge { path } => assert!(path.ends_with("inblob")),
                other => panic!("expected ReportDataTooLarge, got {other:?}"),
            },
        );
    }

    #[test]
    fn malformed_generation_is_rejected() {
        for text in [
            &b"abc\n"[..],
            b"",
            b"\n",
            b"+1\n",
            b"-1\n",
            b"1 2\n",
            b"\xff\n",
        ] {
            twice(
                Script {
                    generation_text: Some(text.to_vec()),
                    ..Script::default()
                },
                |res| match res.unwrap_err() {
                    TeeError::Malformed { path, what, .. } => {
                        assert!(path.ends_with("generation"));
                        assert_eq!(what, "generation");
                    }
                    other => panic!("expected Malformed for {text:?}, got {other:?}"),
                },
            );
        }
    }

    #[test]
    fn oversized_attributes_are_refused_naming_the_file() {
        let expect = |file: &'static str, limit: usize| {
            move |res: Result<Vec<u8>, TeeError>| match res.unwrap_err() {
                TeeError::TooLarge { path, limit: l, .. } => {
                    assert!(path.ends_with(file), "{path:?}");
                    assert_eq!(l, limit);
                }
                other => panic!("expected TooLarge for {file}, got {other:?}"),
            }
        };
        let fake = twice(
            Script {
                outblob: Some(vec![0u8; OUTBLOB_MAX + 1]),
                ..Script::default()
            },
            expect("outblob", OUTBLOB_MAX),
        );
        fake.assert_clean();
        twice(
            Script {
                generation_text: Some(b"1".repeat(GENERATION_MAX + 1)),
                ..Script::default()
            },
            expect("generation", GENERATION_MAX),
        );
        let fake = twice(
            Script {
                provider: b"tdx_guest".repeat(8),
                ..Script::default()
            },
            expect("provider", PROVIDER_MAX),
        );
        assert!(fake.state().inblobs.is_empty(), "no REPORTDATA sent to it");
        // The largest accepted outblob still goes through to the quote checks.
        twice(
            Script {
                outblob: Some(vec![0u8; OUTBLOB_MAX]),
                ..Script::default()
            },
            |res| assert!(!matches!(res, Err(TeeError::TooLarge { .. }) | Ok(_))),
        );
    }

    #[test]
    fn an_oversized_ccel_is_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = absent_measurements(&tmp);
        let tee = ConfigfsTee::with_fs(paths.clone(), FakeFs::default());
        // Sparse: costs no disk.
        let f = std::fs::File::create(&paths.ccel_data).unwrap();
        f.set_len(CCEL_MAX as u64).unwrap();
        assert_eq!(tee.boot_event_log().unwrap().len(), CCEL_MAX);
        f.set_len(CCEL_MAX as u64 + 1).unwrap();
        let err = tee.boot_event_log().unwrap_err();
        assert!(
            matches!(&err, TeeError::TooLarge { path, .. } if path == &paths.ccel_data),
            "{err:?}"
        );
        assert!(err.to_string().contains("no-ccel"), "{err}");
    }

    #[test]
    fn entry_is_removed_when_the_request_panics() {
        let fake = FakeFs::with(Script {
            panic_on_outblob: true,
            ..Script::default()
        });
        let r = report(&fake);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.quote(&rd(1))));
        assert!(panicked.is_err());
        assert_eq!(fake.entries_made(), 1);
        fake.assert_clean();
        // The poisoned in-flight lock must not wedge later requests.
        fake.state().script.panic_on_outblob = false;
        r.quote(&rd(2)).unwrap();
        fake.assert_clean();
    }

    fn absent_measurements(tmp: &tempfile::TempDir) -> ConfigfsPaths {
        ConfigfsPaths {
            report_dir: PathBuf::from(REPORT_DIR),
            measurements_dir: tmp.path().join("no-measurements"),
            ccel_data: tmp.path().join("no-ccel"),
        }
    }

    #[test]
    fn measurements_without_sysfs_come_from_a_zero_reportdata_quote() {
        let tmp = tempfile::tempdir().unwrap();
        let (mrtd, rtmr) = known_registers();
        let fake = FakeFs::with(Script {
            mrtd,
            rtmr,
            ..Script::default()
        });
        let tee = ConfigfsTee::with_fs(absent_measurements(&tmp), fake.clone());
        let m = tee.measurements().unwrap();
        assert_eq!(m.mrtd, mrtd);
        assert_eq!(m.rtmr, rtmr);
        assert_eq!(m.mrconfigid, [0xC1; 48]);
        assert_eq!(m.mrowner, [0xC2; 48]);
        assert_eq!(m.mrownerconfig, [0xC3; 48]);
        assert_eq!(fake.state().inblobs, vec![vec![0u8; 64]]);
        tee.measurements().unwrap();
        fake.assert_clean();
    }

    #[test]
    fn measurements_with_sysfs_do_not_make_a_quote() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("measurements");
        std::fs::create_dir(&dir).unwrap();
        for name in [
            "mrtd:sha384",
            "rtmr0:sha384",
            "rtmr1:sha384",
            "rtmr2:sha384",
            "rtmr3:sha384",
            "mrconfigid",
            "mrowner",
            "mrownerconfig",
        ] {
            std::fs::write(dir.join(name), [0x5A; 48]).unwrap();
        }
        let fake = FakeFs::default();
        let tee = ConfigfsTee::with_fs(
            ConfigfsPaths {
                measurements_dir: dir.clone(),
                ..absent_measurements(&tmp)
            },
            fake.clone(),
        );
        assert_eq!(tee.measurements().unwrap().rtmr[3], [0x5A; 48]);
        tee.extend_rtmr(Rtmr::R3, &[0x77; 48]).unwrap();
        assert_eq!(std::fs::read(dir.join("rtmr3:sha384")).unwrap(), [0x77; 48]);
        assert_eq!(fake.entries_made(), 0);
        fake.assert_clean();
    }

    #[test]
    fn extend_without_sysfs_is_unavailable_never_a_no_op() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeFs::default();
        let tee = ConfigfsTee::with_fs(absent_measurements(&tmp), fake.clone());
        match tee.extend_rtmr(Rtmr::R2, &[1; 48]).unwrap_err() {
            TeeError::ExtendUnavailable { reason } => {
                assert!(reason.contains("Linux 6.16+"), "{reason}");
                assert!(reason.contains("CONFIG_TSM_MEASUREMENTS"), "{reason}");
            }
            other => panic!("expected ExtendUnavailable, got {other:?}"),
        }
        assert_eq!(fake.entries_made(), 0);
        fake.assert_clean();
    }

    #[test]
    fn boot_event_log_reads_ccel_or_reports_it_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeFs::default();
        let paths = absent_measurements(&tmp);
        let tee = ConfigfsTee::with_fs(paths.clone(), fake.clone());
        assert!(matches!(
            tee.boot_event_log().unwrap_err(),
            TeeError::EventLogUnavailable { path, .. } if path == paths.ccel_data
        ));
        std::fs::write(&paths.ccel_data, b"\x00\x01\xff").unwrap();
        assert_eq!(tee.boot_event_log().unwrap(), b"\x00\x01\xff");
        assert_eq!(tee.kind(), TeeKind::Configfs);
        fake.assert_clean();
    }

    #[test]
    fn the_boot_is_the_kernels() {
        let tmp = tempfile::tempdir().unwrap();
        let tee = ConfigfsTee::with_fs(absent_measurements(&tmp), FakeFs::default());
        // Where this machine has no boot id, the kernel's error, never a made-up id.
        match crate::boot_id() {
            Ok(id) => assert_eq!(tee.current_boot_id().unwrap(), id),
            Err(_) => assert!(matches!(
                tee.current_boot_id(),
                Err(TeeError::BootId { .. })
            )),
        }
    }

    #[test]
    fn quote_through_the_tee_trait() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeFs::default();
        let tee: Box<dyn Tee> = Box::new(ConfigfsTee::with_fs(
            absent_measurements(&tmp),
            fake.clone(),
        ));
        let q1 = tee.quote(&rd(9)).unwrap();
        let q2 = tee.quote(&rd(10)).unwrap();
        assert_eq!(&q1[HEADER_LEN + 520..HEADER_LEN + 584], &rd(9));
        assert_eq!(&q2[HEADER_LEN + 520..HEADER_LEN + 584], &rd(10));
        fake.assert_clean();
    }

    #[test]
    fn decoder_reads_v5_quotes() {
        let (mrtd, rtmr) = known_registers();
        let body_len = 648usize;
        let mut q = vec![0u8; HEADER_LEN + 6 + body_len + 4];
        q[0..2].copy_from_slice(&5u16.to_le_bytes());
        q[2..4].copy_from_slice(&2u16.to_le_bytes());
        q[4..8].copy_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        q[48..50].copy_from_slice(&3u16.to_le_bytes());
        q[50..54].copy_from_slice(&(body_len as u32).to_le_bytes());
        fill_body(&mut q[54..54 + body_len], &mrtd, &rtmr);
        let m = registers_from_quote(&q, Path::new(REPORT_DIR)).unwrap();
        assert_eq!(m.mrtd, mrtd);
        assert_eq!(m.rtmr, rtmr);
        assert_eq!(m.mrownerconfig, [0xC3; 48]);
    }

    #[test]
    fn decoder_rejects_bad_quotes_without_panicking() {
        let (mrtd, rtmr) = known_registers();
        let good = quote_v4(&mrtd, &rtmr, &[0; 64]);
        let mut wrong_version = good.clone();
        wrong_version[0] = 3;
        let mut not_tdx = good.clone();
        not_tdx[4] = 0;
        let mut v5_huge = good.clone();
        v5_huge[0] = 5;
        v5_huge[50..54].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut v5_small = good.clone();
        v5_small[0] = 5;
        v5_small[50..54].copy_from_slice(&100u32.to_le_bytes());
        let cases = [
            Vec::new(),
            good[..7].to_vec(),
            good[..HEADER_LEN + 100].to_vec(),
            wrong_version,
            not_tdx,
            v5_huge,
            v5_small,
        ];
        for q in cases {
            let err = registers_from_quote(&q, Path::new(REPORT_DIR)).unwrap_err();
            assert!(
                matches!(err, TeeError::Malformed { what: "quote", .. }),
                "{err:?}"
            );
        }
    }
}
