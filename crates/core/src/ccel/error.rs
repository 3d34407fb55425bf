//! Errors from parsing the CCEL table and event log, each locating the fault precisely.

/// Why a CCEL table or event log was rejected. Event 0 is the Spec ID header; offsets are
/// byte offsets from the start of the buffer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CcelError {
    #[error("CCEL table is {len} bytes; an ACPI CCEL table is at least {min} bytes")]
    TableTooShort { len: usize, min: usize },

    #[error("CCEL table signature is {found:?}, expected \"CCEL\"")]
    TableSignature { found: String },

    #[error("CCEL table header declares {declared} bytes but {actual} were given")]
    TableLength { declared: u32, actual: usize },

    #[error("CCEL table checksum is wrong: its bytes sum to {sum:#04x} instead of 0")]
    TableChecksum { sum: u8 },

    #[error(
        "event {seq} at offset {event_offset:#x}: truncated at offset {offset:#x} reading \
         {field} (need {need} bytes, {left} left)"
    )]
    Truncated {
        seq: usize,
        event_offset: usize,
        offset: usize,
        field: &'static str,
        need: u64,
        left: usize,
    },

    #[error("event 0 (Spec ID header) at offset {offset:#x}: {field}: {reason}")]
    SpecId {
        offset: usize,
        field: &'static str,
        reason: String,
    },

    #[error(
        "event {seq} at offset {event_offset:#x}: digest count {count} exceeds the {algorithms} \
         algorithms in the Spec ID header"
    )]
    DigestCount {
        seq: usize,
        event_offset: usize,
        count: u32,
        algorithms: usize,
    },

    #[error(
        "event {seq} at offset {event_offset:#x}: digest algorithm {alg:#06x} at offset \
         {offset:#x} is not listed in the Spec ID header"
    )]
    UnknownAlgorithm {
        seq: usize,
        event_offset: usize,
        offset: usize,
        alg: u16,
    },

    #[error(
        "event {seq} at offset {event_offset:#x}: digest algorithm {alg:#06x} appears twice \
         (again at offset {offset:#x})"
    )]
    DuplicateDigest {
        seq: usize,
        event_offset: usize,
        offset: usize,
        alg: u16,
    },

    #[error("event {seq} at offset {event_offset:#x} ({event_type}): no SHA-384 digest")]
    MissingSha384 {
        seq: usize,
        event_offset: usize,
        event_type: String,
    },

    #[error(
        "event {seq} at offset {event_offset:#x} ({event_type}): MR index 0 is MRTD, which \
         firmware must never extend"
    )]
    MrtdExtended {
        seq: usize,
        event_offset: usize,
        event_type: String,
    },

    #[error(
        "event {seq} at offset {event_offset:#x} ({event_type}): MR index {mr_index} is not an \
         RTMR (indexes 1..=4 are RTMR0..3)"
    )]
    MrIndexOutOfRange {
        seq: usize,
        event_offset: usize,
        mr_index: u32,
        event_type: String,
    },
}
