//! The NVML source: libnvidia-ml loaded at run time through `nvml-wrapper`, so a TD without
//! the NVIDIA driver runs the agent unchanged and only a configured `source = "nvml"` fails.

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use tdx_core::gpu::CcMode;

use super::{CollectedGpu, GpuSource, GpuSourceError, RawEvidence};

pub struct NvmlSource {
    nvml: Nvml,
}

impl NvmlSource {
    /// Load and initialise NVML. Blocking: call it on the collector's thread
    /// ([`super::Collector::open`]).
    pub fn open() -> Result<Self, GpuSourceError> {
        Nvml::init()
            .map(|nvml| Self { nvml })
            .map_err(|e| GpuSourceError::new(None, "loading NVML", open_hint(&e)))
    }
}

/// Why NVML would not start, and what to do: a missing library wants the driver installed,
/// while a driver NVML cannot reach is most often the agent's own sandbox (its unit's private
/// /dev has no /dev/nvidia*).
fn open_hint(e: &NvmlError) -> String {
    let what = describe(e);
    match e {
        NvmlError::LibloadingError(_) | NvmlError::FailedToLoadSymbol(_) => format!(
            "{what}; install the NVIDIA driver (it provides libnvidia-ml.so.1) in the TD, or set gpu.source differently"
        ),
        _ => format!(
            "{what}; NVML needs /dev/nvidiactl and /dev/nvidiaN: under systemd install \
             systemd/tdx-agent-nvidia-gpus.conf as a drop-in of tdx-agent.service \
             (image/build.sh --nvidia-gpus), and check that the driver is loaded \
             (nvidia-persistenced running, nvidia-smi works as root)"
        ),
    }
}

/// NVML's errors, with the raw code where NVML gave one nvml-wrapper does not name: NVIDIA's
/// tools report those codes (999 is what a GPU with CC off answers for the report).
fn describe(e: &NvmlError) -> String {
    match e {
        NvmlError::UnexpectedVariant(code) => format!("NVML error {code}"),
        NvmlError::Unknown => "NVML error 999 (unknown)".into(),
        other => other.to_string(),
    }
}

impl GpuSource for NvmlSource {
    fn describe(&self) -> String {
        "NVML".into()
    }

    fn count(&mut self) -> Result<u32, GpuSourceError> {
        self.nvml
            .device_count()
            .map_err(|e| GpuSourceError::new(None, "nvmlDeviceGetCount", describe(&e)))
    }

    fn collect(&mut self, index: u32, nonce: &[u8; 32]) -> Result<CollectedGpu, GpuSourceError> {
        let at = |call: &'static str| {
            move |e: NvmlError| GpuSourceError::new(Some(index), call, describe(&e))
        };
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(at("nvmlDeviceGetHandleByIndex"))?;
        let uuid = device.uuid().map_err(at("nvmlDeviceGetUUID"))?;
        let driver_version = self
            .nvml
            .sys_driver_version()
            .map_err(at("nvmlSystemGetDriverVersion"))?;
        let vbios_version = device
            .vbios_version()
            .map_err(at("nvmlDeviceGetVbiosVersion"))?;
        let cc_on = device
            .is_cc_enabled()
            .map_err(at("nvmlSystemGetConfComputeSettings"))?;
        let devtools = device
            .is_cc_dev_mode_enabled()
            .map_err(at("nvmlSystemGetConfComputeSettings"))?;
        let protected_pcie = device
            .is_multi_gpu_protected_pcie_enabled()
            .map_err(at("nvmlSystemGetConfComputeSettings"))?;
        let ready = device
            .get_confidential_compute_state()
            .map_err(at("nvmlSystemGetConfComputeGpusReadyState"))?;
        let cc_mode = match (cc_on, devtools) {
            (false, _) => CcMode::Off,
            (true, true) => CcMode::Devtools,
            (true, false) => CcMode::On,
        };
        // With CC off NVML has no report to give (error 999): the state says why.
        let evidence = if cc_mode == CcMode::Off {
            None
        } else {
            let report = device
                .confidential_compute_gpu_attestation_report(*nonce)
                .map_err(at("nvmlDeviceGetConfComputeGpuAttestationReport"))?;
            let cert = device
                .confidential_compute_gpu_certificate()
                .map_err(at("nvmlDeviceGetConfComputeGpuCertificate"))?;
            Some(RawEvidence {
                report: report.attestation_report,
                chain_pem: cert.attestation_cert_chain,
            })
        };
        Ok(CollectedGpu {
            index,
            uuid,
            driver_version,
            vbios_version,
            cc_mode,
            ready,
            protected_pcie,
            evidence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_nvml_cannot_reach_points_at_the_sandbox_not_the_install() {
        // A private /dev (the unit without its GPU drop-in) shows as a driver NVML cannot
        // open: telling the operator to install a driver that is installed sends them astray.
        for e in [NvmlError::DriverNotLoaded, NvmlError::NoPermission] {
            let hint = open_hint(&e);
            assert!(hint.contains("tdx-agent-nvidia-gpus.conf"), "{hint}");
            assert!(!hint.contains("install the NVIDIA driver"), "{hint}");
        }
        let hint = open_hint(&NvmlError::FailedToLoadSymbol("nvmlInit_v2".into()));
        assert!(hint.contains("install the NVIDIA driver"), "{hint}");
    }
}
