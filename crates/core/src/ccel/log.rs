//! Parsing the TCG2 crypto-agile event log (Spec ID header + TCG_PCR_EVENT2 records) and
//! replaying it into RTMR0-3.

use sha2::{Digest, Sha384 as Sha384Hasher};

use super::{CcelError, event_type_name};
use crate::registers::{Rtmr, Sha384};

/// TCG event type that records information without extending any register.
/// Most digest algorithms a log's Spec ID event may list.
const MAX_ALGORITHMS: u32 = 64;

pub const EV_NO_ACTION: u32 = 3;
/// TPM_ALG_SHA384.
pub const SHA384_ALG_ID: u16 = 0x000C;

const SHA384_LEN: usize = 48;
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// The header event's SHA1-format digest field.
const SHA1_LEN: u64 = 20;
/// An mr_index or event type with this value marks the start of the unused log area.
const END_MARKER: u32 = 0xFFFF_FFFF;

/// One entry of the Spec ID header's algorithm table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestAlgorithm {
    pub id: u16,
    pub size: u16,
}

/// The "Spec ID Event03" header event that opens every crypto-agile log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecIdEvent {
    /// The header's register index (informational only: the header extends nothing).
    pub mr_index: u32,
    pub platform_class: u32,
    pub spec_version_major: u8,
    pub spec_version_minor: u8,
    pub spec_errata: u8,
    /// 1 for a 32-bit UINTN firmware, 2 for 64-bit.
    pub uintn_size: u8,
    /// The digest sizes every later event's digests are read with.
    pub algorithms: Vec<DigestAlgorithm>,
    pub vendor_info: Vec<u8>,
}

/// One TCG_PCR_EVENT2 record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// 1-based position in the log (0 is the Spec ID header).
    pub seq: usize,
    /// Byte offset of the record in the log.
    pub offset: usize,
    /// The CC measurement register index as written (1..=4 are RTMR0..3).
    pub mr_index: u32,
    /// The register this event extends; `None` only for an EV_NO_ACTION event whose index
    /// names no RTMR (parsing rejects that for every other event type).
    pub rtmr: Option<Rtmr>,
    pub event_type: u32,
    /// The SHA-384 digest the register was extended with.
    pub sha384: Sha384,
    pub data: Vec<u8>,
}

impl Event {
    /// The TCG / UEFI name of the event type, or "unknown".
    pub fn type_name(&self) -> &'static str {
        event_type_name(self.event_type).unwrap_or("unknown")
    }

    pub fn data_size(&self) -> usize {
        self.data.len()
    }

    /// Whether replay skips this event.
    pub fn is_no_action(&self) -> bool {
        self.event_type == EV_NO_ACTION
    }
}

/// A parsed boot event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLog {
    pub spec_id: SpecIdEvent,
    pub events: Vec<Event>,
    /// Byte offset just past the last event: where the unused log area begins.
    pub end: usize,
}

impl EventLog {
    /// Parses a log as read from [`super::CCEL_DATA_PATH`]. Parsing stops cleanly at the end of
    /// the buffer, at 0xFF fill, or at an all-zero or 0xFFFFFFFF event header.
    pub fn parse(buf: &[u8]) -> Result<Self, CcelError> {
        let mut cur = Cursor::new(buf);
        let spec_id = parse_spec_id(&mut cur)?;
        let mut events = Vec::new();
        loop {
            let seq = events.len().saturating_add(1);
            cur.start_event(seq);
            match parse_event(&mut cur, &spec_id)? {
                Some(ev) => events.push(ev),
                None => break,
            }
        }
        Ok(EventLog {
            spec_id,
            events,
            end: cur.event_offset,
        })
    }

    /// RTMR0-3 as the log says they should be: each starts at zero and every event but
    /// EV_NO_ACTION extends its register with `SHA-384(RTMR || digest)`.
    pub fn replay(&self) -> [Sha384; 4] {
        let mut rtmrs = [[0u8; SHA384_LEN]; 4];
        for ev in &self.events {
            if ev.is_no_action() {
                continue;
            }
            // Parsing guarantees every non-EV_NO_ACTION event names an RTMR.
            let Some(rtmr) = ev.rtmr else { continue };
            let reg = &mut rtmrs[rtmr.index()];
            let mut h = Sha384Hasher::new();
            h.update(*reg);
            h.update(ev.sha384);
            reg.copy_from_slice(&h.finalize());
        }
        rtmrs
    }
}

/// A bounds-checked reader that knows which event it is in, so every error can say so.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    seq: usize,
    event_offset: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            seq: 0,
            event_offset: 0,
        }
    }

    fn start_event(&mut self, seq: usize) {
        self.seq = seq;
        self.event_offset = self.pos;
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8], CcelError> {
        let rest = self.rest();
        let truncated = || CcelError::Truncated {
            seq: self.seq,
            event_offset: self.event_offset,
            offset: self.pos,
            field,
            need: n,
            left: rest.len(),
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        let out = rest.get(..n).ok_or_else(truncated)?;
        self.pos = self.pos.checked_add(n).ok_or_else(truncated)?;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CcelError> {
        let bytes = self.take(N as u64, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, CcelError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, CcelError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, CcelError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
}

fn spec_id_error(offset: usize, field: &'static str, reason: impl Into<String>) -> CcelError {
    CcelError::SpecId {
        offset,
        field,
        reason: reason.into(),
    }
}

/// The SHA1-format TCG_PCClientPCREvent carrying "Spec ID Event03".
fn parse_spec_id(cur: &mut Cursor<'_>) -> Result<SpecIdEvent, CcelError> {
    let mr_index = cur.u32("header mr_index")?;
    let type_offset = cur.pos;
    let event_type = cur.u32("header event type")?;
    if event_type != EV_NO_ACTION {
        return Err(spec_id_error(
            type_offset,
            "event type",
            format!("{event_type:#x}, expected EV_NO_ACTION (3)"),
        ));
    }
    cur.take(SHA1_LEN, "header SHA-1 digest")?;
    let size = cur.u32("header event size")?;
    let data_offset = cur.pos;
    let data = cur.take(u64::from(size), "header event data")?;

    // The header's fields are read from its own data, so they cannot run past its size.
    let mut d = Cursor {
        buf: data,
        pos: 0,
        seq: 0,
        event_offset: 0,
    };
    let in_data = |e: CcelError| match e {
        CcelError::Truncated { offset, field, .. } => spec_id_error(
            data_offset.saturating_add(offset),
            field,
            format!("does not fit in the {size}-byte event data"),
        ),
        other => other,
    };
    let signature = d.array::<16>("signature").map_err(in_data)?;
    if &signature != SPEC_ID_SIGNATURE {
        return Err(spec_id_error(
            data_offset,
            "signature",
            format!(
                "\"{}\", expected \"Spec ID Event03\\0\"",
                signature.escape_ascii()
            ),
        ));
    }
    let platform_class = d.u32("platformClass").map_err(in_data)?;
    let spec_version_minor = d.u8("specVersionMinor").map_err(in_data)?;
    let spec_version_major = d.u8("specVersionMajor").map_err(in_data)?;
    let spec_errata = d.u8("specErrata").map_err(in_data)?;
    let uintn_size = d.u8("uintnSize").map_err(in_data)?;
    let count_offset = data_offset.saturating_add(d.pos);
    let count = d.u32("numberOfAlgorithms").map_err(in_data)?;
    if count == 0 {
        return Err(spec_id_error(count_offset, "numberOfAlgorithms", "is 0"));
    }
    // TCG's registry has a few dozen hash algorithms and real logs list one to three; a log
    // listing thousands would make every event's digest list a quadratic search.
    if count > MAX_ALGORITHMS {
        return Err(spec_id_error(
            count_offset,
            "numberOfAlgorithms",
            format!("{count}, more than the {MAX_ALGORITHMS} accepted"),
        ));
    }
    // Each entry is 4 bytes: a count the data cannot hold is rejected before any allocation.
    let left = d.rest().len() / 4;
    if u64::from(count) > left as u64 {
        return Err(spec_id_error(
            count_offset,
            "numberOfAlgorithms",
            format!("{count} entries do not fit in the {size}-byte event data"),
        ));
    }
    let mut algorithms: Vec<DigestAlgorithm> = Vec::new();
    for _ in 0..count {
        let at = data_offset.saturating_add(d.pos);
        let id = d.u16("algorithmId").map_err(in_data)?;
        let size = d.u16("digestSize").map_err(in_data)?;
        if size == 0 {
            return Err(spec_id_error(
                at,
                "digestSize",
                format!("algorithm {id:#06x} has size 0"),
            ));
        }
        if id == SHA384_ALG_ID && usize::from(size) != SHA384_LEN {
            return Err(spec_id_error(
                at,
                "digestSize",
                format!("SHA-384 (0x000c) must be 48 bytes, header says {size}"),
            ));
        }
        if algorithms.iter().any(|a| a.id == id) {
            return Err(spec_id_error(
                at,
                "algorithmId",
                format!("algorithm {id:#06x} is listed twice"),
            ));
        }
        algorithms.push(DigestAlgorithm { id, size });
    }
    let vendor_size = d.u8("vendorInfoSize").map_err(in_data)?;
    let vendor_info = d
        .take(u64::from(vendor_size), "vendorInfo")
        .map_err(in_data)?
        .to_vec();
    Ok(SpecIdEvent {
        mr_index,
        platform_class,
        spec_version_major,
        spec_version_minor,
        spec_errata,
        uintn_size,
        algorithms,
        vendor_info,
    })
}

/// One TCG_PCR_EVENT2, or `None` where the log ends.
fn parse_event(cur: &mut Cursor<'_>, spec: &SpecIdEvent) -> Result<Option<Event>, CcelError> {
    let rest = cur.rest();
    // Short leftovers of 0xFF fill are the unused log area, not a truncated event.
    if rest.is_empty() || (rest.len() < 4 && rest.iter().all(|b| *b == 0xFF)) {
        return Ok(None);
    }
    let mr_index = cur.u32("mr_index")?;
    if mr_index == END_MARKER {
        return Ok(None);
    }
    let event_type = cur.u32("event type")?;
    if event_type == END_MARKER || (mr_index == 0 && event_type == 0) {
        return Ok(None);
    }
    let seq = cur.seq;
    let event_offset = cur.event_offset;
    let type_label = || event_label(event_type);

    let count = cur.u32("digest count")?;
    if u64::from(count) > spec.algorithms.len() as u64 {
        return Err(CcelError::DigestCount {
            seq,
            event_offset,
            count,
            algorithms: spec.algorithms.len(),
        });
    }
    let mut seen: Vec<u16> = Vec::new();
    let mut sha384 = None;
    for _ in 0..count {
        let alg_offset = cur.pos;
        let alg = cur.u16("digest algorithm id")?;
        let Some(def) = spec.algorithms.iter().find(|a| a.id == alg) else {
            return Err(CcelError::UnknownAlgorithm {
                seq,
                event_offset,
                offset: alg_offset,
                alg,
            });
        };
        if seen.contains(&alg) {
            return Err(CcelError::DuplicateDigest {
                seq,
                event_offset,
                offset: alg_offset,
                alg,
            });
        }
        seen.push(alg);
        if alg == SHA384_ALG_ID {
            sha384 = Some(cur.array::<SHA384_LEN>("SHA-384 digest")?);
        } else {
            cur.take(u64::from(def.size), "digest")?;
        }
    }
    let size = cur.u32("event size")?;
    let data = cur.take(u64::from(size), "event data")?.to_vec();

    let Some(sha384) = sha384 else {
        return Err(CcelError::MissingSha384 {
            seq,
            event_offset,
            event_type: type_label(),
        });
    };
    let rtmr = mr_index
        .checked_sub(1)
        .and_then(|i| usize::try_from(i).ok())
        .and_then(Rtmr::from_index);
    if event_type != EV_NO_ACTION {
        if mr_index == 0 {
            return Err(CcelError::MrtdExtended {
                seq,
                event_offset,
                event_type: type_label(),
            });
        }
        if rtmr.is_none() {
            return Err(CcelError::MrIndexOutOfRange {
                seq,
                event_offset,
                mr_index,
                event_type: type_label(),
            });
        }
    }
    Ok(Some(Event {
        seq,
        offset: event_offset,
        mr_index,
        rtmr,
        event_type,
        sha384,
        data,
    }))
}

/// "EV_SEPARATOR (0x4)", for error messages.
fn event_label(event_type: u32) -> String {
    match event_type_name(event_type) {
        Some(name) => format!("{name} ({event_type:#x})"),
        None => format!("event type {event_type:#x}"),
    }
}
