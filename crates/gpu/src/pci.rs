//! NVIDIA GPUs on the PCI bus, from sysfs: how the agent notices GPUs its configuration says
//! nothing about, and GPUs NVML does not show, without loading any NVIDIA library.

use std::path::{Path, PathBuf};

pub const DEFAULT_PCI_DEVICES_DIR: &str = "/sys/bus/pci/devices";
pub const NVIDIA_VENDOR: &str = "0x10de";

/// The PCI addresses of NVIDIA display and 3D controllers (class 0x0300xx, 0x0302xx) under
/// `devices_dir`, sorted. NVSwitches (bridges) and audio functions are not GPUs.
///
/// A missing directory is an error, since "no GPU" here switches off the checks that GPUs
/// are configured and all seen by NVML. The one exception is the default path on a kernel
/// without PCI support, where there can be no GPU: sysfs is mounted (`/sys/bus` exists) but
/// has no `pci` bus. Without sysfs (a container not given `/sys`) it is still an error.
pub fn nvidia_gpus(devices_dir: &Path) -> Result<Vec<String>, PciError> {
    scan(devices_dir, Path::new(DEFAULT_PCI_DEVICES_DIR))
}

fn scan(devices_dir: &Path, default_dir: &Path) -> Result<Vec<String>, PciError> {
    let err = |path: &Path, e: std::io::Error| PciError {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let entries = match std::fs::read_dir(devices_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // default_dir is BUS/pci/devices: BUS without its pci directory is that kernel.
            let bus = default_dir.parent().and_then(Path::parent);
            let bus_pci = default_dir.parent();
            if devices_dir == default_dir
                && bus.is_some_and(Path::is_dir)
                && bus_pci.is_some_and(|p| !p.exists())
            {
                return Ok(Vec::new());
            }
            return Err(PciError {
                path: devices_dir.to_path_buf(),
                detail: format!(
                    "{e}: without it GPUs the configuration does not name go unnoticed; set gpu.pci_devices_dir to where sysfs lists PCI devices (default {DEFAULT_PCI_DEVICES_DIR})"
                ),
            });
        }
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
    }

    #[test]
    fn a_missing_directory_is_an_error_unless_the_kernel_has_no_pci_bus() {
        let tmp = tempfile::tempdir().unwrap();
        let err = nvidia_gpus(&tmp.path().join("absent")).unwrap_err();
        assert_eq!(err.path, tmp.path().join("absent"));
        assert!(err.to_string().contains("gpu.pci_devices_dir"), "{err}");

        // The default path, with sysfs mounted but no pci bus: no GPU can be there.
        let default = tmp.path().join("sys/bus/pci/devices");
        std::fs::create_dir_all(tmp.path().join("sys/bus/platform")).unwrap();
        assert!(scan(&default, &default).unwrap().is_empty());
        // Another path missing on that kernel is still a mistake in the configuration.
        assert!(scan(&tmp.path().join("sys/bus/pcie/devices"), &default).is_err());
        // A pci bus without its devices directory is not "no PCI".
        std::fs::create_dir_all(tmp.path().join("sys/bus/pci")).unwrap();
        assert!(scan(&default, &default).is_err());
        // Without sysfs at all the GPUs are merely out of sight.
        let unmounted = tmp.path().join("nosys/bus/pci/devices");
        assert!(scan(&unmounted, &unmounted).is_err());
    }
}
