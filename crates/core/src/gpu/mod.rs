//! NVIDIA GPU confidential-computing evidence (docs/design.md §14), verified offline at an
//! explicit time: the SPDM 1.1 measurement report a Hopper or Blackwell GPU in CC mode signs,
//! its device chain to NVIDIA's pinned root and the FWID in the leaf, the driver and VBIOS
//! RIMs (signed XML) with the measurement comparison, and revocation from stapled OCSP
//! answers; [`verify_gpu`] runs them all under the policy's `[gpu]` table.

mod cache;
mod chain;
mod collateral;
mod compare;
mod evidence_set;
mod fwid;
mod link;
pub mod ocsp;
mod p384_sha384;
mod policy;
mod report;
pub mod rim;
mod signature;
mod spdm;
mod verify;

pub use chain::{DEVICE_CHAIN_LEN, GpuChainError, NVIDIA_DEVICE_ROOT_PEM, verify_device_chain};
pub use collateral::{
    GPU_COLLATERAL_FORMAT, GpuCollateralError, decode_ocsp_file, decode_report_file, valid_rim_id,
};
pub use compare::{
    CompareError, Compared, Golden, NVDEC0_DISABLED, NVDEC0_INDEX, Source, compare_measurements,
    nvdec0_disabled,
};
pub use evidence_set::{
    CcMode, GPU_EVENT, GPU_EVIDENCE_FORMAT, GPU_NONCE_DOMAIN, GpuEventData, GpuEvidence,
    GpuEvidenceError, GpuEvidenceSet, MAX_GPUS, MultiGpuMode, nonce_for_batch,
    nonce_for_certificate,
};
pub use fwid::{FWID_LEN, GpuFwidError, check_fwid, leaf_fwid};
pub use policy::{Architecture, DEFAULT_OCSP_MAX_AGE_SECS, DriverVersion, GpuPolicy, VbiosVersion};
pub use report::{GpuReport, GpuRootView, GpuView, Skipped};
pub use rim::{NVIDIA_RIM_ROOT_PEM, Rim, RimMeasurement};
pub use signature::{GpuSignatureError, chain_der, verify_report_signature};
pub use spdm::{
    BLOCK_DIGEST_LEN, MeasurementBlock, NONCE_LEN, OpaqueField, REQUEST_LEN, SIGNATURE_LEN,
    SpdmError, SpdmReport, opaque,
};
pub use verify::{
    GpuCollateral, GpuEvidenceRef, GpuRoots, GpuRootsError, GpuVerifier, RimFile, RimKind, check,
    rim_ids, verify_gpu,
};

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod chain_tests;
#[cfg(test)]
mod compare_tests;
#[cfg(test)]
mod fwid_tests;
#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod ocsp_tests;
#[cfg(test)]
mod signature_tests;
#[cfg(test)]
mod spdm_tests;
#[cfg(test)]
mod verify_tests;
