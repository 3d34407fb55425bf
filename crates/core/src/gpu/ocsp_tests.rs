#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! NVIDIA's real stapled OCSP responses judged at the times NVIDIA's verifier accepted them,
//! the times nothing can accept them all, tampering, and every failure of answers the
//! simulated NVIDIA PKI's responder builds.

use base64::Engine as _;
use proptest::prelude::*;
use tdx_sim::gpu::{
    SIM_RIM_NOT_AFTER, SimCertStatus, SimGpuPki, SimOcspHash, SimOcspResponder, SimOcspSpec,
};
use time::macros::datetime;

use super::ocsp::*;
use super::{NVIDIA_DEVICE_ROOT_PEM, chain_der};
use crate::test_support::{vector, vector_text};

const DIR: &str = "nvidia/nvidia-nvtrust/hopper-550.90.07";
const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;

const STAPLED: [&str; 7] = [
    "test_gpu_certificate_l2",
    "test_gpu_certificate_l3",
    "test_gpu_certificate_l4",
    "test_gpu_driver_rim_l3",
    "test_gpu_driver_rim_l4",
    "test_gpu_rim_l2",
    "test_gpu_vbios_l4",
];

fn aug21() -> i64 {
    datetime!(2025-08-21 12:00 UTC).unix_timestamp()
}

fn oct24() -> i64 {
    datetime!(2025-10-24 12:00 UTC).unix_timestamp()
}

fn response(name: &str) -> Vec<u8> {
    let text = vector_text(&format!(
        "{DIR}/ocsp/{name}_base64encoded_ocsp_response.dat"
    ));
    base64::engine::general_purpose::STANDARD
        .decode(text.split_whitespace().collect::<String>())
        .unwrap()
}

fn responses() -> Vec<Vec<u8>> {
    STAPLED.iter().map(|n| response(n)).collect()
}

fn pinned(pem: &[u8]) -> Vec<u8> {
    chain_der(pem).unwrap().remove(0)
}

/// The GPU's chain with its own root replaced by the pinned one, as NVIDIA's verifier does.
fn device_chain() -> Vec<Vec<u8>> {
    let mut chain = chain_der(&vector(&format!("{DIR}/cert_chain.pem"))).unwrap();
    *chain.last_mut().unwrap() = pinned(NVIDIA_DEVICE_ROOT_PEM);
    chain
}

/// A RIM's signing chain from its `ds:X509Certificate` elements (leaf, L3, CA, root), with
/// the root replaced by the pinned CoRIM root (after checking they are the same).
fn rim_chain(file: &str) -> Vec<Vec<u8>> {
    let xml = vector_text(&format!("{DIR}/{file}"));
    let mut chain: Vec<Vec<u8>> = xml
        .split("<ds:X509Certificate>")
        .skip(1)
        .map(|part| {
            let b64 = part.split("</ds:X509Certificate>").next().unwrap();
            base64::engine::general_purpose::STANDARD
                .decode(b64.split_whitespace().collect::<String>())
                .unwrap()
        })
        .collect();
    assert_eq!(chain.len(), 4, "{file}");
    let root = pinned(&vector("nvidia/nvidia-roots/verifier_RIM_root.pem"));
    assert_eq!(
        chain[3], root,
        "{file}: the RIM carries the pinned CoRIM root"
    );
    *chain.last_mut().unwrap() = root;
    chain
}

fn driver_chain() -> Vec<Vec<u8>> {
    rim_chain("NV_GPU_DRIVER_GH100_550.90.07.xml")
}

fn vbios_chain() -> Vec<Vec<u8>> {
    rim_chain("NV_GPU_VBIOS_1010_0200_882_96009F0001.xml")
}

fn basic(der: &[u8]) -> BasicOcspResponse {
    match parse_ocsp_response(der).unwrap() {
        OcspResponse::Successful(b) => b,
        other => panic!("{other:?}"),
    }
}

fn all_ok(results: &[(String, Result<OcspGood, OcspError>)]) -> bool {
    results.iter().all(|(_, r)| r.is_ok())
}

#[test]
fn real_responses_are_what_nvidia_writes() {
    for name in STAPLED {
        let b = basic(&response(name));
        assert_eq!(b.responses.len(), 1, "{name}");
        let single = &b.responses[0];
        assert_eq!(single.cert_id.hash, OcspHash::Sha384, "{name}");
        assert_eq!(single.status, CertStatus::Good, "{name}");
        // Valid one day, produced when issued, no nonce (stapleable), byKey, P-384.
        assert_eq!(
            single.next_update,
            Some(single.this_update + 86_400),
            "{name}"
        );
        assert_eq!(b.produced_at, single.this_update, "{name}");
        assert_eq!(b.nonce, None, "{name}");
        assert!(
            matches!(b.responder_id, ResponderId::ByKey(ref k) if k.len() == 20),
            "{name}"
        );
        assert_eq!(
            b.signature_algorithm,
            OcspSignatureAlgorithm::EcdsaSha384,
            "{name}"
        );
        assert_eq!(
            b.certs.len(),
            1,
            "{name}: one delegated responder certificate"
        );
    }
}

#[test]
fn device_chain_is_good_on_2025_08_21() {
    let results = check_chain_ocsp(&device_chain(), 1..4, &responses(), aug21(), WEEK);
    let expected = [
        (
            "GH100 A01 GSP BROM",
            "NVIDIA OCSP Responder L3 GH100 ICA1 Identity",
        ),
        (
            "NVIDIA GH100 Provisioner ICA 1",
            "NVIDIA OCSP Responder L2 GH100 Identity",
        ),
        ("NVIDIA GH100 Identity", "NVIDIA OCSP Responder L1-A 02"),
    ];
    assert_eq!(results.len(), 3);
    for ((subject, result), (cert, responder)) in results.iter().zip(expected) {
        let good = result.as_ref().unwrap_or_else(|e| panic!("{subject}: {e}"));
        assert!(subject.contains(cert), "{subject}");
        assert!(
            good.responder.contains(responder),
            "{subject}: {}",
            good.responder
        );
        assert_eq!(
            good.this_update,
            datetime!(2025-08-21 06:47 UTC).unix_timestamp() + good.this_update % 60,
            "{subject}"
        );
    }
}

#[test]
fn rim_chains_are_from_the_future_on_2025_08_21() {
    for chain in [driver_chain(), vbios_chain()] {
        let results = check_chain_ocsp(&chain, 0..3, &responses(), aug21(), WEEK);
        assert_eq!(results.len(), 3);
        for (subject, result) in results {
            match result {
                Err(OcspError::NotYetValid {
                    this_update, at, ..
                }) => {
                    assert!(this_update.starts_with("2025-10-24T11:32:2"), "{subject}");
                    assert_eq!(at, "2025-08-21T12:00:00Z");
                }
                other => panic!("{subject}: {other:?}"),
            }
        }
    }
}

#[test]
fn rim_chains_are_good_on_2025_10_24() {
    for chain in [driver_chain(), vbios_chain()] {
        let results = check_chain_ocsp(&chain, 0..3, &responses(), oct24(), WEEK);
        let subjects: Vec<_> = results.iter().map(|(s, _)| s.as_str()).collect();
        assert!(subjects[0].contains("HCC RIM L4 Signer"), "{subjects:?}");
        assert!(subjects[1].contains("NVIDIA Reference Value L3 GH100 002"));
        assert!(subjects[2].contains("NVIDIA Reference Value GH100 CA"));
        for (subject, result) in &results {
            let good = result.as_ref().unwrap_or_else(|e| panic!("{subject}: {e}"));
            assert!(good.responder.contains("NVIDIA OCSP Responder"), "{good:?}");
        }
    }
}

#[test]
fn device_chain_fails_on_2025_10_24_naming_the_expired_responder() {
    let results = check_chain_ocsp(&device_chain(), 1..4, &responses(), oct24(), WEEK);
    // The identity certificate's responder expired on 2025-09-21.
    match &results[2].1 {
        Err(OcspError::ResponderValidity {
            cert,
            responder,
            not_after,
            ..
        }) => {
            assert!(cert.contains("NVIDIA GH100 Identity"), "{cert}");
            assert!(
                responder.contains("NVIDIA OCSP Responder L1-A 02"),
                "{responder}"
            );
            assert_eq!(not_after, "2025-09-21T23:59:59Z");
        }
        other => panic!("{other:?}"),
    }
    // The two others have live responders but answers two months old.
    for (subject, result) in &results[..2] {
        assert!(
            matches!(result, Err(OcspError::Stale { .. })),
            "{subject}: {result:?}"
        );
    }
    let lenient = check_chain_ocsp(&device_chain(), 1..3, &responses(), oct24(), u64::MAX);
    for (subject, result) in &lenient {
        match result {
            Err(OcspError::Expired { next_update, .. }) => {
                assert!(next_update.starts_with("2025-08-22T06:47:0"), "{subject}");
            }
            other => panic!("{subject}: {other:?}"),
        }
    }
}

#[test]
fn no_time_accepts_every_stapled_response() {
    let (device, driver, vbios, stapled) =
        (device_chain(), driver_chain(), vbios_chain(), responses());
    let check = |at: i64| {
        let device_ok = all_ok(&check_chain_ocsp(&device, 1..4, &stapled, at, u64::MAX));
        let rims_ok = all_ok(&check_chain_ocsp(&driver, 0..3, &stapled, at, u64::MAX))
            && all_ok(&check_chain_ocsp(&vbios, 0..3, &stapled, at, u64::MAX));
        (device_ok, rims_ok)
    };
    // Hourly around both windows, daily across the months between and around them.
    let hour = 3_600;
    let windows = [
        datetime!(2025-08-19 00:00 UTC).unix_timestamp()
            ..datetime!(2025-08-24 00:00 UTC).unix_timestamp(),
        datetime!(2025-10-22 00:00 UTC).unix_timestamp()
            ..datetime!(2025-10-27 00:00 UTC).unix_timestamp(),
    ];
    let mut times: Vec<i64> = windows
        .iter()
        .flat_map(|w| w.clone().step_by(hour))
        .collect();
    times.extend(
        (datetime!(2025-06-01 00:00 UTC).unix_timestamp()
            ..datetime!(2026-01-01 00:00 UTC).unix_timestamp())
            .step_by(86_400),
    );
    let (mut device_seen, mut rims_seen) = (false, false);
    for at in times {
        let (device_ok, rims_ok) = check(at);
        assert!(
            !(device_ok && rims_ok),
            "{}: every response accepted",
            crate::verify::time::format_unix(at)
        );
        device_seen |= device_ok;
        rims_seen |= rims_ok;
    }
    assert!(
        device_seen && rims_seen,
        "each set is accepted at some time"
    );
}

/// Each real response, the certificate it answers for and that certificate's issuer.
fn real_cases() -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let (device, driver, vbios) = (device_chain(), driver_chain(), vbios_chain());
    let pair = |chain: &[Vec<u8>], i: usize| (chain[i].clone(), chain[i + 1].clone());
    let of = [
        ("test_gpu_certificate_l2", pair(&device, 3)),
        ("test_gpu_certificate_l3", pair(&device, 2)),
        ("test_gpu_certificate_l4", pair(&device, 1)),
        ("test_gpu_rim_l2", pair(&driver, 2)),
        ("test_gpu_driver_rim_l3", pair(&driver, 1)),
        ("test_gpu_driver_rim_l4", pair(&driver, 0)),
        ("test_gpu_vbios_l4", pair(&vbios, 0)),
    ];
    of.into_iter()
        .map(|(name, (cert, issuer))| (response(name), cert, issuer))
        .collect()
}

#[test]
fn the_request_carries_the_certid_nvidias_responses_answer() {
    for (resp, cert, issuer) in real_cases() {
        let request = ocsp_request_der(&cert, &issuer).unwrap();
        let parsed = parse_ocsp_request(&request).unwrap();
        assert_eq!(parsed.nonce, None);
        assert_eq!(parsed.cert_ids.len(), 1);
        assert_eq!(parsed.cert_ids[0], basic(&resp).responses[0].cert_id);
        // Byte for byte: the CertID DER (inside four SEQUENCE headers) is inside the response.
        let mut at = 0;
        for _ in 0..4 {
            assert_eq!(request[at], 0x30);
            at += match request[at + 1] {
                0..0x80 => 2,
                long => 2 + usize::from(long & 0x7F),
            };
        }
        let id_der = &request[at..];
        assert!(resp.windows(id_der.len()).any(|w| w == id_der));
    }
}

#[test]
fn every_flipped_byte_of_a_real_response_is_refused() {
    let (resp, cert, issuer) = real_cases().remove(2);
    assert!(check_ocsp(&resp, &cert, &issuer, aug21(), WEEK).is_ok());
    let signature = basic(&resp).signature;
    let sig_at = resp
        .windows(signature.len())
        .position(|w| w == signature.as_slice())
        .unwrap();
    for i in 0..resp.len() {
        let mut bad = resp.clone();
        bad[i] ^= 0x01;
        let result = check_ocsp(&bad, &cert, &issuer, aug21(), WEEK);
        assert!(result.is_err(), "byte {i} flipped is accepted");
        if (sig_at..sig_at + signature.len()).contains(&i) {
            assert!(
                matches!(result, Err(OcspError::Signature { .. })),
                "byte {i}: {result:?}"
            );
        }
    }
}

#[test]
fn unsuccessful_and_malformed_responses_are_named() {
    let (_, cert, issuer) = real_cases().remove(0);
    assert!(matches!(
        check_ocsp(
            &[0x30, 0x03, 0x0A, 0x01, 0x03],
            &cert,
            &issuer,
            aug21(),
            WEEK
        ),
        Err(OcspError::Unsuccessful {
            status: "tryLater",
            ..
        })
    ));
    assert!(matches!(
        check_ocsp(&[0x30, 0x80, 0x00, 0x00], &cert, &issuer, aug21(), WEEK),
        Err(OcspError::Malformed {
            field: "OCSPResponse",
            ..
        })
    ));
    // Another certificate's answer.
    let other = response("test_gpu_certificate_l4");
    assert!(matches!(
        check_ocsp(&other, &cert, &issuer, aug21(), WEEK),
        Err(OcspError::NotInResponse { count: 1, .. })
    ));
    // A certificate with an issuer that is not its own.
    let device = device_chain();
    assert!(matches!(
        check_ocsp(&other, &device[1], &device[3], aug21(), WEEK),
        Err(OcspError::NotIssuedBy { .. })
    ));
    // Nothing stapled for a certificate; a range beyond the chain; the root has no issuer.
    let results = check_chain_ocsp(&device, 0..6, &responses(), aug21(), WEEK);
    assert!(matches!(
        results[0].1,
        Err(OcspError::MissingResponse { .. })
    ));
    assert!(matches!(results[4].1, Err(OcspError::NoIssuer { .. })));
    assert!(matches!(
        results[5].1,
        Err(OcspError::NoCertificate { index: 5, len: 5 })
    ));
}

#[test]
fn an_unreadable_answer_is_reported_where_no_readable_answer_names_the_certificate() {
    let device = device_chain();
    let malformed = vec![0x30, 0x80, 0x00, 0x00];
    let try_later = vec![0x30, 0x03, 0x0A, 0x01, 0x03];
    // The only answer stapled for the BROM is unreadable, or says tryLater: that is the
    // finding, not that nothing was stapled.
    let results = check_chain_ocsp(
        &device,
        1..2,
        std::slice::from_ref(&malformed),
        aug21(),
        WEEK,
    );
    assert!(
        matches!(
            &results[0].1,
            Err(OcspError::Malformed { cert, field: "OCSPResponse", .. }) if cert.contains("GSP BROM")
        ),
        "{:?}",
        results[0].1
    );
    let results = check_chain_ocsp(
        &device,
        1..2,
        std::slice::from_ref(&try_later),
        aug21(),
        WEEK,
    );
    assert!(
        matches!(
            &results[0].1,
            Err(OcspError::Unsuccessful {
                status: "tryLater",
                ..
            })
        ),
        "{:?}",
        results[0].1
    );
    // Beside the real answers, which name each certificate, an unreadable one changes nothing.
    let mut stapled = vec![malformed, try_later];
    stapled.extend(responses());
    let results = check_chain_ocsp(&device, 1..4, &stapled, aug21(), WEEK);
    assert!(all_ok(&results), "{results:?}");
    // Readable answers about other certificates only: nothing was stapled for the leaf.
    let results = check_chain_ocsp(&device, 0..1, &stapled[2..], aug21(), WEEK);
    assert!(matches!(
        results[0].1,
        Err(OcspError::MissingResponse { .. })
    ));
}

/// DER with a definite length in the fewest octets.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let octets: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | octets.len() as u8);
        out.extend(octets);
    }
    out.extend_from_slice(content);
    out
}

/// A non-critical extension with OID 1.3.`arc` and an empty value.
fn extension(arc: u32) -> Vec<u8> {
    let mut oid = vec![0x2B];
    let mut groups = vec![(arc & 0x7F) as u8];
    let mut rest = arc >> 7;
    while rest > 0 {
        groups.push(0x80 | (rest & 0x7F) as u8);
        rest >>= 7;
    }
    oid.extend(groups.into_iter().rev());
    [der(0x06, &oid), der(0x04, &[])].concat()
}

/// A successful OCSPResponse (unsigned: parsing never gets that far) answering nothing, with
/// `extensions` as its responseExtensions.
fn answer_with_extensions(extensions: &[Vec<u8>]) -> Vec<u8> {
    let list: Vec<u8> = extensions.iter().flat_map(|e| der(0x30, e)).collect();
    let tbs = der(
        0x30,
        &[
            der(0xA2, &der(0x04, &[0x11; 20])),
            der(0x18, b"20250821000000Z"),
            der(0x30, &[]),
            der(0xA1, &der(0x30, &list)),
        ]
        .concat(),
    );
    let algorithm = der(
        0x30,
        &der(0x06, &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03]),
    );
    let basic = der(
        0x30,
        &[tbs, algorithm, der(0x03, &[0x00, 0x30, 0x00])].concat(),
    );
    let bytes = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01],
            ),
            der(0x04, &basic),
        ]
        .concat(),
    );
    der(0x30, &[der(0x0A, &[0x00]), der(0xA0, &bytes)].concat())
}

#[test]
fn answers_and_their_extensions_are_bounded() {
    // 1.5 million distinct extensions (about 15 MB, under a bundle's 16 MiB): checked for
    // repeats against a list, hours of work. Refused by its size, before any of it is read.
    let flood: Vec<Vec<u8>> = (0..1_500_000).map(extension).collect();
    let flood = answer_with_extensions(&flood);
    assert!(flood.len() > MAX_OCSP_RESPONSE_LEN);
    let e = parse_ocsp_response(&flood).unwrap_err();
    assert_eq!(e.field, "OCSPResponse", "{e}");
    assert!(e.detail.contains("more than"), "{e}");
    // Under the size limit, the number of extensions is bounded; a repeat is refused.
    let most: Vec<Vec<u8>> = (0..MAX_OCSP_EXTENSIONS as u32).map(extension).collect();
    assert!(matches!(
        parse_ocsp_response(&answer_with_extensions(&most)),
        Ok(OcspResponse::Successful(_))
    ));
    let too_many: Vec<Vec<u8>> = (0..=MAX_OCSP_EXTENSIONS as u32).map(extension).collect();
    let e = parse_ocsp_response(&answer_with_extensions(&too_many)).unwrap_err();
    assert_eq!(e.field, "responseExtensions", "{e}");
    assert!(e.detail.contains("more than"), "{e}");
    let repeated = [extension(7), extension(9), extension(7)];
    let e = parse_ocsp_response(&answer_with_extensions(&repeated)).unwrap_err();
    assert!(e.detail.contains("repeated"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The builder, through the simulated NVIDIA PKI's responder: answers about the simulated
// BROM certificate (device chain 1), issued by the simulated provisioner ICA (device chain 2).

/// A simulated Hopper PKI; the simulator links the library build of this crate, so its
/// `Architecture` is another type here and crosses over by name.
fn sim_pki() -> SimGpuPki {
    let hopper = serde_json::from_value(serde_json::json!("hopper")).unwrap();
    SimGpuPki::generate(hopper, SIM_RIM_NOT_AFTER).unwrap()
}

struct Pki {
    sim: SimGpuPki,
    at: i64,
}

fn pki() -> Pki {
    Pki {
        sim: sim_pki(),
        at: aug21(),
    }
}

impl Pki {
    /// The certificate the answers are about.
    fn cert(&self) -> &[u8] {
        &self.sim.chain[1].der
    }

    fn issuer(&self) -> &[u8] {
        &self.sim.chain[2].der
    }

    /// A good answer an hour old, signed by a responder the issuer delegated to.
    fn spec(&self) -> SimOcspSpec<'_> {
        SimOcspSpec {
            produced_at: self.at - 3_600,
            this_update: self.at - 3_600,
            next_update: Some(self.at + 86_400),
            responder: SimOcspResponder::Delegated {
                by: None,
                ocsp_signing: true,
                not_after: self.at + 365 * 86_400,
            },
            ..SimOcspSpec::good(self.cert(), self.at)
        }
    }

    fn build(&self, spec: &SimOcspSpec<'_>) -> Vec<u8> {
        self.sim.ocsp_answer_with(spec).unwrap()
    }

    fn check(&self, spec: &SimOcspSpec<'_>) -> Result<OcspGood, OcspError> {
        check_ocsp(&self.build(spec), self.cert(), self.issuer(), self.at, WEEK)
    }
}

const SIM_BROM: &str = "CN=GH100 A01 GSP BROM, O=NVIDIA Corporation (simulated)";
const SIM_ICA: &str = "CN=NVIDIA GH100 Provisioner ICA 1, O=NVIDIA Corporation (simulated)";
const SIM_RESPONDER: &str = "CN=NVIDIA OCSP Responder, O=NVIDIA Corporation (simulated)";

#[test]
fn a_built_response_round_trips() {
    let pki = pki();
    let built = pki.build(&pki.spec());
    let b = basic(&built);
    assert_eq!(
        b.responses[0].cert_id,
        ocsp_cert_id(pki.cert(), pki.issuer(), &OcspHash::Sha384).unwrap()
    );
    let good = check_ocsp(&built, pki.cert(), pki.issuer(), pki.at, WEEK).unwrap();
    assert_eq!(good.subject, SIM_BROM);
    assert_eq!(good.responder, SIM_RESPONDER);
    assert_eq!(good.next_update, Some(pki.at + 86_400));
    // The chain function finds it among others.
    let results = check_chain_ocsp(
        &pki.sim.chain_der(),
        1..2,
        &[response("test_gpu_rim_l2"), built],
        pki.at,
        WEEK,
    );
    assert!(results[0].1.is_ok(), "{results:?}");
    // SHA-256 CertIDs, and the issuer signing its own answers (RFC 6960 §4.2.2.2 first case).
    let sha256 = SimOcspSpec {
        hash: SimOcspHash::Sha256,
        ..pki.spec()
    };
    assert!(pki.check(&sha256).is_ok());
    let by_issuer = SimOcspSpec {
        responder: SimOcspResponder::Issuer,
        ..pki.spec()
    };
    assert_eq!(pki.check(&by_issuer).unwrap().responder, SIM_ICA);
}

#[test]
fn built_bad_statuses_and_times_each_fail_by_name() {
    let pki = pki();
    let at = pki.at;
    let revoked = |reason| SimOcspSpec {
        status: SimCertStatus::Revoked {
            time: at - 7_200,
            reason,
        },
        ..pki.spec()
    };
    match pki.check(&revoked(Some(1))) {
        Err(OcspError::Revoked { reason, time, .. }) => {
            assert_eq!(reason, "keyCompromise (1)");
            assert_eq!(time, "2025-08-21T10:00:00Z");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        pki.check(&revoked(None)),
        Err(OcspError::Revoked { ref reason, .. }) if reason == "not given"
    ));
    assert!(matches!(
        pki.check(&revoked(Some(CRL_REASON_CERTIFICATE_HOLD))),
        Err(OcspError::OnHold { .. })
    ));
    let unknown = SimOcspSpec {
        status: SimCertStatus::Unknown,
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&unknown),
        Err(OcspError::Unknown { .. })
    ));
    let stale = SimOcspSpec {
        this_update: at - 8 * 86_400,
        next_update: None,
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&stale),
        Err(OcspError::Stale {
            max_age_secs: WEEK,
            ..
        })
    ));
    let future = SimOcspSpec {
        this_update: at + 60,
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&future),
        Err(OcspError::NotYetValid { .. })
    ));
    let expired = SimOcspSpec {
        next_update: Some(at - 1),
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&expired),
        Err(OcspError::Expired { .. })
    ));
    // nextUpdate exactly now, and no nextUpdate at all, are fine.
    let edge = SimOcspSpec {
        next_update: Some(at),
        ..pki.spec()
    };
    assert!(pki.check(&edge).is_ok());
    let open = SimOcspSpec {
        next_update: None,
        ..pki.spec()
    };
    assert!(pki.check(&open).is_ok());
}

#[test]
fn built_responses_from_the_wrong_signer_fail_by_name() {
    let pki = pki();
    let at = pki.at;
    // Another simulated GPU PKI: same names and serials, other keys.
    let other = sim_pki();
    // The CertID names the other PKI's ICA (same BROM serial): not an answer for this
    // certificate.
    let wrong_issuer = SimOcspSpec {
        cert_id_issuer_der: Some(&other.chain[2].der),
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&wrong_issuer),
        Err(OcspError::NotInResponse { .. })
    ));
    // Signed by a key that is not the responder certificate's.
    let bad_key = SimOcspSpec {
        responder: SimOcspResponder::Signer {
            cert_der: pki.issuer(),
            key: &other.chain[2].key,
        },
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&bad_key),
        Err(OcspError::Signature { .. })
    ));
    // A responder another CA (the other PKI's RIM CA) delegated to.
    let foreign = SimOcspSpec {
        responder: SimOcspResponder::Delegated {
            by: Some(&other.rim_chain[2]),
            ocsp_signing: true,
            not_after: at + 365 * 86_400,
        },
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&foreign),
        Err(OcspError::ResponderNotAuthorized { why, .. }) if why.contains("not issued by")
    ));
    // One the other PKI's ICA delegated to: the issuer's name, but not its key.
    let impostor = SimOcspSpec {
        responder: SimOcspResponder::Delegated {
            by: Some(&other.chain[2]),
            ocsp_signing: true,
            not_after: at + 365 * 86_400,
        },
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&impostor),
        Err(OcspError::ResponderNotAuthorized { why, .. }) if why.contains("issuing CA's key")
    ));
    // Issued by the right CA but without id-kp-OCSPSigning.
    let plain = SimOcspSpec {
        responder: SimOcspResponder::Delegated {
            by: None,
            ocsp_signing: false,
            not_after: at + 365 * 86_400,
        },
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&plain),
        Err(OcspError::ResponderNotAuthorized { why, .. }) if why.contains("OCSPSigning")
    ));
    // A delegated responder that expired yesterday.
    let old = SimOcspSpec {
        responder: SimOcspResponder::Delegated {
            by: None,
            ocsp_signing: true,
            not_after: at - 86_400,
        },
        ..pki.spec()
    };
    assert!(matches!(
        pki.check(&old),
        Err(OcspError::ResponderValidity { .. })
    ));
}

#[test]
fn an_unsupported_certid_hash_is_named() {
    let pki = pki();
    let sha256 = SimOcspSpec {
        hash: SimOcspHash::Sha256,
        ..pki.spec()
    };
    let mut built = pki.build(&sha256);
    // SHA-256's OID (…04 02 01) becomes SHA-512's (…04 02 03), same length.
    let oid = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    let at = built.windows(oid.len()).position(|w| w == oid).unwrap();
    built[at + 8] = 0x03;
    match check_ocsp(&built, pki.cert(), pki.issuer(), pki.at, WEEK) {
        Err(OcspError::UnsupportedHash { algorithm, .. }) => {
            assert_eq!(algorithm, "2.16.840.1.101.3.4.2.3");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ocsp_cert_id(pki.cert(), pki.issuer(), &OcspHash::Sha1),
        Err(OcspError::UnsupportedHash { .. })
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let (_, cert, issuer) = real_cases().remove(0);
        let _ = parse_ocsp_response(&bytes);
        let _ = parse_ocsp_request(&bytes);
        let _ = check_ocsp(&bytes, &cert, &issuer, aug21(), WEEK);
        let _ = check_ocsp(&bytes, &bytes, &bytes, aug21(), WEEK);
    }

    #[test]
    fn mutated_real_responses_never_panic(
        which in 0usize..7,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<Option<usize>>(),
    ) {
        let (mut resp, cert, issuer) = real_cases().remove(which);
        for (at, value) in edits {
            let i = at % resp.len();
            resp[i] = value;
        }
        if let Some(cut) = cut {
            resp.truncate(cut % (resp.len() + 1));
        }
        let _ = parse_ocsp_response(&resp);
        let _ = check_ocsp(&resp, &cert, &issuer, aug21(), WEEK);
        let _ = check_chain_ocsp(&device_chain(), 0..5, &[resp], oct24(), WEEK);
    }
}

/// Each answer naming a certificate can cost a signature verification: a certificate gets a
/// few tries, not one per answer a hostile bundle names it in.
#[test]
fn a_certificate_gets_a_few_answers_judged_not_every_one_stapled() {
    struct Counting(std::cell::Cell<usize>);
    impl OcspMemo for Counting {
        fn authenticated(
            &self,
            _key: [u8; 32],
            compute: &mut dyn FnMut() -> Result<Authenticated, OcspError>,
        ) -> Result<Authenticated, OcspError> {
            self.0.set(self.0.get() + 1);
            compute()
        }
    }
    let pki = pki();
    let chain: Vec<Vec<u8>> = pki.sim.chain.iter().map(|c| c.der.clone()).collect();
    // Stale answers, each different (so none is remembered for another), then a good one.
    let stale = |i: i64| {
        pki.build(&SimOcspSpec {
            this_update: pki.at - 30 * 86_400 - i,
            next_update: None,
            ..pki.spec()
        })
    };
    let judge = |answers: &[Vec<u8>]| {
        let memo = Counting(std::cell::Cell::new(0));
        let stapled = Stapled::parse_all(answers);
        let mut results = check_chain_stapled(&chain, 1..2, &stapled, pki.at, WEEK, &memo);
        (results.remove(0).1, memo.0.get())
    };
    let mut answers: Vec<Vec<u8>> = (0..3).map(stale).collect();
    answers.push(pki.build(&pki.spec()));
    let (verdict, verified) = judge(&answers);
    assert!(verdict.is_ok(), "{verdict:?}");
    assert_eq!(verified, 4);
    let mut answers: Vec<Vec<u8>> = (0..40).map(stale).collect();
    answers.push(pki.build(&pki.spec()));
    let (verdict, verified) = judge(&answers);
    assert!(
        matches!(verdict, Err(OcspError::Stale { .. })),
        "{verdict:?}"
    );
    assert_eq!(verified, MAX_JUDGED_PER_CERTIFICATE);
}
