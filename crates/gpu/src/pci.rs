//! NVIDIA GPUs on the PCI bus, from sysfs: how the agent notices GPUs its configuration says
//! nothing about, and GPUs NVML does not show, without loading any NVIDIA library.

use std::path::{Path, PathBuf};

pub const DEFAULT_PCI_DEVICES_DIR: &str = "/sys/bus/pci/devices";
pub const NVIDIA_VENDOR: &str = "0x10de";

/// The PCI addresses of NVIDIA display and 3D controllers (class 0x0300xx, 0x0302xx) under
/// `devices_dir`, sorted. NVSwitches (bridges) and audio functions are not GPUs. A missing
/// directory (no PCI bus in the guest) means none.
pub fn nvidia_gpus(devices_dir: &Path) -> Result<Vec<String>, PciError> {
    let err = |path: &Path, e: std::io::Error| PciError {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let entries = match std::fs::read_dir(devices_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(devices_dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err(devices_dir, e))?;
        let dir = entry.path();
        let read = |name: &str| -> Result<Option<String>, PciError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s.trim().to_ascii_lowercase())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(err(&p, e)),
            }
        };
        if read("vendor")?.as_deref() != Some(NVIDIA_VENDOR) {
            continue;
        }
        let class = read("class")?.unwrap_or_default();
        if class.starts_with("0x0300") || class.starts_with("0x0302") {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
#[error("reading PCI devices at {path}: {detail}")]
pub struct PciError {
    pub path: PathBuf,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn device(root: &Path, addr: &str, vendor: &str, class: &str) {
        let d = root.join(addr);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
    }

    #[test]
    fn finds_nvidia_gpus_only() {
        let tmp = tempfile::tempdir().unwrap();
        device(tmp.path(), "0000:c1:00.0", "0x10de", "0x030200"); // H100
        device(tmp.path(), "0000:41:00.0", "0x10DE", "0x030000"); // VGA
        device(tmp.path(), "0000:05:00.0", "0x10de", "0x068000"); // NVSwitch
        device(tmp.path(), "0000:41:00.1", "0x10de", "0x040300"); // audio
        device(tmp.path(), "0000:00:02.0", "0x8086", "0x030000"); // not NVIDIA
        assert_eq!(
            nvidia_gpus(tmp.path()).unwrap(),
            ["0000:41:00.0", "0000:c1:00.0"]
        );
        assert!(nvidia_gpus(&tmp.path().join("absent")).unwrap().is_empty());
    }
}
