//! Every real RIM in tests/vectors/nvidia against NVIDIA's own verdicts (the RIM-only
//! expected-*.json files and cases.json), and signing a RIM with a simulated chain.

use serde_json::Value;
use time::format_description::well_known::Rfc3339;

use super::*;
use crate::test_support::vector;

pub(super) const DRIVER_550: &str =
    "nvidia-nvtrust/hopper-550.90.07/NV_GPU_DRIVER_GH100_550.90.07.xml";

fn root() -> Vec<u8> {
    crate::gpu::chain_der(NVIDIA_RIM_ROOT_PEM)
        .unwrap()
        .remove(0)
}

fn unix(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &Rfc3339)
        .unwrap()
        .unix_timestamp()
}

pub(super) fn rim_bytes(file: &str) -> Vec<u8> {
    vector(&format!("nvidia/{file}"))
}

/// Every RIM under tests/vectors/nvidia (`*.xml`, `*.swidtag`), relative to that folder.
fn all_rim_files() -> Vec<String> {
    let base =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/nvidia");
    let mut out = Vec::new();
    let mut dirs = vec![base.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("xml" | "swidtag")
            ) {
                out.push(
                    p.strip_prefix(&base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// Our signature result where NVIDIA gives none (it stops at a failed chain) and where it
/// gives one. NVIDIA ran the signature on the first two and found it bad; the third,
/// `..._570.124.03_expired.xml`, NVIDIA never reached (its chain is expired), but its content
/// was changed after signing: the ECDSA signature over SignedInfo verifies (so the DigestValue
/// is the one NVIDIA's key signed) while the document's digest differs, and the file has the
/// same shape as the 36 RIMs whose digests do verify. Every other real RIM verifies.
fn our_signature_verdict(file: &str) -> Result<(), &'static str> {
    if file.ends_with("incorrect_signature_driver_rim.xml") {
        Err("BadSignature")
    } else if file.ends_with("NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml")
        || file.ends_with("NV_GPU_DRIVER_GH100_570.124.03_expired.xml")
    {
        Err("DigestMismatch")
    } else {
        Ok(())
    }
}

/// One NVIDIA verdict on one RIM at one time.
struct Verdict {
    file: String,
    at: i64,
    colloquial_version: String,
    active_indexes: Option<Vec<u16>>,
    cert_chain_valid: bool,
    cert_status: String,
    signature: Option<bool>,
}

fn rim_only_verdicts() -> Vec<Verdict> {
    let mut out = Vec::new();
    for (dir, json) in [
        ("nvidia-nvtrust/vbios-rims", "expected-at-2024-06-01.json"),
        ("nvidia-nvtrust/vbios-rims", "expected-at-2026-12-04.json"),
        ("nvidia-attestation-sdk/rims", "expected-at-2026-01-01.json"),
        ("nvidia-attestation-sdk/rims", "expected-at-2027-01-01.json"),
    ] {
        let v: Value = serde_json::from_slice(&vector(&format!("nvidia/{dir}/{json}"))).unwrap();
        let at = unix(v["verify_at"].as_str().unwrap());
        for (file, r) in v["results"].as_object().unwrap() {
            assert_eq!(r["schema_validated"], Value::Bool(true), "{file}");
            out.push(Verdict {
                file: format!("{dir}/{file}"),
                at,
                colloquial_version: r["colloquial_version"].as_str().unwrap().into(),
                active_indexes: Some(
                    r["active_indexes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| u16::try_from(i.as_u64().unwrap()).unwrap())
                        .collect(),
                ),
                cert_chain_valid: r["cert_chain_validated"].as_bool().unwrap(),
                cert_status: r["cert_status"].as_str().unwrap().into(),
                signature: r["signature_verified"].as_bool(),
            });
        }
    }
    out
}

fn case_verdicts() -> Vec<Verdict> {
    let cases: Value = serde_json::from_slice(&vector("nvidia/cases.json")).unwrap();
    let mut out = Vec::new();
    for case in cases.as_array().unwrap() {
        for kind in ["driver_rim", "vbios_rim"] {
            let (Some(file), Some(e)) = (case[kind].as_str(), case["expect"][kind].as_object())
            else {
                continue;
            };
            assert_eq!(e["schema_valid"], Value::Bool(true), "{file}");
            out.push(Verdict {
                file: file.into(),
                at: unix(case["verify_at"].as_str().unwrap()),
                colloquial_version: e["colloquial_version"].as_str().unwrap().into(),
                active_indexes: None,
                cert_chain_valid: e["cert_chain_valid"].as_bool().unwrap(),
                cert_status: e["cert_status"].as_str().unwrap().into(),
                signature: e["signature_valid"].as_bool(),
            });
        }
    }
    out
}

fn check(v: &Verdict, root: &[u8]) {
    let file = &v.file;
    let rim = Rim::parse(&rim_bytes(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(
        rim.colloquial_version().to_lowercase(),
        v.colloquial_version,
        "{file}"
    );
    if let Some(active) = &v.active_indexes {
        let ours: Vec<u16> = rim
            .measurements()
            .iter()
            .filter(|m| m.active)
            .map(|m| m.index)
            .collect();
        assert_eq!(&ours, active, "{file}");
    }
    let chain = rim.verify_chain(root, v.at);
    assert_eq!(
        chain.is_ok(),
        v.cert_chain_valid,
        "{file} at {}: {chain:?}",
        v.at
    );
    let status = match &chain {
        Ok(_) => "valid",
        Err(e) if e.is_expired() => "expired",
        Err(_) => "invalid",
    };
    assert_eq!(status, v.cert_status, "{file} at {}: {chain:?}", v.at);

    let signature = rim.verify_signature();
    let named = signature.as_ref().map_err(|e| match e {
        RimSignatureError::BadSignature => "BadSignature",
        RimSignatureError::DigestMismatch { .. } => "DigestMismatch",
        RimSignatureError::BadKey { .. } => "BadKey",
    });
    let named = named.map(|_| ());
    assert_eq!(named, our_signature_verdict(file), "{file}");
    // Where NVIDIA ran the signature check, it agrees with ours.
    if let Some(nvidia) = v.signature {
        assert_eq!(signature.is_ok(), nvidia, "{file}");
    }
}

#[test]
fn the_pinned_rim_root_is_nvidias() {
    use sha2::{Digest as _, Sha256};
    assert_eq!(
        hex::encode(Sha256::digest(root())),
        "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
    );
}

#[test]
fn every_real_rim_parses_and_has_an_nvidia_verdict() {
    let files = all_rim_files();
    assert_eq!(files.len(), 39);
    let judged: std::collections::BTreeSet<String> = rim_only_verdicts()
        .into_iter()
        .chain(case_verdicts())
        .map(|v| v.file)
        .collect();
    for file in &files {
        let rim = Rim::parse(&rim_bytes(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(rim.tag_id().len(), 96, "{file}");
        assert!(!rim.measurements().is_empty(), "{file}");
        assert!(rim.signing_chain().len() >= 2, "{file}");
        assert!(judged.contains(file), "{file} has no NVIDIA verdict");
    }
}

#[test]
fn rim_only_cases_match_nvidia() {
    let root = root();
    let verdicts = rim_only_verdicts();
    assert_eq!(verdicts.len(), 24 * 2 + 4 * 2);
    for v in &verdicts {
        check(v, &root);
    }
}

#[test]
fn full_cases_match_nvidia() {
    let root = root();
    let verdicts = case_verdicts();
    assert!(verdicts.len() >= 25, "{}", verdicts.len());
    for v in &verdicts {
        check(v, &root);
    }
}

#[test]
fn the_550_driver_rim_reads_as_nvidia_wrote_it() {
    let rim = Rim::parse(&rim_bytes(DRIVER_550)).unwrap();
    assert_eq!(rim.colloquial_version(), "550.90.07");
    assert_eq!(rim.measurements().len(), 64);
    let m7 = &rim.measurements()[7];
    assert_eq!(
        (m7.index, m7.active, m7.name.as_str()),
        (7, true, "Measurement_7")
    );
    assert_eq!(
        hex::encode(m7.alternatives[0]),
        "80161aac5e7509f038a6457b111e048207d1dc0e78edbb8c172fca4139c1d5f29cda67ecdd261fdc9203b76387f7389f"
    );
    let subjects = rim
        .verify_chain(&root(), unix("2025-06-01T00:00:00Z"))
        .unwrap();
    assert!(subjects[0].contains("HCC RIM L4 Signer"), "{subjects:?}");
    assert!(
        subjects[3].contains("NVIDIA CoRIM signing Root CA"),
        "{subjects:?}"
    );
}

/// A simulated NVIDIA PKI (its RIM chain: signer, L3, CA, CoRIM root); the simulator links
/// the library build of this crate, so its `Architecture` is another type here and crosses
/// over by name.
fn sim_pki() -> tdx_sim::gpu::SimGpuPki {
    let hopper = serde_json::from_value(serde_json::json!("hopper")).unwrap();
    tdx_sim::gpu::SimGpuPki::generate(hopper, tdx_sim::gpu::SIM_RIM_NOT_AFTER).unwrap()
}

/// The simulated RIM signer's key.
fn signer_key(pki: &tdx_sim::gpu::SimGpuPki) -> &SigningKey {
    pki.rim_chain[0].key.signing_key()
}

/// The real 550.90.07 driver RIM with its signature cut out.
pub(super) fn unsigned_rim() -> Vec<u8> {
    let text = String::from_utf8(rim_bytes(DRIVER_550)).unwrap();
    let start = text.find("<ds:Signature").unwrap();
    let end = text.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    format!("{}{}", &text[..start], &text[end..]).into_bytes()
}

#[test]
fn a_signed_rim_verifies_with_its_simulated_chain() {
    let pki = sim_pki();
    let chain = pki.rim_chain_der();
    let unsigned = unsigned_rim();
    let signed = sign_rim(&unsigned, signer_key(&pki), &chain).unwrap();
    let rim = Rim::parse(&signed).unwrap();
    rim.verify_signature().unwrap();
    assert_eq!(rim.signing_chain(), chain.as_slice());
    let subjects = rim
        .verify_chain(&chain[3], unix("2029-01-01T00:00:00Z"))
        .unwrap();
    assert_eq!(subjects.len(), 4);
    assert!(subjects[0].contains("HCC RIM L4 Signer"), "{subjects:?}");
    // The same content as NVIDIA's, under another signature.
    assert_eq!(
        canonicalize_for_signing(&signed).unwrap(),
        canonicalize_for_signing(&rim_bytes(DRIVER_550)).unwrap()
    );
    assert_eq!(
        rim.measurements(),
        Rim::parse(&rim_bytes(DRIVER_550)).unwrap().measurements()
    );
    // NVIDIA's root did not issue it; after 2030 it has expired.
    let err = rim
        .verify_chain(&root(), unix("2029-01-01T00:00:00Z"))
        .unwrap_err();
    assert!(
        matches!(err, RimChainError::Issuer { index: 2, .. }),
        "{err}"
    );
    assert!(!err.is_expired());
    let err = rim
        .verify_chain(&chain[3], unix("2031-01-01T00:00:00Z"))
        .unwrap_err();
    assert!(err.is_expired(), "{err}");
    // Another RIM signer's key than the leaf's: the signature fails, the digest still matches.
    let other = sim_pki();
    let forged = Rim::parse(&sign_rim(&unsigned, signer_key(&other), &chain).unwrap()).unwrap();
    assert_eq!(
        forged.verify_signature(),
        Err(RimSignatureError::BadSignature)
    );
}

#[test]
fn signing_refuses_a_signed_rim() {
    let pki = sim_pki();
    let key = signer_key(&pki);
    assert_eq!(
        sign_rim(&rim_bytes(DRIVER_550), key, &pki.rim_chain_der()).unwrap_err(),
        RimError::SignatureCount { found: 1 }
    );
    assert!(matches!(
        sign_rim(&unsigned_rim(), key, &[]).unwrap_err(),
        RimError::Certificates { found: 0, .. }
    ));
}
