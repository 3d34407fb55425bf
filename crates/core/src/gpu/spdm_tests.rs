//! The SPDM report parser against every real GPU report in tests/vectors/nvidia and against
//! hostile input: truncations, mutations and a trailing byte.

use proptest::prelude::*;

use super::*;
use crate::test_support::{vector, vector_text};

/// Every real report: (directory, whether it has an FWID field).
pub(super) const REPORTS: &[(&str, bool)] = &[
    ("nvidia-nvtrust/hopper-550.90.07", true),
    ("nvidia-nvtrust/hopper-545.00-2023", false),
    ("nvidia-attestation-sdk/hopper-535.86.09", false),
    ("nvidia-attestation-sdk/hopper-580.159.03", true),
    ("nvidia-attestation-sdk/hopper-590.12", true),
    ("nvidia-attestation-sdk/hopper-570.86.10-cert-hold", true),
    ("coco-trustee/blackwell-gb202-595.58.03", true),
    (
        "google-go-nvattest-tools/ppcie-hopper-570.124.06-gpu0",
        true,
    ),
    (
        "google-go-nvattest-tools/mpt-blackwell-gb100-590.48.01-gpu0",
        true,
    ),
    ("solpbc/hopper-595.71.05-96.00.88.00.11", true),
];

pub(super) fn report(dir: &str) -> Vec<u8> {
    vector(&format!("nvidia/{dir}/report.bin"))
}

#[test]
fn every_real_report_parses_with_its_nonce_blocks_and_fields() {
    for (dir, has_fwid) in REPORTS {
        let raw = report(dir);
        let r = SpdmReport::parse(&raw).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let nonce = vector_text(&format!("nvidia/{dir}/nonce.hex"));
        assert_eq!(hex::encode(r.request_nonce), nonce.trim(), "{dir}");
        assert_eq!(r.blocks.len(), 64, "{dir}");
        for (i, b) in r.blocks.iter().enumerate() {
            assert_eq!(usize::from(b.index), i + 1, "{dir}");
            assert_eq!(b.value.len(), BLOCK_DIGEST_LEN, "{dir}");
        }
        assert_eq!(r.signed_len() + SIGNATURE_LEN, raw.len(), "{dir}");
        assert_eq!(&raw[r.signed_len()..], &r.signature[..], "{dir}");
        let driver = r.opaque_field(opaque::DRIVER_VERSION).unwrap();
        assert!(
            driver
                .iter()
                .take_while(|b| **b != 0)
                .all(|b| b.is_ascii_graphic()),
            "{dir}: driver version {driver:?}"
        );
        assert!(r.opaque_field(opaque::VBIOS_VERSION).is_some(), "{dir}");
        assert_eq!(r.opaque_field(opaque::FWID).is_some(), *has_fwid, "{dir}");
    }
}

/// The driver and VBIOS versions of tests/vectors/nvidia/README.md's table (from the
/// shared set, where each was read independently of this parser).
#[test]
fn driver_and_vbios_versions_are_the_ones_the_vectors_name() {
    let expected = [
        (
            "nvidia-nvtrust/hopper-550.90.07",
            "550.90.07",
            "96.00.9F.00.01",
        ),
        (
            "nvidia-nvtrust/hopper-545.00-2023",
            "545.00",
            "96.00.5E.00.01",
        ),
        (
            "nvidia-attestation-sdk/hopper-535.86.09",
            "535.86.09",
            "96.00.5E.00.01",
        ),
        (
            "nvidia-attestation-sdk/hopper-580.159.03",
            "580.159.03",
            "96.00.74.00.20",
        ),
        (
            "nvidia-attestation-sdk/hopper-590.12",
            "590.12",
            "96.00.A5.00.01",
        ),
        (
            "nvidia-attestation-sdk/hopper-570.86.10-cert-hold",
            "570.86.10",
            "96.00.AF.00.01",
        ),
        (
            "coco-trustee/blackwell-gb202-595.58.03",
            "595.58.03",
            "98.02.81.00.01",
        ),
        (
            "google-go-nvattest-tools/ppcie-hopper-570.124.06-gpu0",
            "570.124.06",
            "96.00.CF.00.02",
        ),
        (
            "google-go-nvattest-tools/mpt-blackwell-gb100-590.48.01-gpu0",
            "590.48.01",
            "97.00.D9.00.35",
        ),
        (
            "solpbc/hopper-595.71.05-96.00.88.00.11",
            "595.71.05",
            "96.00.88.00.11",
        ),
    ];
    assert_eq!(expected.len(), REPORTS.len());
    for (dir, driver, vbios) in expected {
        let r = SpdmReport::parse(&report(dir)).unwrap();
        assert_eq!(r.driver_version().as_deref(), Some(driver), "{dir}");
        assert_eq!(r.vbios_version().as_deref(), Some(vbios), "{dir}");
        let nonce = hex::decode(vector_text(&format!("nvidia/{dir}/nonce.hex")).trim()).unwrap();
        let nonce: [u8; NONCE_LEN] = nonce.try_into().unwrap();
        assert!(r.nonce_matches(&nonce), "{dir}");
        let mut other = nonce;
        other[0] ^= 1;
        assert!(!r.nonce_matches(&other), "{dir}");
    }
}

/// trustee's copy of a Hopper report has one 0x00 after the signature. NVIDIA's verifier
/// rejects it too (it takes the last 96 bytes as the signature); the trimmed file parses.
#[test]
fn a_byte_after_the_signature_is_refused_and_named() {
    let dir = "coco-trustee/hopper-580.95.05";
    let raw = vector(&format!("nvidia/{dir}/report.bin"));
    let err = SpdmReport::parse(&raw).unwrap_err();
    assert_eq!(
        err,
        SpdmError::Trailing {
            offset: raw.len() - 1,
            count: 1
        }
    );
    let trimmed = vector(&format!("nvidia/{dir}/report-trimmed.bin"));
    assert_eq!(trimmed.len() + 1, raw.len());
    SpdmReport::parse(&trimmed).unwrap();
}

#[test]
fn wrong_values_name_the_field_and_offset() {
    let raw = report("nvidia-nvtrust/hopper-550.90.07");
    let cases: &[(usize, u8, &str)] = &[
        (0, 0x12, "request SPDMVersion"),
        (1, 0x60, "request RequestResponseCode"),
        (2, 0x00, "request attributes (signature requested)"),
        (3, 0x01, "request operation (all blocks)"),
        (REQUEST_LEN, 0x10, "response SPDMVersion"),
        (REQUEST_LEN + 1, 0xE0, "response RequestResponseCode"),
        // The first block's measurement specification.
        (
            REQUEST_LEN + 8 + 1,
            0x02,
            "measurement block MeasurementSpecification (DMTF)",
        ),
    ];
    for (at, value, field) in cases {
        let mut m = raw.clone();
        m[*at] = *value;
        match SpdmReport::parse(&m) {
            Err(SpdmError::Field {
                field: f, offset, ..
            }) => {
                assert_eq!((f, offset), (*field, *at), "byte {at}");
            }
            other => panic!("byte {at}: {other:?}"),
        }
    }
    // A block count that disagrees with the record.
    let mut m = raw.clone();
    m[REQUEST_LEN + 4] = 63;
    let e = SpdmReport::parse(&m).unwrap_err();
    assert!(
        matches!(
            e,
            SpdmError::Field {
                field: "NumberOfBlocks",
                ..
            }
        ),
        "{e}"
    );
    // A repeated block index.
    let mut m = raw.clone();
    let second_block = REQUEST_LEN + 8 + 4 + 3 + BLOCK_DIGEST_LEN;
    m[second_block] = 1;
    let e = SpdmReport::parse(&m).unwrap_err();
    assert!(
        matches!(e, SpdmError::Field { field: "measurement block Index", offset, .. } if offset == second_block),
        "{e}"
    );
}

#[test]
fn block_index_0xff_is_refused_as_the_message_says() {
    let raw = report("nvidia-nvtrust/hopper-550.90.07");
    let second_block = REQUEST_LEN + 8 + 4 + 3 + BLOCK_DIGEST_LEN;
    // 0xFF asks for every block in a request; as a block's own index it is not 1..=254.
    for index in [0x00, 0xFF] {
        let mut m = raw.clone();
        m[second_block] = index;
        match SpdmReport::parse(&m) {
            Err(SpdmError::Field {
                field: "measurement block Index",
                offset,
                expected,
                found,
            }) => {
                assert_eq!(offset, second_block);
                assert!(expected.starts_with("1..=254"), "{expected}");
                assert_eq!(found, index.to_string());
            }
            other => panic!("index {index:#04x}: {other:?}"),
        }
    }
    // 254, the highest the message allows, is read (the block is then index 254).
    let mut m = raw.clone();
    m[second_block] = 0xFE;
    assert!(SpdmReport::parse(&m).unwrap().block(0xFE).is_some());
}

#[test]
fn every_truncation_is_an_error_naming_a_field() {
    let raw = report("coco-trustee/blackwell-gb202-595.58.03");
    for n in 0..raw.len() {
        match SpdmReport::parse(&raw[..n]) {
            Err(SpdmError::Truncated { need, have, .. }) => assert!(need > have, "at {n}"),
            Err(SpdmError::Field { .. }) => {}
            other => panic!("truncated to {n}: {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any byte changed anywhere: an error or a report, never a panic; a report still
    /// accounts for every byte.
    #[test]
    fn mutated_real_reports_never_panic(pos in 0usize..4200, value: u8, which in 0usize..10) {
        let mut raw = report(REPORTS[which % REPORTS.len()].0);
        let at = pos % raw.len();
        raw[at] = value;
        if let Ok(r) = SpdmReport::parse(&raw) {
            prop_assert_eq!(r.signed_len() + SIGNATURE_LEN, raw.len());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SpdmReport::parse(&bytes);
    }
}
