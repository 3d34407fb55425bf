//! NVIDIA GPU confidential-computing evidence (docs/design.md §14): the SPDM 1.1 measurement
//! report a Hopper or Blackwell GPU in CC mode signs. This is the first layer of the GPU
//! verifier (issue 14): the strict parser, the report's signature by the leaf key, the
//! device chain to NVIDIA's pinned root, and the FWID against the leaf's DICE TcbInfo. The RIM and OCSP checks build on them.

mod chain;
mod compare;
mod fwid;
pub mod ocsp;
mod policy;
pub mod rim;
mod signature;
mod spdm;

pub use chain::{DEVICE_CHAIN_LEN, GpuChainError, NVIDIA_DEVICE_ROOT_PEM, verify_device_chain};
pub use compare::{
    CompareError, Compared, Golden, NVDEC0_DISABLED, NVDEC0_INDEX, Source, compare_measurements,
    nvdec0_disabled,
};
pub use fwid::{FWID_LEN, GpuFwidError, check_fwid, leaf_fwid};
pub use policy::{Architecture, DEFAULT_OCSP_MAX_AGE_SECS, DriverVersion, GpuPolicy, VbiosVersion};
pub use signature::{GpuSignatureError, chain_der, verify_report_signature};
pub use spdm::{
    BLOCK_DIGEST_LEN, MeasurementBlock, NONCE_LEN, OpaqueField, REQUEST_LEN, SIGNATURE_LEN,
    SpdmError, SpdmReport, opaque,
};

#[cfg(test)]
mod chain_tests;
#[cfg(test)]
mod compare_tests;
#[cfg(test)]
mod fwid_tests;
#[cfg(test)]
mod ocsp_tests;
#[cfg(test)]
mod signature_tests;
#[cfg(test)]
mod spdm_tests;
