//! Tests of the CCEL table and event log against the real GCE vector, hand-built logs and
//! hostile input.

use proptest::prelude::*;
use sha2::{Digest, Sha256, Sha384};

use super::*;

fn vector(name: &str) -> Vec<u8> {
    crate::test_support::vector(&format!("google-go-tdx-guest/ccel/{name}"))
}

fn real_log() -> Vec<u8> {
    vector("ccel_data.dat")
}

// ---------------------------------------------------------------------------------------
// A tiny log builder, independent of the parser.

const SHA256_ID: u16 = 0x000B;

struct Builder {
    buf: Vec<u8>,
    algs: Vec<(u16, u16)>,
}

impl Builder {
    /// A log whose Spec ID header declares `algs`.
    fn new(algs: &[(u16, u16)]) -> Self {
        let mut data = Vec::new();
        data.extend_from_slice(b"Spec ID Event03\0");
        data.extend_from_slice(&0u32.to_le_bytes()); // platformClass
        data.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintnSize
        data.extend_from_slice(&(algs.len() as u32).to_le_bytes());
        for (id, size) in algs {
            data.extend_from_slice(&id.to_le_bytes());
            data.extend_from_slice(&size.to_le_bytes());
        }
        data.push(0); // vendorInfoSize
        let mut buf = Vec::new();
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&[0u8; 20]);
        buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        buf.extend_from_slice(&data);
        Builder {
            buf,
            algs: algs.to_vec(),
        }
    }

    /// The usual TDX log: SHA-384 only.
    fn tdx() -> Self {
        Self::new(&[(0x000C, 48)])
    }

    /// Appends an event with explicit digests.
    fn raw(mut self, mr: u32, ty: u32, digests: &[(u16, Vec<u8>)], data: &[u8]) -> Self {
        self.buf.extend_from_slice(&mr.to_le_bytes());
        self.buf.extend_from_slice(&ty.to_le_bytes());
        self.buf
            .extend_from_slice(&(digests.len() as u32).to_le_bytes());
        for (alg, d) in digests {
            self.buf.extend_from_slice(&alg.to_le_bytes());
            self.buf.extend_from_slice(d);
        }
        self.buf
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(data);
        self
    }

    /// Appends an event carrying a digest of `data` for every declared algorithm.
    fn event(self, mr: u32, ty: u32, data: &[u8]) -> Self {
        let digests: Vec<(u16, Vec<u8>)> = self
            .algs
            .iter()
            .map(|&(id, size)| {
                let d = match id {
                    0x000C => Sha384::digest(data).to_vec(),
                    SHA256_ID => Sha256::digest(data).to_vec(),
                    _ => vec![0xAB; size as usize],
                };
                (id, d)
            })
            .collect();
        self.raw(mr, ty, &digests, data)
    }

    /// The log area tail.
    fn fill(mut self, n: usize) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0xFF, n));
        self.buf
    }

    fn bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// RTMR0-3 for events given as (mr_index, type, data), computed without the parser.
fn expected_rtmrs(events: &[(u32, u32, Vec<u8>)]) -> [[u8; 48]; 4] {
    let mut r = [[0u8; 48]; 4];
    for (mr, ty, data) in events {
        if *ty == 3 {
            continue;
        }
        let i = (*mr - 1) as usize;
        let mut h = Sha384::new();
        h.update(r[i]);
        h.update(Sha384::digest(data));
        r[i] = h.finalize().into();
    }
    r
}

// ---------------------------------------------------------------------------------------
// The real vector.

#[test]
fn real_log_replays_to_the_quotes_rtmrs() {
    let log = EventLog::parse(&real_log()).expect("parse real log");
    let quote = vector("cos-113-tdx-quote.dat");
    assert_eq!(u16::from_le_bytes([quote[0], quote[1]]), 4, "v4 quote");
    let body = 48;
    let rtmr_at = |off: usize| &quote[body + off..body + off + 48];
    let replayed = log.replay();
    assert_eq!(hex::encode(replayed[0]), hex::encode(rtmr_at(328)), "RTMR0");
    assert_eq!(hex::encode(replayed[1]), hex::encode(rtmr_at(376)), "RTMR1");
    assert_eq!(hex::encode(replayed[2]), hex::encode(rtmr_at(424)), "RTMR2");
    // Nothing in the boot log touches RTMR3.
    assert_eq!(replayed[3], [0u8; 48]);
}

#[test]
fn real_log_structure() {
    let log = EventLog::parse(&real_log()).expect("parse real log");
    assert_eq!(
        log.spec_id.algorithms,
        vec![DigestAlgorithm {
            id: 0x000C,
            size: 48
        }]
    );
    assert_eq!(log.spec_id.spec_version_major, 2);
    assert_eq!(log.spec_id.uintn_size, 2);
    assert_eq!(log.events.len(), 43);
    assert_eq!(log.end, 0x46b5);
    let first = &log.events[0];
    assert_eq!((first.seq, first.offset), (1, 0x41));
    assert_eq!(first.type_name(), "EV_EFI_HANDOFF_TABLES2");
    assert_eq!(first.rtmr, Some(crate::registers::Rtmr::R0));
    let last = log.events.last().expect("events");
    assert_eq!(last.type_name(), "EV_EFI_ACTION");
    assert_eq!(last.data, b"Exit Boot Services Returned with Success");
    assert_eq!(last.rtmr, Some(crate::registers::Rtmr::R1));
    for (i, ev) in log.events.iter().enumerate() {
        assert_eq!(ev.seq, i + 1);
    }
}

#[test]
fn real_log_report() {
    let log = EventLog::parse(&real_log()).expect("parse real log");
    let report = log.report();
    assert_eq!(report.events.len(), 43);
    assert_eq!(report.replayed_events, 43);
    assert_eq!(report.algorithms, vec!["0x000c".to_owned()]);
    assert_eq!(report.rtmr[0], hex::encode(log.replay()[0]));
    let ev = &report.events[11];
    assert_eq!(ev.event_type_name, "EV_EFI_VARIABLE_BOOT");
    assert_eq!(ev.description.as_deref(), Some("BootOrder"));
    assert_eq!(ev.sha384, hex::encode(log.events[11].sha384));
    assert!(
        ev.sha384
            .chars()
            .all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    );
    assert_eq!(ev.data, hex::encode(&log.events[11].data));

    let json = serde_json::to_string(&report).expect("json");
    let back: ReplayReport = serde_json::from_str(&json).expect("json back");
    assert_eq!(back, report);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json value");
    assert_eq!(
        v["rtmr"][1],
        serde_json::json!(hex::encode(log.replay()[1]))
    );

    let text = report.render_text();
    assert!(text.contains("EV_EFI_HANDOFF_TABLES2"), "{text}");
    assert!(text.contains("Exit Boot Services Invocation"), "{text}");
    assert!(
        text.contains(&format!("RTMR2  {}", report.rtmr[2])),
        "{text}"
    );
    assert!(text.contains("43 events, 43 replayed"), "{text}");
}

#[test]
fn real_table() {
    let t = CcelTable::parse(&vector("ccel_table.dat")).expect("parse table");
    assert_eq!(&t.signature, b"CCEL");
    assert_eq!(t.length, 56);
    assert!(t.is_tdx());
    assert_eq!(t.cc_subtype, 0);
    assert!(t.laml > 0);
    // The log file is the whole log area.
    assert_eq!(t.laml, real_log().len() as u64);
    assert_ne!(t.lasa, 0);
    assert_eq!(&t.oem_id, b"INTEL ");
}

#[test]
fn table_rejections() {
    let good = vector("ccel_table.dat");
    assert!(matches!(
        CcelTable::parse(&good[..55]),
        Err(CcelError::TableTooShort { len: 55, .. })
    ));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(matches!(
        CcelTable::parse(&bad),
        Err(CcelError::TableSignature { .. })
    ));
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        CcelTable::parse(&longer),
        Err(CcelError::TableLength {
            declared: 56,
            actual: 57
        })
    ));
    let mut sum = good.clone();
    sum[50] ^= 1;
    assert!(matches!(
        CcelTable::parse(&sum),
        Err(CcelError::TableChecksum { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Hand-built logs.

#[test]
fn built_log_replays_to_independent_values() {
    let events = vec![
        (1, 0x8000_000B, b"table".to_vec()),
        (1, 4, vec![0; 4]),
        (3, 3, b"StartupLocality\0".to_vec()),
        (2, 0x8000_0007, b"Calling EFI Application".to_vec()),
        (4, 0xD, b"runtime".to_vec()),
        (2, 0xD, vec![]),
    ];
    let mut b = Builder::new(&[(SHA256_ID, 32), (0x000C, 48)]);
    for (mr, ty, data) in &events {
        b = b.event(*mr, *ty, data);
    }
    let log = EventLog::parse(&b.fill(100)).expect("parse built log");
    assert_eq!(log.events.len(), events.len());
    assert_eq!(log.replay(), expected_rtmrs(&events));
    assert_eq!(log.events[2].type_name(), "EV_NO_ACTION");
    assert!(!log.report().events[2].replayed);
    assert_eq!(log.report().replayed_events, 5);
    // Independently of the helper: RTMR3 saw exactly one extend.
    let mut h = Sha384::new();
    h.update([0u8; 48]);
    h.update(Sha384::digest(b"runtime"));
    assert_eq!(log.replay()[3], <[u8; 48]>::from(h.finalize()));
}

#[test]
fn empty_log_after_header_replays_to_zero() {
    for buf in [
        Builder::tdx().bytes(),
        Builder::tdx().fill(3),
        Builder::tdx().fill(4096),
    ] {
        let log = EventLog::parse(&buf).expect("parse");
        assert!(log.events.is_empty());
        assert_eq!(log.replay(), [[0u8; 48]; 4]);
    }
}

#[test]
fn stops_at_end_markers() {
    let base = || Builder::tdx().event(1, 4, &[0; 4]);
    // All-zero header, mr_index 0xFFFFFFFF, event type 0xFFFFFFFF: each ends the log even
    // with junk after it.
    for (mr, ty) in [(0u32, 0u32), (u32::MAX, 7), (2, u32::MAX)] {
        let mut buf = base().bytes();
        buf.extend_from_slice(&mr.to_le_bytes());
        buf.extend_from_slice(&ty.to_le_bytes());
        buf.extend_from_slice(&[0x5A; 40]);
        let log = EventLog::parse(&buf).expect("parse");
        assert_eq!(log.events.len(), 1, "marker {mr:#x}/{ty:#x}");
    }
}

fn parse_err(buf: &[u8]) -> CcelError {
    EventLog::parse(buf).expect_err("must be rejected")
}

#[test]
fn mrtd_extension_is_an_error_naming_the_event() {
    let buf = Builder::tdx()
        .event(1, 4, &[0; 4])
        .event(0, 0x8000_0007, b"x")
        .fill(8);
    let e = parse_err(&buf);
    assert!(matches!(e, CcelError::MrtdExtended { seq: 2, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("event 2") && msg.contains("EV_EFI_ACTION") && msg.contains("MRTD"));
    // The same index on EV_NO_ACTION extends nothing and is fine.
    let ok = Builder::tdx().event(0, 3, b"x").fill(8);
    assert_eq!(EventLog::parse(&ok).expect("parse").events[0].rtmr, None);
}

#[test]
fn mr_index_beyond_rtmr3_is_an_error() {
    let e = parse_err(&Builder::tdx().event(5, 4, &[0; 4]).bytes());
    assert!(
        matches!(
            e,
            CcelError::MrIndexOutOfRange {
                seq: 1,
                mr_index: 5,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn digest_count_above_algorithm_count_is_an_error() {
    let d = vec![0u8; 48];
    let buf = Builder::tdx()
        .event(1, 4, &[0; 4])
        .raw(1, 4, &[(0x000C, d.clone()), (0x000C, d)], &[0; 4])
        .bytes();
    let e = parse_err(&buf);
    assert_eq!(
        e.to_string(),
        format!(
            "event 2 at offset {:#x}: digest count 2 exceeds the 1 algorithms in the Spec ID header",
            Builder::tdx().event(1, 4, &[0; 4]).bytes().len()
        )
    );
}

#[test]
fn unknown_duplicate_and_missing_digests_are_errors() {
    let two = [(SHA256_ID, 32), (0x000C, 48)];
    let unknown = Builder::new(&two)
        .raw(1, 4, &[(0x0004, vec![0; 20])], &[0; 4])
        .bytes();
    assert!(matches!(
        parse_err(&unknown),
        CcelError::UnknownAlgorithm { alg: 4, seq: 1, .. }
    ));
    let dup = Builder::new(&two)
        .raw(
            1,
            4,
            &[(SHA256_ID, vec![0; 32]), (SHA256_ID, vec![0; 32])],
            &[0; 4],
        )
        .bytes();
    assert!(matches!(
        parse_err(&dup),
        CcelError::DuplicateDigest { alg: SHA256_ID, .. }
    ));
    let missing = Builder::new(&two)
        .raw(1, 4, &[(SHA256_ID, vec![0; 32])], &[0; 4])
        .bytes();
    assert!(matches!(
        parse_err(&missing),
        CcelError::MissingSha384 { seq: 1, .. }
    ));
}

#[test]
fn truncation_errors_name_the_field() {
    let full = Builder::tdx().event(1, 4, &[0; 4]).bytes();
    // Cut inside the trailing u32 event size.
    let cut = full.len() - 4 - 2;
    let e = parse_err(&full[..cut]);
    match &e {
        CcelError::Truncated {
            seq: 1,
            field: "event size",
            offset,
            left: 2,
            ..
        } => assert_eq!(*offset, cut - 2),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("reading event size"), "{e}");
    // A data size far beyond the buffer is bounded, not allocated.
    let mut huge = Builder::tdx().bytes();
    huge.extend_from_slice(&1u32.to_le_bytes());
    huge.extend_from_slice(&4u32.to_le_bytes());
    huge.extend_from_slice(&1u32.to_le_bytes());
    huge.extend_from_slice(&0x000Cu16.to_le_bytes());
    huge.extend_from_slice(&[0; 48]);
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        parse_err(&huge),
        CcelError::Truncated {
            field: "event data",
            need: 0xFFFF_FFFF,
            ..
        }
    ));
}

#[test]
fn spec_id_header_rejections() {
    let good = Builder::tdx().bytes();
    let mut ty = good.clone();
    ty[4] = 4;
    assert!(matches!(
        parse_err(&ty),
        CcelError::SpecId {
            field: "event type",
            ..
        }
    ));
    let mut sig = good.clone();
    sig[32] = b'X';
    assert!(matches!(
        parse_err(&sig),
        CcelError::SpecId {
            field: "signature",
            ..
        }
    ));
    // numberOfAlgorithms (data offset 24) far larger than the data.
    let mut count = good.clone();
    count[32 + 24..32 + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        parse_err(&count),
        CcelError::SpecId {
            field: "numberOfAlgorithms",
            ..
        }
    ));
    // More algorithms than any registry has: refused before any event's digests are read.
    let mut many: Vec<(u16, u16)> = (0..64u16).map(|i| (0x1000 + i, 1)).collect();
    many.push((0x000C, 48));
    let e = parse_err(&Builder::new(&many).bytes());
    assert!(
        matches!(
            &e,
            CcelError::SpecId {
                field: "numberOfAlgorithms",
                ..
            }
        ) && e.to_string().contains("more than the 64"),
        "{e}"
    );
    let wrong_size = Builder::new(&[(0x000C, 32)]).bytes();
    assert!(matches!(
        parse_err(&wrong_size),
        CcelError::SpecId {
            field: "digestSize",
            ..
        }
    ));
    assert!(matches!(
        parse_err(&[]),
        CcelError::Truncated {
            seq: 0,
            offset: 0,
            ..
        }
    ));
}

#[test]
fn every_truncation_of_the_real_log_is_a_boundary_or_an_error() {
    let buf = real_log();
    let full = EventLog::parse(&buf).expect("parse real log");
    let header_end = full.events[0].offset;
    for cut in 0..=full.end + 16 {
        check_truncation(&buf, &full, header_end, cut);
    }
}

/// A prefix parses exactly when it ends on an event boundary (or in the 0xFF tail), and then
/// holds exactly the events that fit.
fn check_truncation(buf: &[u8], full: &EventLog, header_end: usize, cut: usize) {
    let boundary =
        cut == header_end || cut >= full.end || full.events.iter().any(|e| e.offset == cut);
    match EventLog::parse(&buf[..cut]) {
        Ok(log) => {
            assert!(boundary, "cut {cut:#x} parsed but is mid-event");
            let fitting: Vec<&Event> = full.events.iter().filter(|e| e.offset < cut).collect();
            assert_eq!(log.events.len(), fitting.len(), "cut {cut:#x}");
            assert!(log.events.iter().zip(fitting).all(|(a, b)| a == b));
        }
        Err(_) => assert!(!boundary, "cut {cut:#x} is a boundary but failed"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn truncated_real_log_never_panics(cut in 0usize..0x4700) {
        let buf = real_log();
        let full = EventLog::parse(&buf).expect("parse real log");
        let header_end = full.events[0].offset;
        check_truncation(&buf, &full, header_end, cut.min(buf.len()));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut buf = Builder::new(&[(SHA256_ID, 32), (0x000C, 48)]).bytes();
        buf.extend_from_slice(&tail);
        exercise(&buf);
    }

    #[test]
    fn mutated_real_log_never_panics(
        edits in proptest::collection::vec((0usize..0x4700, any::<u8>()), 1..8),
    ) {
        let mut buf = real_log();
        buf.truncate(0x4700);
        for (at, byte) in edits {
            buf[at] = byte;
        }
        exercise(&buf);
    }

    #[test]
    fn built_logs_replay_to_independent_values(
        events in proptest::collection::vec(
            (1u32..=4, prop_oneof![Just(3u32), Just(4), Just(0xD), Just(0x8000_0007)],
             proptest::collection::vec(any::<u8>(), 0..64)),
            0..24,
        ),
        tail in 0usize..64,
    ) {
        let mut b = Builder::new(&[(SHA256_ID, 32), (0x000C, 48)]);
        for (mr, ty, data) in &events {
            b = b.event(*mr, *ty, data);
        }
        let log = EventLog::parse(&b.fill(tail)).expect("parse built log");
        prop_assert_eq!(log.events.len(), events.len());
        for (ev, (mr, ty, data)) in log.events.iter().zip(&events) {
            prop_assert_eq!(ev.mr_index, *mr);
            prop_assert_eq!(ev.event_type, *ty);
            prop_assert_eq!(&ev.data, data);
        }
        prop_assert_eq!(log.replay(), expected_rtmrs(&events));
    }
}

/// Parse and, when that succeeds, use every output: none of it may panic.
fn exercise(buf: &[u8]) {
    if let Ok(log) = EventLog::parse(buf) {
        assert!(log.end <= buf.len());
        let report = log.report();
        let _ = report.render_text();
        let _ = serde_json::to_string(&report).expect("json");
    }
    let _ = CcelTable::parse(buf);
}
