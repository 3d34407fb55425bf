//! The 56-byte ACPI CCEL table: which confidential-computing platform wrote the boot event
//! log and where its log area lives.

use super::CcelError;

/// Size of the CCEL table defined by ACPI 6.5 (header 36 bytes + 20 bytes of CCEL fields).
pub const CCEL_TABLE_LEN: usize = 56;

/// ACPI CC type of an Intel TDX guest.
const CC_TYPE_TDX: u8 = 2;

/// The parsed ACPI CCEL table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcelTable {
    pub signature: [u8; 4],
    pub length: u32,
    pub revision: u8,
    pub checksum: u8,
    pub oem_id: [u8; 6],
    pub oem_table_id: [u8; 8],
    pub oem_revision: u32,
    pub creator_id: [u8; 4],
    pub creator_revision: u32,
    /// 1 = AMD SEV, 2 = Intel TDX.
    pub cc_type: u8,
    pub cc_subtype: u8,
    pub reserved: u16,
    /// Log area minimum length (bytes).
    pub laml: u64,
    /// Log area start (guest physical address).
    pub lasa: u64,
}

impl CcelTable {
    /// Parses and validates (signature, declared length, checksum) a CCEL table as read from
    /// [`super::CCEL_TABLE_PATH`].
    pub fn parse(buf: &[u8]) -> Result<Self, CcelError> {
        let Some(fixed) = buf.first_chunk::<CCEL_TABLE_LEN>() else {
            return Err(CcelError::TableTooShort {
                len: buf.len(),
                min: CCEL_TABLE_LEN,
            });
        };
        let signature = arr::<4>(fixed, 0);
        if &signature != b"CCEL" {
            return Err(CcelError::TableSignature {
                found: signature.escape_ascii().to_string(),
            });
        }
        let length = u32::from_le_bytes(arr(fixed, 4));
        // sysfs hands out exactly the table, so any other length means a different or
        // damaged table, and the checksum below only covers the declared bytes.
        if usize::try_from(length).ok() != Some(buf.len()) {
            return Err(CcelError::TableLength {
                declared: length,
                actual: buf.len(),
            });
        }
        let sum = buf.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
        if sum != 0 {
            return Err(CcelError::TableChecksum { sum });
        }
        Ok(CcelTable {
            signature,
            length,
            revision: fixed[8],
            checksum: fixed[9],
            oem_id: arr(fixed, 10),
            oem_table_id: arr(fixed, 16),
            oem_revision: u32::from_le_bytes(arr(fixed, 24)),
            creator_id: arr(fixed, 28),
            creator_revision: u32::from_le_bytes(arr(fixed, 32)),
            cc_type: fixed[36],
            cc_subtype: fixed[37],
            reserved: u16::from_le_bytes(arr(fixed, 38)),
            laml: u64::from_le_bytes(arr(fixed, 40)),
            lasa: u64::from_le_bytes(arr(fixed, 48)),
        })
    }

    /// Whether the table says an Intel TDX guest wrote the log.
    pub fn is_tdx(&self) -> bool {
        self.cc_type == CC_TYPE_TDX
    }
}

/// `N` bytes at `at` of the fixed-size table; every call site stays within the 56 bytes.
fn arr<const N: usize>(fixed: &[u8; CCEL_TABLE_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = fixed.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}
