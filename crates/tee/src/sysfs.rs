//! The TDX measurement registers as Linux 6.16+ exposes them in sysfs: read all, extend RTMRs.
//!
//! Each file under the measurements directory holds exactly 48 raw bytes; writing 48 bytes to
//! `rtmrN:sha384` makes the TDX module extend that register.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Measurements, Rtmr, Sha384, TeeError};

/// Where the tdx_guest driver publishes its measurement registers.
pub const DEFAULT_MEASUREMENTS_DIR: &str = "/sys/class/misc/tdx_guest/measurements";

/// Why extension is unavailable, in words an operator can act on.
const NEEDS_KERNEL: &str = "RTMR extension needs Linux 6.16+ with CONFIG_TSM_MEASUREMENTS (the tdx_guest measurement-register sysfs files)";

/// Bytes in one register file.
const REGISTER_LEN: usize = 48;

const RTMR_FILES: [&str; 4] = [
    "rtmr0:sha384",
    "rtmr1:sha384",
    "rtmr2:sha384",
    "rtmr3:sha384",
];

/// The measurement-register files in one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsRegisters {
    pub dir: PathBuf,
}

impl Default for SysfsRegisters {
    fn default() -> Self {
        Self::new(DEFAULT_MEASUREMENTS_DIR)
    }
}

impl SysfsRegisters {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// MRTD, RTMR0-3 and the owner registers.
    pub fn read_measurements(&self) -> Result<Measurements, TeeError> {
        Ok(Measurements {
            mrtd: self.read_register("mrtd:sha384")?,
            rtmr: [
                self.read_rtmr(Rtmr::R0)?,
                self.read_rtmr(Rtmr::R1)?,
                self.read_rtmr(Rtmr::R2)?,
                self.read_rtmr(Rtmr::R3)?,
            ],
            mrconfigid: self.read_register("mrconfigid")?,
            mrowner: self.read_register("mrowner")?,
            mrownerconfig: self.read_register("mrownerconfig")?,
        })
    }

    /// One RTMR's current value.
    pub fn read_rtmr(&self, rtmr: Rtmr) -> Result<Sha384, TeeError> {
        self.read_register(RTMR_FILES[rtmr.index()])
    }

    /// `RTMR_new = SHA-384(RTMR_old || digest)`, done by the TDX module.
    pub fn extend(&self, rtmr: Rtmr, digest: &Sha384) -> Result<(), TeeError> {
        let path = self.dir.join(RTMR_FILES[rtmr.index()]);
        // Never create: a regular file standing in for the attribute would swallow the
        // extension and make it look as if it had happened.
        let mut file = match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(TeeError::ExtendUnavailable {
                    reason: format!("{} does not exist; {NEEDS_KERNEL}", path.display()),
                });
            }
            Err(err) => return Err(refused(path, err)),
        };
        // One write of the whole digest: the kernel takes only a full 48-byte write at offset 0.
        file.write_all(digest).map_err(|err| refused(path, err))
    }

    fn read_register(&self, name: &'static str) -> Result<Sha384, TeeError> {
        let path = self.dir.join(name);
        // One byte more than a register is enough to tell a wrong file from a right one; a
        // file that never ends (a device mounted in its place) costs no more than that.
        let bytes =
            super::fsops::read_limited(&path, REGISTER_LEN).map_err(|source| TeeError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
        let len = bytes.len();
        Sha384::try_from(bytes.as_slice()).map_err(|_| TeeError::Malformed {
            path,
            what: name,
            detail: if len > REGISTER_LEN {
                format!("expected {REGISTER_LEN} raw bytes, read {len} or more")
            } else {
                format!("expected {REGISTER_LEN} raw bytes, read {len}")
            },
        })
    }
}

fn refused(path: PathBuf, err: std::io::Error) -> TeeError {
    match err.raw_os_error() {
        Some(errno) => TeeError::ExtendRefused {
            path,
            errno,
            detail: err.to_string(),
        },
        None => TeeError::Io {
            op: "write",
            path,
            source: err,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: [(&str, u8); 8] = [
        ("mrtd:sha384", 0x10),
        ("rtmr0:sha384", 0x20),
        ("rtmr1:sha384", 0x21),
        ("rtmr2:sha384", 0x22),
        ("rtmr3:sha384", 0x23),
        ("mrconfigid", 0x30),
        ("mrowner", 0x31),
        ("mrownerconfig", 0x32),
    ];

    fn populated() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for (name, byte) in FILES {
            std::fs::write(tmp.path().join(name), [byte; 48]).unwrap();
        }
        tmp
    }

    #[test]
    fn reads_all_registers() {
        let tmp = populated();
        let m = SysfsRegisters::new(tmp.path()).read_measurements().unwrap();
        assert_eq!(m.mrtd, [0x10; 48]);
        assert_eq!(m.rtmr, [[0x20; 48], [0x21; 48], [0x22; 48], [0x23; 48]]);
        assert_eq!(m.mrconfigid, [0x30; 48]);
        assert_eq!(m.mrowner, [0x31; 48]);
        assert_eq!(m.mrownerconfig, [0x32; 48]);
    }

    #[test]
    fn wrong_length_is_malformed_and_names_the_file() {
        for (len, name) in [
            (47usize, "rtmr2:sha384"),
            (49, "mrowner"),
            (0, "mrtd:sha384"),
        ] {
            let tmp = populated();
            std::fs::write(tmp.path().join(name), vec![0u8; len]).unwrap();
            let err = SysfsRegisters::new(tmp.path())
                .read_measurements()
                .unwrap_err();
            match err {
                TeeError::Malformed { path, what, detail } => {
                    assert_eq!(path, tmp.path().join(name));
                    assert_eq!(what, name);
                    assert!(detail.contains(&len.to_string()), "{detail}");
                }
                other => panic!("expected Malformed for {name}, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_oversized_register_file_is_read_only_one_byte_past_48() {
        let tmp = populated();
        std::fs::write(tmp.path().join("rtmr3:sha384"), vec![0u8; 1 << 20]).unwrap();
        let err = SysfsRegisters::new(tmp.path())
            .read_rtmr(Rtmr::R3)
            .unwrap_err();
        match err {
            TeeError::Malformed { path, detail, .. } => {
                assert!(path.ends_with("rtmr3:sha384"), "{path:?}");
                assert!(detail.contains("read 49 or more"), "{detail}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn missing_register_file_is_io_error() {
        let tmp = populated();
        std::fs::remove_file(tmp.path().join("mrownerconfig")).unwrap();
        let err = SysfsRegisters::new(tmp.path())
            .read_measurements()
            .unwrap_err();
        assert!(
            matches!(&err, TeeError::Io { op: "read", path, .. } if path.ends_with("mrownerconfig")),
            "{err:?}"
        );
    }

    #[test]
    fn extend_writes_exactly_48_bytes_to_the_rtmr_file() {
        let tmp = populated();
        let regs = SysfsRegisters::new(tmp.path());
        let digest = [0xAB; 48];
        regs.extend(Rtmr::R2, &digest).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("rtmr2:sha384")).unwrap(),
            digest.to_vec()
        );
        // The other registers are untouched.
        assert_eq!(regs.read_rtmr(Rtmr::R3).unwrap(), [0x23; 48]);
        assert_eq!(regs.read_rtmr(Rtmr::R0).unwrap(), [0x20; 48]);
    }

    #[test]
    fn extend_with_missing_dir_is_unavailable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("measurements");
        let err = SysfsRegisters::new(&dir)
            .extend(Rtmr::R3, &[1; 48])
            .unwrap_err();
        match err {
            TeeError::ExtendUnavailable { reason } => {
                assert!(reason.contains("6.16"), "{reason}");
                assert!(reason.contains("CONFIG_TSM_MEASUREMENTS"), "{reason}");
                assert!(reason.contains("rtmr3:sha384"), "{reason}");
            }
            other => panic!("expected ExtendUnavailable, got {other:?}"),
        }
        assert!(!dir.exists(), "extend must not create anything");
    }

    #[test]
    fn extend_with_missing_rtmr_file_is_unavailable_and_creates_nothing() {
        let tmp = populated();
        std::fs::remove_file(tmp.path().join("rtmr1:sha384")).unwrap();
        let err = SysfsRegisters::new(tmp.path())
            .extend(Rtmr::R1, &[1; 48])
            .unwrap_err();
        assert!(matches!(err, TeeError::ExtendUnavailable { .. }), "{err:?}");
        assert!(!tmp.path().join("rtmr1:sha384").exists());
    }

    #[test]
    fn extend_refusal_carries_the_errno() {
        let tmp = populated();
        let path = tmp.path().join("rtmr0:sha384");
        std::fs::remove_file(&path).unwrap();
        // A directory in place of the attribute makes open-for-write fail with EISDIR.
        std::fs::create_dir(&path).unwrap();
        let err = SysfsRegisters::new(tmp.path())
            .extend(Rtmr::R0, &[1; 48])
            .unwrap_err();
        match err {
            TeeError::ExtendRefused { path: p, errno, .. } => {
                assert_eq!(p, path);
                assert_eq!(errno, 21, "EISDIR");
            }
            other => panic!("expected ExtendRefused, got {other:?}"),
        }
    }
}
