//! `SimTd`: the simulated TD as a [`Tee`] provider, with software registers persisted in
//! DIR/td-state.json so they survive an agent restart (a "reboot" is [`reset`]).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384 as Sha384Hasher};

use super::settings::hex48;
use super::{QuoteBuilder, SimDir, SimError, SimPki, SimSettings, fsio};
use tdx_tee::{Measurements, ReportData, Rtmr, Sha384, Tee, TeeError, TeeKind};

/// The live registers as stored in td-state.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdState {
    #[serde(with = "hex48")]
    pub mrtd: Sha384,
    #[serde(with = "hex48")]
    pub rtmr0: Sha384,
    #[serde(with = "hex48")]
    pub rtmr1: Sha384,
    #[serde(with = "hex48")]
    pub rtmr2: Sha384,
    #[serde(with = "hex48")]
    pub rtmr3: Sha384,
    #[serde(with = "hex48")]
    pub mrconfigid: Sha384,
    #[serde(with = "hex48")]
    pub mrowner: Sha384,
    #[serde(with = "hex48")]
    pub mrownerconfig: Sha384,
    /// Changes at every (simulated) reboot. Empty in files from before it existed.
    #[serde(default)]
    pub boot_id: String,
}

fn new_boot_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    format!("sim-{}", hex::encode(b))
}

impl TdState {
    /// The registers right after boot: firmware values from settings, RTMR3 zero (it belongs
    /// to the agent).
    pub fn boot(s: &SimSettings) -> TdState {
        TdState {
            mrtd: s.mrtd,
            rtmr0: s.rtmr0,
            rtmr1: s.rtmr1,
            rtmr2: s.rtmr2,
            rtmr3: [0; 48],
            mrconfigid: s.mrconfigid,
            mrowner: s.mrowner,
            mrownerconfig: s.mrownerconfig,
            boot_id: new_boot_id(),
        }
    }

    pub fn load(path: &Path) -> Result<TdState, SimError> {
        let text = fsio::read_string(path)?;
        serde_json::from_str(&text).map_err(|e| SimError::malformed(path, e))
    }

    pub fn save(&self, path: &Path) -> Result<(), SimError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| SimError::Other(format!("cannot encode TD state: {e}")))?;
        fsio::write_atomic(path, (text + "\n").as_bytes())
    }

    pub fn measurements(&self) -> Measurements {
        Measurements {
            mrtd: self.mrtd,
            rtmr: [self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3],
            mrconfigid: self.mrconfigid,
            mrowner: self.mrowner,
            mrownerconfig: self.mrownerconfig,
        }
    }

    fn rtmr_mut(&mut self, r: Rtmr) -> &mut Sha384 {
        match r {
            Rtmr::R0 => &mut self.rtmr0,
            Rtmr::R1 => &mut self.rtmr1,
            Rtmr::R2 => &mut self.rtmr2,
            Rtmr::R3 => &mut self.rtmr3,
        }
    }
}

/// Reboot the simulated TD: registers back to the boot values in settings, RTMR3 zero.
pub fn reset(dir: &SimDir) -> Result<(), SimError> {
    let settings = dir.settings()?;
    TdState::boot(&settings).save(&dir.td_state_path())
}

/// The simulated TD. Chosen only explicitly (`--tee sim`): its quotes verify only against the
/// simulated root.
pub struct SimTd {
    dir: SimDir,
    pki: Arc<SimPki>,
    /// Serialises read-modify-write of td-state.json within this process.
    state_lock: Mutex<()>,
}

impl std::fmt::Debug for SimTd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTd").field("dir", &self.dir).finish()
    }
}

impl SimTd {
    /// Open the TD of an existing simulation directory (and load its PKI).
    pub fn open(dir: &SimDir) -> Result<SimTd, SimError> {
        let pki = Arc::new(SimPki::load(dir)?);
        Ok(SimTd::new(dir.clone(), pki))
    }

    /// A TD over an already loaded PKI of the same directory.
    pub fn new(dir: SimDir, pki: Arc<SimPki>) -> SimTd {
        SimTd {
            dir,
            pki,
            state_lock: Mutex::new(()),
        }
    }

    pub fn pki(&self) -> &Arc<SimPki> {
        &self.pki
    }

    pub fn dir(&self) -> &SimDir {
        &self.dir
    }

    pub fn settings(&self) -> &SimSettings {
        self.pki.settings()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is the file, which every writer replaces atomically: a panic in
        // another holder cannot leave it half-written, so a poisoned lock is still usable.
        self.state_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> Result<TdState, SimError> {
        let _g = self.lock();
        TdState::load(&self.dir.td_state_path())
    }

    /// A builder preloaded with what this TD would put in a quote right now.
    pub fn quote_builder(&self, report_data: &ReportData) -> Result<QuoteBuilder<'_>, SimError> {
        let m = self.state()?.measurements();
        Ok(QuoteBuilder::new(
            &self.pki,
            self.pki.settings(),
            m,
            *report_data,
        ))
    }

    /// `RTMR = SHA-384(RTMR || digest)`, persisted before returning.
    pub fn extend(&self, rtmr: Rtmr, digest: &Sha384) -> Result<Sha384, SimError> {
        let _g = self.lock();
        let path = self.dir.td_state_path();
        let mut state = TdState::load(&path)?;
        let reg = state.rtmr_mut(rtmr);
        let mut h = Sha384Hasher::new();
        h.update(*reg);
        h.update(digest);
        *reg = h.finalize().into();
        let new = *reg;
        state.save(&path)?;
        Ok(new)
    }

    /// Reboot: registers back to their boot values.
    pub fn reset(&self) -> Result<(), SimError> {
        let _g = self.lock();
        TdState::boot(self.pki.settings()).save(&self.dir.td_state_path())
    }
}

impl Tee for SimTd {
    fn kind(&self) -> TeeKind {
        TeeKind::Simulated
    }

    fn quote(&self, report_data: &ReportData) -> Result<Vec<u8>, TeeError> {
        // Fault injection for tests (DIR/quote-hang): a quoting enclave that stops answering.
        // Polled rather than watched: 50 ms is nothing against a quote's second, and a stat
        // per poll costs nothing. Only the simulated TD has this; it is never production.
        let hang = self.dir.quote_hang_path();
        let mut announced = false;
        while hang.exists() {
            if !announced {
                tracing::warn!(switch = %hang.display(), "simulated TD: quote hangs while the switch exists");
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let delay = self.pki.settings().quote_delay_ms;
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        Ok(self.quote_builder(report_data)?.build()?)
    }

    fn measurements(&self) -> Result<Measurements, TeeError> {
        Ok(self.state()?.measurements())
    }

    fn extend_rtmr(&self, rtmr: Rtmr, digest: &Sha384) -> Result<(), TeeError> {
        self.extend(rtmr, digest)?;
        Ok(())
    }

    /// The boot named in td-state.json; an unreadable state is an error, never a made-up id
    /// (which would move this boot's RTMR3 log aside as another boot's).
    fn current_boot_id(&self) -> Result<String, TeeError> {
        let state = self.state()?;
        if state.boot_id.is_empty() {
            return Err(TeeError::BootId {
                path: self.dir.td_state_path(),
                detail: "the simulated TD's state names no boot".into(),
            });
        }
        Ok(state.boot_id)
    }

    fn boot_event_log(&self) -> Result<Vec<u8>, TeeError> {
        Err(TeeError::EventLogUnavailable {
            path: self.dir.path().to_path_buf(),
            detail: "the simulated TD has no CCEL boot event log (its RTMR0-2 are fixed values \
                     from settings.json)"
                .into(),
        })
    }
}
