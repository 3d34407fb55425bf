//! Offsets and constants of the DCAP TD quote (Intel TDX DCAP Quoting Library API, appendix A).

pub const HEADER_LEN: usize = 48;
pub const TD10_BODY_LEN: usize = 584;
pub const TD15_BODY_LEN: usize = 648;
pub const QE_REPORT_LEN: usize = 384;

pub const TEE_TYPE_SGX: u32 = 0x0000_0000;
pub const TEE_TYPE_TDX: u32 = 0x0000_0081;
pub const ATTESTATION_KEY_ECDSA_P256: u16 = 2;
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

pub const V5_BODY_TD10: u16 = 2;
pub const V5_BODY_TD15: u16 = 3;

pub const CERT_DATA_PCK_CHAIN: u16 = 5;
pub const CERT_DATA_QE_REPORT: u16 = 6;

// TD report body offsets.
pub const OFF_TEE_TCB_SVN: usize = 0;
pub const OFF_MRSEAM: usize = 16;
pub const OFF_MRSIGNERSEAM: usize = 64;
pub const OFF_SEAM_ATTRIBUTES: usize = 112;
pub const OFF_TD_ATTRIBUTES: usize = 120;
pub const OFF_XFAM: usize = 128;
pub const OFF_MRTD: usize = 136;
pub const OFF_MRCONFIGID: usize = 184;
pub const OFF_MROWNER: usize = 232;
pub const OFF_MROWNERCONFIG: usize = 280;
pub const OFF_RTMR0: usize = 328;
pub const OFF_REPORT_DATA: usize = 520;
pub const OFF_TEE_TCB_SVN2: usize = 584;
pub const OFF_MRSERVICETD: usize = 600;

// TDATTRIBUTES bits (Intel TDX Module ABI specification, TD attributes).
pub const TD_ATTR_DEBUG: u64 = 1 << 0;
/// The TD-under-debug profiling bits: HGS_PLUS_PROF (4), PERF_PROF (5), PMT_PROF (6). Like
/// DEBUG, each lets the host observe the TD; the other bits of the group are reserved (and
/// refused by dcap-qvl whatever its settings).
pub const TD_ATTR_PROFILING: [(u64, &str); 3] = [
    (1 << 4, "HGS_PLUS_PROF"),
    (1 << 5, "PERF_PROF"),
    (1 << 6, "PMT_PROF"),
];
/// SERVTD_EXT: a service TD may be bound to the TD after it was created (TDX 1.5).
pub const TD_ATTR_SERVTD_EXT: u64 = 1 << 17;
pub const TD_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;
