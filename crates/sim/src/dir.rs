//! `SimDir`: the one on-disk layout every simulating command shares (`--sim-dir DIR`).
//!
//! ```text
//! DIR/root.der        simulated root CA certificate (clients' --insecure-root)
//! DIR/pki/            keys (PKCS#8 PEM, 0600) and certificates (DER)
//! DIR/settings.json   SimSettings
//! DIR/td-state.json   live registers of the simulated TD
//! DIR/quote-hang      fault injection for tests: while it exists, quotes hang
//! ```

use std::path::{Path, PathBuf};

use super::fsio;
use super::pki::{create_pki, missing_pki_files};
use super::td::TdState;
use super::{SimError, SimSettings};

pub const ROOT_DER: &str = "root.der";
pub const PKI_DIR: &str = "pki";
pub const SETTINGS_JSON: &str = "settings.json";
pub const TD_STATE_JSON: &str = "td-state.json";
/// Fault-injection switch for tests: while a file (or anything) by this name exists in the
/// simulation directory, [`super::SimTd`]'s quotes hang, and they finish once it is removed.
/// It exercises the agent's quote timeout; the simulated TD is never used in production.
pub const QUOTE_HANG: &str = "quote-hang";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDir {
    path: PathBuf,
}

impl SimDir {
    /// Open a complete simulation directory. A missing or half-made one is an error that says
    /// how to create it.
    pub fn open(path: &Path) -> Result<SimDir, SimError> {
        let dir = SimDir {
            path: path.to_path_buf(),
        };
        let mut required = vec![
            dir.settings_path(),
            dir.root_der_path(),
            dir.td_state_path(),
        ];
        required.extend(missing_pki_files(&dir.pki_dir())?);
        for p in required {
            if !fsio::exists(&p)? {
                return Err(SimError::NotInitialised {
                    dir: dir.path.clone(),
                    missing: p,
                });
            }
        }
        Ok(dir)
    }

    /// Open the directory, creating whatever is missing: default settings, the PKI, root.der
    /// and the TD registers at their boot values. Existing parts are kept, so every command
    /// pointed at the same DIR sees the same PKI.
    pub fn open_or_create(path: &Path) -> Result<SimDir, SimError> {
        SimDir::create_inner(path, None)
    }

    /// Like [`SimDir::open_or_create`] but (over)writes settings.json with `settings` first.
    pub fn open_or_create_with(path: &Path, settings: &SimSettings) -> Result<SimDir, SimError> {
        settings.validate()?;
        SimDir::create_inner(path, Some(settings))
    }

    fn create_inner(path: &Path, settings: Option<&SimSettings>) -> Result<SimDir, SimError> {
        fsio::create_dir_all(path)?;
        let dir = SimDir {
            path: path.to_path_buf(),
        };
        match settings {
            Some(s) => dir.write_settings(s)?,
            None => {
                if !fsio::exists(&dir.settings_path())? {
                    dir.write_settings(&SimSettings::default())?;
                }
            }
        }
        let settings = dir.settings()?;
        dir.ensure_pki()?;
        if !fsio::exists(&dir.td_state_path())? {
            TdState::boot(&settings).save(&dir.td_state_path())?;
        }
        Ok(dir)
    }

    /// Create the PKI if there is none, and publish root.der from it. A partial PKI, or a
    /// root.der without a PKI, is never silently replaced: clients may already trust that root.
    pub(crate) fn ensure_pki(&self) -> Result<(), SimError> {
        let pki = self.pki_dir();
        if !fsio::exists(&pki)? {
            if fsio::exists(&self.root_der_path())? {
                return Err(SimError::HalfMade {
                    dir: self.path.clone(),
                    detail: format!("{} exists but {} does not", ROOT_DER, pki.display()),
                });
            }
            create_pki(&self.path)?;
        }
        if let Some(missing) = missing_pki_files(&pki)?.into_iter().next() {
            return Err(SimError::HalfMade {
                dir: self.path.clone(),
                detail: format!("{} is missing", missing.display()),
            });
        }
        let root = fsio::read(&pki.join("root.der"))?;
        let published = self.root_der_path();
        let current = if fsio::exists(&published)? {
            Some(fsio::read(&published)?)
        } else {
            None
        };
        match current {
            None => fsio::write_atomic(&published, &root),
            Some(c) if c == root => Ok(()),
            Some(_) => Err(SimError::HalfMade {
                dir: self.path.clone(),
                detail: format!("{ROOT_DER} differs from {PKI_DIR}/root.der"),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn root_der_path(&self) -> PathBuf {
        self.path.join(ROOT_DER)
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.path.join(PKI_DIR)
    }

    pub fn settings_path(&self) -> PathBuf {
        self.path.join(SETTINGS_JSON)
    }

    pub fn td_state_path(&self) -> PathBuf {
        self.path.join(TD_STATE_JSON)
    }

    /// The fault-injection switch ([`QUOTE_HANG`]).
    pub fn quote_hang_path(&self) -> PathBuf {
        self.path.join(QUOTE_HANG)
    }

    /// DER of the simulated root CA as published in DIR/root.der.
    pub fn root_der(&self) -> Result<Vec<u8>, SimError> {
        fsio::read(&self.root_der_path())
    }

    /// Read and validate settings.json.
    pub fn settings(&self) -> Result<SimSettings, SimError> {
        let path = self.settings_path();
        let text = fsio::read_string(&path)?;
        SimSettings::from_json(&text).map_err(|e| SimError::malformed(&path, e))
    }

    /// Validate and atomically replace settings.json.
    pub fn write_settings(&self, settings: &SimSettings) -> Result<(), SimError> {
        settings.validate()?;
        fsio::write_atomic(&self.settings_path(), settings.to_json().as_bytes())
    }
}
