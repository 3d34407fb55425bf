use proptest::prelude::*;

use super::*;
use crate::test_support::vector;

#[test]
fn parses_real_v4_quote() {
    let bytes = vector("phala-dcap-qvl/tdx_quote");
    let q = Quote::parse(&bytes).unwrap();
    assert_eq!(q.header.version, 4);
    assert_eq!(q.header.qe_vendor_id, INTEL_QE_VENDOR_ID);
    assert_eq!(q.body.kind, BodyKind::Td10);
    assert_eq!(q.ranges.body, 48..48 + 584);
    assert!(q.body.sept_ve_disabled());
    assert!(!q.body.is_debug());
    assert_eq!(q.pck_chain_der().unwrap().len(), 3);
    assert_eq!(q.qe_auth_data.len(), 32);
}

#[test]
fn parses_real_v5_td15_quote() {
    let bytes = vector("phala-dcap-qvl/tdx_quote_outdated");
    let q = Quote::parse(&bytes).unwrap();
    assert_eq!(q.header.version, 5);
    assert_eq!(q.body.kind, BodyKind::Td15);
    assert_eq!(q.ranges.body, 54..54 + 648);
    assert!(q.body.mrservicetd.is_some());
}

#[test]
fn trailing_padding_is_cut_by_declared_length() {
    let bytes = vector("google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat");
    let q = Quote::parse(&bytes).unwrap();
    assert_eq!(bytes.len() - q.raw.len(), 39);
    assert!(!q.body.sept_ve_disabled());
}

#[test]
fn sgx_quote_is_not_tdx() {
    let bytes = vector("phala-dcap-qvl/sgx_quote");
    let err = Quote::parse(&bytes).unwrap_err();
    assert!(
        matches!(err, QuoteError::NotTdx { tee_type: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not a TDX quote"));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = vector("phala-dcap-qvl/tdx_quote");
    let full = Quote::parse(&bytes).unwrap().raw.len();
    for n in 0..full {
        assert!(
            Quote::parse(&bytes[..n]).is_err(),
            "prefix of {n} bytes parsed"
        );
    }
}

#[test]
fn inconsistent_lengths_and_types_are_refused() {
    let bytes = vector("phala-dcap-qvl/tdx_quote");
    let q = Quote::parse(&bytes).unwrap();
    let sig = q.ranges.signature_data.start;
    let raw = q.raw.to_vec();

    // Outer certification data type 6 -> 7.
    let mut bad = raw.clone();
    bad[sig + 128] = 7;
    assert!(matches!(
        Quote::parse(&bad),
        Err(QuoteError::CertDataType {
            level: "outer",
            found: 7,
            ..
        })
    ));

    // Outer declared size one too large.
    let mut bad = raw.clone();
    bad[sig + 130] = bad[sig + 130].wrapping_add(1);
    assert!(matches!(
        Quote::parse(&bad),
        Err(QuoteError::LengthMismatch { .. })
    ));

    // Inner type 5 -> 4.
    let inner_type_at = q.ranges.qe_auth_data.end;
    let mut bad = raw.clone();
    bad[inner_type_at] = 4;
    assert!(matches!(
        Quote::parse(&bad),
        Err(QuoteError::CertDataType {
            level: "inner",
            found: 4,
            ..
        })
    ));

    // Inner declared size one smaller.
    let mut bad = raw.clone();
    bad[inner_type_at + 2] = bad[inner_type_at + 2].wrapping_sub(1);
    assert!(matches!(
        Quote::parse(&bad),
        Err(QuoteError::LengthMismatch { .. })
    ));

    // Signature data length one larger than what follows is truncation.
    let mut bad = raw.clone();
    let len_at = q.ranges.body.end;
    bad[len_at] = bad[len_at].wrapping_add(1);
    assert!(Quote::parse(&bad).is_err());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = Quote::parse(&bytes);
    }

    #[test]
    fn mutations_never_panic(idx in 0usize..5006, val in any::<u8>()) {
        let mut bytes = vector("phala-dcap-qvl/tdx_quote");
        if let Some(b) = bytes.get_mut(idx) { *b = val; }
        if let Ok(q) = Quote::parse(&bytes) {
            let _ = q.pck_chain_der();
        }
    }
}

#[test]
fn tdreport_and_synthetic_inputs_are_refused_cleanly() {
    // A 1024-byte TDREPORT (random bytes in the TDREPORT layout) is not a quote.
    let report = vector("google-go-tdx-guest/report.dat");
    assert_eq!(report.len(), 1024);
    assert!(Quote::parse(&report).is_err());
    // Intel QVL's synthetic sample is a well-formed v4 TDX quote whose declared lengths
    // account for the whole file (its trust is refused by the verifier, elsewhere).
    let sample = vector("intel-qvl-sample-tdx/quote.dat");
    let q = Quote::parse(&sample).unwrap();
    assert_eq!(q.header.version, 4);
    assert_eq!(q.header.tee_type, layout::TEE_TYPE_TDX);
    assert_eq!(q.body.kind, BodyKind::Td10);
    assert_eq!(q.raw.len(), sample.len());
    // Its type-5 certification data carries the chain as raw DER, not the PEM the type
    // promises, so reading the chain is a clean error rather than garbage certificates.
    assert!(
        matches!(q.pck_chain_der(), Err(QuoteError::BadPem { .. })),
        "{:?}",
        q.pck_chain_der()
    );
    // The CCEL quote from the GCE guest is a well-formed v4 quote.
    let q = vector("google-go-tdx-guest/ccel/cos-113-tdx-quote.dat");
    assert_eq!(Quote::parse(&q).unwrap().header.version, 4);
}

#[test]
fn hex_and_binary_quotes() {
    assert_eq!(decode_file(b"0x0a0B\n 0c".to_vec()), vec![0x0a, 0x0b, 0x0c]);
    let binary = vec![0x04, 0x00, 0x02, 0x00, 0x81];
    assert_eq!(decode_file(binary.clone()), binary);
}
