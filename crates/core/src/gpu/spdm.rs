//! The GPU's attestation report as NVML returns it: the SPDM 1.1 GET_MEASUREMENTS request
//! followed by the signed MEASUREMENTS response, parsed by declared lengths. Every byte is
//! accounted for: a length that runs past the end, a field with a value this format never
//! has, or a byte after the signature is an error naming the field and its offset.

/// SPDM version 1.1, as both messages carry it.
const SPDM_1_1: u8 = 0x11;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
/// Request attribute: a signature is requested.
const SIGNATURE_REQUESTED: u8 = 0x01;
/// Request operation: every measurement block.
const ALL_BLOCKS: u8 = 0xFF;
/// Measurement specification: DMTF.
const DMTF_SPEC: u8 = 0x01;

pub const NONCE_LEN: usize = 32;
/// The request: version, code, attributes, operation, nonce, slot.
pub const REQUEST_LEN: usize = 4 + NONCE_LEN + 1;
/// Raw ECDSA P-384 `r || s`.
pub const SIGNATURE_LEN: usize = 96;
/// Every block NVIDIA's GPUs report is a SHA-384 digest.
pub const BLOCK_DIGEST_LEN: usize = 48;

/// Opaque-data field types NVIDIA's GPUs report (docs/design.md §14).
pub mod opaque {
    pub const DRIVER_VERSION: u16 = 3;
    pub const VBIOS_VERSION: u16 = 6;
    pub const NVDEC0_STATUS: u16 = 11;
    pub const CHIP_SKU: u16 = 15;
    pub const PROJECT: u16 = 17;
    pub const PROJECT_SKU: u16 = 18;
    pub const FWID: u16 = 20;
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    pub const CHIP_INFO: u16 = 35;
    pub const FEATURE_FLAG: u16 = 36;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdmError {
    #[error("GPU report: {field} at offset {offset} needs {need} bytes, {have} remain")]
    Truncated {
        field: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("GPU report: {field} at offset {offset} is {found}, expected {expected}")]
    Field {
        field: &'static str,
        offset: usize,
        expected: String,
        found: String,
    },
    #[error(
        "GPU report: {count} bytes after the signature (offset {offset}); the declared lengths \
         end there"
    )]
    Trailing { offset: usize, count: usize },
}

/// One DMTF measurement block: its index and the digest the GPU measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock {
    pub index: u8,
    /// DMTFSpecMeasurementValueType (bit 7: raw bit stream rather than a digest).
    pub value_type: u8,
    pub value: Vec<u8>,
}

/// One opaque-data TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueField {
    pub kind: u16,
    pub value: Vec<u8>,
}

/// A parsed report. The bytes the signature covers are `raw[..signed_len()]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpdmReport {
    /// The nonce the verifier asked for: the one to check.
    pub request_nonce: [u8; NONCE_LEN],
    pub slot: u8,
    pub blocks: Vec<MeasurementBlock>,
    pub responder_nonce: [u8; NONCE_LEN],
    pub opaque: Vec<OpaqueField>,
    pub signature: [u8; SIGNATURE_LEN],
    signed_len: usize,
}

/// A cursor that names what it reads in its errors.
struct Reader<'a> {
    b: &'a [u8],
    off: usize,
    /// Where `b` starts in the whole report, for offsets in errors.
    base: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], SpdmError> {
        let have = self.b.len().saturating_sub(self.off);
        if n > have {
            return Err(SpdmError::Truncated {
                field,
                offset: self.base + self.off,
                need: n,
                have,
            });
        }
        let s = &self.b[self.off..self.off + n];
        self.off += n;
        Ok(s)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, SpdmError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, SpdmError> {
        let s = self.take(2, field)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u24(&mut self, field: &'static str) -> Result<usize, SpdmError> {
        let s = self.take(3, field)?;
        Ok(usize::from(s[0]) | usize::from(s[1]) << 8 | usize::from(s[2]) << 16)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], SpdmError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// Read one byte that must be `expected`.
    fn expect(&mut self, expected: u8, field: &'static str) -> Result<(), SpdmError> {
        let offset = self.base + self.off;
        let found = self.u8(field)?;
        if found == expected {
            Ok(())
        } else {
            Err(SpdmError::Field {
                field,
                offset,
                expected: format!("{expected:#04x}"),
                found: format!("{found:#04x}"),
            })
        }
    }
}

impl SpdmReport {
    /// Parse a whole report (request then response); nothing may follow the signature.
    pub fn parse(raw: &[u8]) -> Result<Self, SpdmError> {
        let mut r = Reader {
            b: raw,
            off: 0,
            base: 0,
        };
        r.expect(SPDM_1_1, "request SPDMVersion")?;
        r.expect(GET_MEASUREMENTS, "request RequestResponseCode")?;
        r.expect(
            SIGNATURE_REQUESTED,
            "request attributes (signature requested)",
        )?;
        r.expect(ALL_BLOCKS, "request operation (all blocks)")?;
        let request_nonce = r.array::<NONCE_LEN>("request nonce")?;
        let slot = r.u8("request SlotID")?;

        r.expect(SPDM_1_1, "response SPDMVersion")?;
        r.expect(MEASUREMENTS, "response RequestResponseCode")?;
        r.take(2, "response Param1, Param2")?;
        let count_offset = r.off;
        let count = r.u8("NumberOfBlocks")?;
        let record_len = r.u24("MeasurementRecordLength")?;
        let record_start = r.off;
        let record = r.take(record_len, "MeasurementRecord")?;
        let blocks = parse_blocks(record, record_start)?;
        if blocks.len() != usize::from(count) {
            return Err(SpdmError::Field {
                field: "NumberOfBlocks",
                offset: count_offset,
                expected: format!("{} (the blocks in MeasurementRecord)", blocks.len()),
                found: count.to_string(),
            });
        }
        let responder_nonce = r.array::<NONCE_LEN>("responder nonce")?;
        let opaque_len = usize::from(r.u16("OpaqueDataLength")?);
        let opaque_start = r.off;
        let opaque_bytes = r.take(opaque_len, "OpaqueData")?;
        let opaque = parse_opaque(opaque_bytes, opaque_start)?;
        let signed_len = r.off;
        let signature = r.array::<SIGNATURE_LEN>("signature")?;
        if r.off != raw.len() {
            return Err(SpdmError::Trailing {
                offset: r.off,
                count: raw.len() - r.off,
            });
        }
        Ok(SpdmReport {
            request_nonce,
            slot,
            blocks,
            responder_nonce,
            opaque,
            signature,
            signed_len,
        })
    }

    /// How many leading bytes of the raw report the signature covers (everything before it).
    pub fn signed_len(&self) -> usize {
        self.signed_len
    }

    /// The first opaque field of `kind`.
    pub fn opaque_field(&self, kind: u16) -> Option<&[u8]> {
        self.opaque
            .iter()
            .find(|f| f.kind == kind)
            .map(|f| f.value.as_slice())
    }

    /// The driver version the report states (opaque field 3: ASCII up to the first NUL), if
    /// present and printable.
    pub fn driver_version(&self) -> Option<String> {
        let v = self.opaque_field(opaque::DRIVER_VERSION)?;
        let text: Vec<u8> = v.iter().copied().take_while(|b| *b != 0).collect();
        let printable = !text.is_empty() && text.iter().all(u8::is_ascii_graphic);
        printable.then(|| String::from_utf8_lossy(&text).into_owned())
    }

    /// The VBIOS version as NVIDIA writes it (`96.00.9F.00.01`): opaque field 6 holds it as
    /// bytes 3, 2, 1, 0 then 4 of the little-endian value.
    pub fn vbios_version(&self) -> Option<String> {
        let v = self.opaque_field(opaque::VBIOS_VERSION)?;
        let b = v.get(..5)?;
        Some(format!(
            "{:02X}.{:02X}.{:02X}.{:02X}.{:02X}",
            b[3], b[2], b[1], b[0], b[4]
        ))
    }

    /// Whether the request carried `expected`, the nonce the verifier chose.
    pub fn nonce_matches(&self, expected: &[u8; NONCE_LEN]) -> bool {
        &self.request_nonce == expected
    }

    /// The block with `index` (SPDM indices count from 1).
    pub fn block(&self, index: u8) -> Option<&MeasurementBlock> {
        self.blocks.iter().find(|b| b.index == index)
    }
}

fn parse_blocks(record: &[u8], base: usize) -> Result<Vec<MeasurementBlock>, SpdmError> {
    let mut r = Reader {
        b: record,
        off: 0,
        base,
    };
    let mut blocks: Vec<MeasurementBlock> = Vec::new();
    while r.off < record.len() {
        let at = base + r.off;
        let index = r.u8("measurement block Index")?;
        // 0 and 0xFF are request codes (DSP0274: "total number of indices" and "all
        // measurements"), never the index of a block in a response.
        if index == 0 || index == 0xFF || blocks.iter().any(|b| b.index == index) {
            return Err(SpdmError::Field {
                field: "measurement block Index",
                offset: at,
                expected: "1..=254, each index once".into(),
                found: index.to_string(),
            });
        }
        r.expect(
            DMTF_SPEC,
            "measurement block MeasurementSpecification (DMTF)",
        )?;
        let size = usize::from(r.u16("measurement block MeasurementSize")?);
        let body_at = base + r.off;
        let body = r.take(size, "measurement block Measurement")?;
        let mut m = Reader {
            b: body,
            off: 0,
            base: body_at,
        };
        let value_type = m.u8("DMTFSpecMeasurementValueType")?;
        let value_size = usize::from(m.u16("DMTFSpecMeasurementValueSize")?);
        if value_size + 3 != size {
            return Err(SpdmError::Field {
                field: "DMTFSpecMeasurementValueSize",
                offset: body_at + 1,
                expected: format!("{} (MeasurementSize - 3)", size.saturating_sub(3)),
                found: value_size.to_string(),
            });
        }
        let value = m.take(value_size, "DMTFSpecMeasurementValue")?.to_vec();
        blocks.push(MeasurementBlock {
            index,
            value_type,
            value,
        });
    }
    Ok(blocks)
}

fn parse_opaque(bytes: &[u8], base: usize) -> Result<Vec<OpaqueField>, SpdmError> {
    let mut r = Reader {
        b: bytes,
        off: 0,
        base,
    };
    let mut fields = Vec::new();
    while r.off < bytes.len() {
        let kind = r.u16("opaque field type")?;
        let len = usize::from(r.u16("opaque field length")?);
        let value = r.take(len, "opaque field value")?.to_vec();
        fields.push(OpaqueField { kind, value });
    }
    Ok(fields)
}
