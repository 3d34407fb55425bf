//! End-to-end RA-TLS tests against the simulated TD: issuance, the verifier, a real rustls
//! handshake, forgeries, policy, cache, and the worked vectors docs/formats.md cites.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test may fail loudly

use std::sync::Arc;

use rcgen::KeyPair;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::{ServerName, UnixTime};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use tdx_core::encoding::hex;
use tdx_core::ratls::cbor::{self, Value};
use tdx_core::ratls::evidence::{self, CLAIM_PUBKEY_HASH, Claims, Evidence, HashAlg};
use tdx_core::ratls::*;
use tdx_core::verify::policy::HexBytes;
use tdx_core::verify::{
    CHECK_EMBEDDED_ROOT, CHECK_REPORT_DATA, Collateral, Policy, PreparedCollateral, Verdict,
    Verifier,
};
use tdx_sim::{SimFixture, SimSettings};

struct Env {
    _tmp: tempfile::TempDir,
    fx: SimFixture,
    now: i64,
    /// Made once: the simulated CRLs carry fresh random signatures each time.
    collateral: Collateral,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let fx = SimFixture::create(tmp.path(), SimSettings::default()).unwrap();
    let now = tdx_core::verify::time::now_unix();
    Env {
        _tmp: tmp,
        collateral: fx.collateral(now as u64).unwrap(),
        fx,
        now,
    }
}

impl Env {
    fn collateral(&self) -> Collateral {
        self.collateral.clone()
    }

    fn prepared(&self) -> PreparedCollateral {
        self.collateral().prepare().unwrap()
    }

    fn validity(&self) -> Validity {
        Validity {
            not_before: self.now - 60,
            not_after: self.now + 3600,
        }
    }

    fn verifier_with(&self, policy: Policy, source: CollateralSource) -> RaTlsVerifier {
        RaTlsVerifier::new(
            Verifier::with_insecure_root(self.fx.root_der().to_vec()),
            policy,
            source,
        )
        .unwrap()
    }

    fn verifier(&self) -> RaTlsVerifier {
        self.verifier_with(Policy::default(), CollateralSource::Stapled)
    }

    /// The honest path: claims for the key, a quote over them, collateral stapled.
    fn issue(&self, key: &KeyPair) -> RaTlsCertifiedKey {
        let (claims, rd) = claims_for(key);
        let quote = self.fx.quote(&rd).unwrap();
        build_certificate(
            key,
            &claims,
            &quote,
            Some(&self.collateral()),
            self.validity(),
            &["localhost".into()],
        )
        .unwrap()
    }

    /// Any claims and any REPORTDATA, no consistency checks: for forgeries and other stacks.
    fn issue_raw(&self, key: &KeyPair, claims: Vec<u8>, rd: [u8; 64]) -> RaTlsCertifiedKey {
        let quote = self.fx.quote_builder(&rd).unwrap().build().unwrap();
        cert::danger_issue_unchecked(
            key,
            &Evidence { quote, claims },
            Some(&self.collateral()),
            self.validity(),
            &["localhost".into()],
        )
        .unwrap()
    }

    fn verify(&self, v: &RaTlsVerifier, c: &RaTlsCertifiedKey) -> Result<(), String> {
        v.verify_server_cert(
            &c.cert_der,
            &[],
            &ServerName::try_from("localhost").unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}

fn accepted(v: &RaTlsVerifier) -> tdx_core::verify::Report {
    let r = v.last_report().expect("a report");
    assert_eq!(r.verdict(), Verdict::Accepted, "{}", r.render_text());
    r
}

#[test]
fn sim_certificate_verifies() {
    let e = env();
    let key = generate_key().unwrap();
    let c = e.issue(&key);
    let v = e.verifier();
    e.verify(&v, &c).unwrap();
    let r = accepted(&v);
    let rd = r.check(CHECK_REPORT_DATA).expect("REPORTDATA checked");
    assert!(rd.ok);
    assert_eq!(rd.expected, hex(&c.report_data));
    assert_eq!(&c.report_data[32..], &[0u8; 32]);
    assert!(v.report_for(&c.cert_der, e.now).is_some());
}

#[test]
fn gpus_a_policy_does_not_check_are_said_to_be_unchecked() {
    use tdx_core::verify::gpus::{WARNING_GPU_SETTINGS_UNUSED, WARNING_GPUS_NOT_CHECKED};
    let e = env();
    let key = generate_key().unwrap();
    // A certificate committing to GPU evidence (its digest), under the default policy.
    let (claims, rd) = tdx_core::ratls::claims_with_gpu_evidence(&key, b"", Some([7; 32]));
    let c = e.issue_raw(&key, claims, rd);
    let v = e.verifier();
    e.verify(&v, &c).unwrap();
    let warnings = accepted(&v).warnings().to_vec();
    assert!(
        warnings.iter().any(|w| w == WARNING_GPUS_NOT_CHECKED),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w == WARNING_GPU_SETTINGS_UNUSED),
        "{warnings:?}"
    );
    // [gpu] keys without gpu.count: said too, for a server attesting no GPU.
    let policy = Policy::from_toml("[gpu]\nmin_driver_version = \"550.90.07\"", "p.toml").unwrap();
    let v = e.verifier_with(policy, CollateralSource::Stapled);
    e.verify(&v, &e.issue(&key)).unwrap();
    let warnings = accepted(&v).warnings().to_vec();
    assert!(
        warnings.iter().any(|w| w == WARNING_GPU_SETTINGS_UNUSED),
        "{warnings:?}"
    );
    assert!(
        !warnings.iter().any(|w| w == WARNING_GPUS_NOT_CHECKED),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn real_handshake_over_a_duplex_pipe() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let e = env();
    let key = generate_key().unwrap();
    let c = e.issue(&key);
    let resolver = Arc::new(CertResolver::new(c.rustls_certified_key()));
    let server = tokio_rustls::TlsAcceptor::from(Arc::new(
        server_config(Arc::clone(&resolver), vec![b"h2".to_vec()]).unwrap(),
    ));
    let verifier = Arc::new(e.verifier());
    let client = tokio_rustls::TlsConnector::from(Arc::new(
        client_config(Arc::clone(&verifier), vec![b"h2".to_vec()]).unwrap(),
    ));

    let (a, b) = tokio::io::duplex(64 * 1024);
    let serve = tokio::spawn(async move {
        let mut tls = server.accept(a).await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let mut tls = client
        .connect(ServerName::try_from("localhost").unwrap(), b)
        .await
        .unwrap();
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    serve.await.unwrap();

    let (_, conn) = tls.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    let peer = &conn.peer_certificates().unwrap()[0];
    assert_eq!(peer, &c.cert_der);
    accepted(&verifier);
    assert!(verifier.report_for(peer, e.now).unwrap().accepted());
}

#[tokio::test]
async fn handshake_fails_closed_on_a_rejected_quote() {
    let e = env();
    let key = generate_key().unwrap();
    let c = e.issue(&key);
    let server = tokio_rustls::TlsAcceptor::from(Arc::new(
        server_config(
            Arc::new(CertResolver::new(c.rustls_certified_key())),
            vec![],
        )
        .unwrap(),
    ));
    let mut policy = Policy::default();
    policy.measurements.mrtd = vec![HexBytes([0xab; 48])];
    let verifier = Arc::new(e.verifier_with(policy, CollateralSource::Stapled));
    let client =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(verifier, vec![]).unwrap()));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let serve = tokio::spawn(async move { server.accept(a).await.is_err() });
    let err = client
        .connect(ServerName::try_from("localhost").unwrap(), b)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("MRTD check failed"), "{err}");
    assert!(
        serve.await.unwrap(),
        "the server sees the handshake fail too"
    );
}

#[test]
fn another_keys_evidence_is_rejected_naming_the_key_binding() {
    let e = env();
    let key_a = generate_key().unwrap();
    let key_b = generate_key().unwrap();
    let (claims_a, rd_a) = claims_for(&key_a);
    let forged = e.issue_raw(&key_b, claims_a.clone(), rd_a);
    let v = e.verifier();
    let err = e.verify(&v, &forged).unwrap_err();
    assert!(err.contains("RA-TLS: key binding"), "{err}");
    assert_eq!(v.appraisals(), 0, "refused before the quote is looked at");
    // build_certificate itself refuses to issue it.
    let quote = e.fx.quote(&rd_a).unwrap();
    let err = build_certificate(&key_b, &claims_a, &quote, None, e.validity(), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("key binding"), "{err}");
}

#[test]
fn quote_over_other_report_data_is_rejected_naming_the_binding() {
    let e = env();
    let key = generate_key().unwrap();
    let (claims, _) = claims_for(&key);
    let forged = e.issue_raw(&key, claims.clone(), [0x42; 64]);
    let v = e.verifier();
    let err = e.verify(&v, &forged).unwrap_err();
    assert!(
        err.contains("RA-TLS: quote rejected: REPORTDATA binding check failed"),
        "{err}"
    );
    assert_eq!(v.last_report().unwrap().verdict(), Verdict::Rejected);
    let quote = e.fx.quote(&[0x42; 64]).unwrap();
    let err = build_certificate(&key, &claims, &quote, None, e.validity(), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("REPORTDATA binding"), "{err}");
}

#[test]
fn pubkey_hash_ids_7_and_8_and_the_sha384_report_data_are_accepted() {
    let e = env();
    let v = e.verifier();
    for alg in [HashAlg::Sha384, HashAlg::Sha512] {
        let key = generate_key().unwrap();
        let claims = Claims::for_spki(alg, &spki_der(&key), None).to_cbor();
        let c = e.issue_raw(&key, claims.clone(), evidence::report_data_sha256(&claims));
        e.verify(&v, &c)
            .unwrap_or_else(|err| panic!("{alg:?}: {err}"));
        accepted(&v);
    }
    // Intel TDX ttls: REPORTDATA = SHA-384(claims) || 16 zeros.
    let key = generate_key().unwrap();
    let (claims, _) = claims_with_nonce(&key, Some(b"ttls"));
    let rd = evidence::report_data_sha384(&claims);
    let c = e.issue_raw(&key, claims, rd);
    e.verify(&v, &c).unwrap();
    let r = accepted(&v);
    assert_eq!(r.check(CHECK_REPORT_DATA).unwrap().expected, hex(&rd));
    // A SHA-384 REPORTDATA with junk where the zeros belong is not that form.
    let (claims, _) = claims_for(&key);
    let mut rd = evidence::report_data_sha384(&claims);
    rd[63] = 1;
    let err = e.verify(&v, &e.issue_raw(&key, claims, rd)).unwrap_err();
    assert!(err.contains("REPORTDATA binding"), "{err}");
}

#[test]
fn unknown_pubkey_hash_id_is_rejected() {
    let e = env();
    let key = generate_key().unwrap();
    let digest = HashAlg::Sha256.digest(&spki_der(&key));
    let hash = cbor::encode(&Value::Array(vec![Value::Uint(2), Value::Bytes(digest)]));
    let claims = cbor::encode(&Value::Map(vec![(
        CLAIM_PUBKEY_HASH.to_string(),
        Value::Bytes(hash),
    )]));
    let rd = evidence::report_data_sha256(&claims);
    let err = e
        .verify(&e.verifier(), &e.issue_raw(&key, claims, rd))
        .unwrap_err();
    assert!(err.contains("hash algorithm id 2"), "{err}");
}

#[test]
fn policy_pinning_other_registers_rejects_naming_the_register() {
    let e = env();
    let c = e.issue(&generate_key().unwrap());
    let pinned = HexBytes([0xab; 48]);
    for (name, set) in [
        (
            "RTMR2",
            (|p: &mut Policy, v| p.measurements.rtmr2 = v) as fn(&mut Policy, _),
        ),
        ("MRTD", |p: &mut Policy, v| p.measurements.mrtd = v),
    ] {
        let mut policy = Policy::default();
        set(&mut policy, vec![pinned]);
        let v = e.verifier_with(policy, CollateralSource::Stapled);
        let err = e.verify(&v, &c).unwrap_err();
        let want = format!(
            "RA-TLS: quote rejected: {name} check failed: expected {}",
            hex(&pinned.0)
        );
        assert!(err.contains(&want), "{err}");
    }
    // Pinning the values the TD really has passes.
    let (_, body) = tdx_core::quote::parse_head_only(&e.fx.quote(&[0; 64]).unwrap()).unwrap();
    let mut policy = Policy::default();
    policy.measurements.mrtd = vec![HexBytes(body.mrtd)];
    policy.measurements.rtmr2 = vec![HexBytes(body.rtmr[2])];
    let v = e.verifier_with(policy, CollateralSource::Stapled);
    e.verify(&v, &c).unwrap();
}

#[test]
fn the_production_root_rejects_the_simulated_quote() {
    let e = env();
    let c = e.issue(&generate_key().unwrap());
    let v = RaTlsVerifier::new(
        Verifier::production(),
        Policy::default(),
        CollateralSource::Stapled,
    )
    .unwrap();
    let err = e.verify(&v, &c).unwrap_err();
    assert!(err.contains(CHECK_EMBEDDED_ROOT), "{err}");
}

#[test]
fn collateral_sources() {
    let e = env();
    let key = generate_key().unwrap();
    let (claims, rd) = claims_for(&key);
    let quote = e.fx.quote(&rd).unwrap();
    let bare = build_certificate(&key, &claims, &quote, None, e.validity(), &[]).unwrap();
    let err = e.verify(&e.verifier(), &bare).unwrap_err();
    assert!(err.contains("no collateral"), "{err}");
    let v = e.verifier_with(Policy::default(), CollateralSource::StapledOr(e.prepared()));
    e.verify(&v, &bare).unwrap();
    let v = e.verifier_with(Policy::default(), CollateralSource::Fixed(e.prepared()));
    e.verify(&v, &e.issue(&key)).unwrap();
    // Collateral from another PKI: the fixed source wins over what is stapled.
    let other = env();
    let v = e.verifier_with(Policy::default(), CollateralSource::Fixed(other.prepared()));
    assert!(e.verify(&v, &e.issue(&key)).is_err());
}

#[test]
fn certificate_validity_and_missing_evidence() {
    let e = env();
    let c = e.issue(&generate_key().unwrap());
    let v = e.verifier();
    let err = v.verify_certificate(&c.cert_der, e.now + 3600).unwrap_err();
    assert!(err.to_string().contains("validity"), "{err}");
    let err = v.verify_certificate(&c.cert_der, e.now - 3600).unwrap_err();
    assert!(err.to_string().contains("validity"), "{err}");
    // Cached and then expired: the cache does not outlive notAfter.
    v.verify_certificate(&c.cert_der, e.now).unwrap();
    assert!(v.verify_certificate(&c.cert_der, e.now + 3600).is_err());

    let key = generate_key().unwrap();
    let plain = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let err = v.verify_certificate(plain.der(), e.now).unwrap_err();
    assert!(matches!(err, RaTlsError::NoEvidence), "{err}");
    let err = v
        .verify_certificate(b"not a certificate", e.now)
        .unwrap_err();
    assert!(err.to_string().contains("X.509"), "{err}");
}

#[test]
fn extensions_in_the_issued_certificate() {
    let e = env();
    let key = generate_key().unwrap();
    let c = e.issue(&key);
    let (_, x) = X509Certificate::from_der(&c.cert_der).unwrap();
    let ext = |oid: &str| {
        x.extensions()
            .iter()
            .find(|x| x.oid.to_id_string() == oid)
            .unwrap()
    };
    let ev = ext("2.23.133.5.4.9");
    assert!(!ev.critical);
    assert_eq!(
        &ev.value[..3],
        &[0xd9, 0xea, 0x60],
        "CBOR tag 60000 directly"
    );
    let evidence = Evidence::from_cbor(ev.value).unwrap();
    let parsed = tdx_core::quote::Quote::parse(&evidence.quote).unwrap();
    assert_eq!(parsed.raw.len(), evidence.quote.len(), "quote trimmed");
    assert_eq!(parsed.body.report_data, c.report_data);
    let en = ext("2.23.133.5.4.2");
    assert!(!en.critical);
    assert_eq!(
        &en.value[..9],
        &[0xd9, 0xea, 0x60, 0x89, 0x1a, 0x00, 0x01, 0x00, 0x03]
    );
    assert_eq!(
        endorsements::decode(en.value).unwrap().collateral,
        e.collateral()
    );
    // Quotes with trailing padding are embedded trimmed.
    let (claims, rd) = claims_for(&key);
    let mut padded = e.fx.quote(&rd).unwrap();
    let len = padded.len();
    padded.extend_from_slice(&[0; 100]);
    let c = build_certificate(&key, &claims, &padded, None, e.validity(), &[]).unwrap();
    let (_, x) = X509Certificate::from_der(&c.cert_der).unwrap();
    let ev = x
        .extensions()
        .iter()
        .find(|x| x.oid.to_id_string() == "2.23.133.5.4.9")
        .unwrap();
    assert_eq!(Evidence::from_cbor(ev.value).unwrap().quote.len(), len);
}

#[test]
fn cache_skips_the_appraisal_and_keys_on_the_policy() {
    let e = env();
    let c = e.issue(&generate_key().unwrap());
    let cache = Arc::new(VerificationCache::new(8));
    let root = || Verifier::with_insecure_root(e.fx.root_der().to_vec());
    let make = |policy: Policy| {
        RaTlsVerifier::with_cache(
            root(),
            policy,
            CollateralSource::Stapled,
            Arc::clone(&cache),
        )
        .unwrap()
    };
    let v1 = make(Policy::default());
    e.verify(&v1, &c).unwrap();
    e.verify(&v1, &c).unwrap();
    assert_eq!(
        v1.appraisals(),
        1,
        "second verification came from the cache"
    );
    accepted(&v1);

    let same = make(Policy::default());
    e.verify(&same, &c).unwrap();
    assert_eq!(same.appraisals(), 0, "same policy, same root: a hit");

    let (_, body) = tdx_core::quote::parse_head_only(&e.fx.quote(&[0; 64]).unwrap()).unwrap();
    let mut pinned = Policy::default();
    pinned.measurements.mrtd = vec![HexBytes(body.mrtd)];
    let v2 = make(pinned);
    assert_ne!(v2.policy_digest(), v1.policy_digest());
    e.verify(&v2, &c).unwrap();
    assert_eq!(v2.appraisals(), 1, "another policy digest misses");
    assert_eq!(cache.len(), 2);

    // Rejections are not cached: each attempt is appraised again.
    let mut wrong = Policy::default();
    wrong.measurements.mrtd = vec![HexBytes([0; 48])];
    let v3 = make(wrong);
    assert!(e.verify(&v3, &c).is_err());
    assert!(e.verify(&v3, &c).is_err());
    assert_eq!(v3.appraisals(), 2);
}

#[test]
fn cache_is_bounded() {
    let e = env();
    let cache = Arc::new(VerificationCache::new(2));
    let v = RaTlsVerifier::with_cache(
        Verifier::with_insecure_root(e.fx.root_der().to_vec()),
        Policy::default(),
        CollateralSource::Stapled,
        Arc::clone(&cache),
    )
    .unwrap();
    for _ in 0..4 {
        e.verify(&v, &e.issue(&generate_key().unwrap())).unwrap();
        assert!(cache.len() <= 2);
    }
    assert_eq!(v.appraisals(), 4);
}

/// The worked example docs/formats.md cites: a fixed key and nonce, the claims bytes and the
/// REPORTDATA they give. Recompute with any CBOR library and SHA-256.
#[test]
fn worked_vectors() {
    use p256::pkcs8::EncodePrivateKey as _;
    let scalar: Vec<u8> = (1u8..=32).collect();
    let sk = p256::SecretKey::from_slice(&scalar).unwrap();
    let pkcs8 = sk.to_pkcs8_der().unwrap();
    let key = KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
        &rcgen::PKCS_ECDSA_P256_SHA256,
    )
    .unwrap();
    let spki = spki_der(&key);
    let nonce = b"tdx-agent worked example";
    let (claims, rd) = claims_with_nonce(&key, Some(nonce));
    let (claims_plain, rd_plain) = claims_for(&key);
    println!("private scalar  {}", hex(&scalar));
    println!("spki            {}", hex(&spki));
    println!("claims (nonce)  {}", hex(&claims));
    println!("reportdata      {}", hex(&rd));
    println!("claims (plain)  {}", hex(&claims_plain));
    println!("reportdata      {}", hex(&rd_plain));

    assert_eq!(hex(&spki), WORKED_SPKI);
    assert_eq!(hex(&claims), WORKED_CLAIMS_NONCE);
    assert_eq!(hex(&rd), WORKED_REPORT_DATA_NONCE);
    assert_eq!(hex(&claims_plain), WORKED_CLAIMS);
    assert_eq!(hex(&rd_plain), WORKED_REPORT_DATA);
    // The structure, spelled out: map(2) "nonce" bstr(24) ..., "pubkey-hash" bstr(35)
    // [1, bstr(32) SHA-256(spki)].
    assert!(WORKED_CLAIMS_NONCE.starts_with("a2656e6f6e63655818"));
    assert!(WORKED_CLAIMS.starts_with("a16b7075626b65792d68617368582482015820"));
}

const WORKED_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d03010703420004515c3d6eb9e396b904d3feca7f54fdcd0cc1e997bf375dca515ad0a6c3b4035f4536be3a50f318fbf9a5475902a221502bef0d57e08c53b2cc0a56f17d9f9354";
const WORKED_CLAIMS_NONCE: &str = "a2656e6f6e636558187464782d6167656e7420776f726b6564206578616d706c656b7075626b65792d68617368582482015820f1d59449b727165de732bf283338122b99628a615918fedc67d878fffcf47da7";
const WORKED_REPORT_DATA_NONCE: &str = "e09af26b7e3dc1b51e2b71e4292ca5eb3b58280d45f99bb7e48bcb9965c8ffbb0000000000000000000000000000000000000000000000000000000000000000";
const WORKED_CLAIMS: &str = "a16b7075626b65792d68617368582482015820f1d59449b727165de732bf283338122b99628a615918fedc67d878fffcf47da7";
const WORKED_REPORT_DATA: &str = "943c6c8288e300d072695af3aec8c4fe066609a5ebe76d7729d73fead86bd92d0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn two_evidence_extensions_are_refused() {
    let e = env();
    let key = generate_key().unwrap();
    let (claims, rd) = claims_for(&key);
    let quote = e.fx.quote(&rd).unwrap();
    let ev = Evidence { quote, claims }.to_cbor();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.custom_extensions = vec![
        rcgen::CustomExtension::from_oid_content(EVIDENCE_OID, ev.clone()),
        rcgen::CustomExtension::from_oid_content(EVIDENCE_OID, ev),
    ];
    let cert = params.self_signed(&key).unwrap();
    let v = e.verifier_with(Policy::default(), CollateralSource::Fixed(e.prepared()));
    let err = v.verify_certificate(cert.der(), e.now).unwrap_err();
    assert!(
        err.to_string().contains("more than one evidence extension"),
        "{err}"
    );
    assert_eq!(v.appraisals(), 0);
}

/// The certificate carries the RTMR3 event log: the handshake verifier replays it against
/// the quote's RTMR3 and applies the policy's event pins, naming the event that fails.
#[test]
fn event_log_claim_is_replayed_and_pinned() {
    use tdx_tee::rtmr3_log::Rtmr3Log;
    let e = env();
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Rtmr3Log::open(&tmp.path().join("log"), "boot").unwrap();
    let model = tdx_core::measure::rtmr3_log::Event {
        kind: "model".into(),
        data: serde_json::json!({"manifest_sha256": "aa"}),
    };
    let digest = log.append(model).unwrap();
    e.fx.td
        .extend(tdx_core::registers::Rtmr::R3, &digest)
        .unwrap();
    let issue_with_log = |text: &str| {
        let key = generate_key().unwrap();
        let (claims, rd) = claims_with_event_log(&key, text.as_bytes());
        let quote = e.fx.quote(&rd).unwrap();
        build_certificate(
            &key,
            &claims,
            &quote,
            Some(&e.collateral()),
            e.validity(),
            &["localhost".into()],
        )
        .unwrap()
    };
    let honest = issue_with_log(&log.jsonl());
    let pin = |value: &str| {
        Policy::from_toml(
            &format!(
                "[[rtmr3_events.pin]]\ntype = \"model\"\nallowed = [{{ manifest_sha256 = \"{value}\" }}]\n"
            ),
            "p.toml",
        )
        .unwrap()
    };
    let ok = e.verifier_with(pin("aa"), CollateralSource::Stapled);
    e.verify(&ok, &honest).unwrap();
    let report = ok.last_report().unwrap();
    assert!(report.check("RTMR3 event log").unwrap().ok);

    let other = e.verifier_with(pin("bb"), CollateralSource::Stapled);
    let err = e.verify(&other, &honest).unwrap_err();
    let report = other.last_report().unwrap();
    let failed: Vec<_> = report.failures().map(|c| c.name.clone()).collect();
    assert_eq!(failed, vec!["RTMR3 event \"model\""], "{err}");

    // A log that does not explain RTMR3 (an event left out) fails the replay, whatever it says.
    let lying = issue_with_log("");
    let err = e.verify(&ok, &lying).unwrap_err();
    let report = ok.last_report().unwrap();
    assert!(!report.check("RTMR3 event log").unwrap().ok, "{err}");
    // A certificate without the claim fails a policy that pins events.
    let plain = e.issue(&generate_key().unwrap());
    assert!(e.verify(&ok, &plain).is_err());
    assert!(
        ok.last_report()
            .unwrap()
            .check("RTMR3 event log")
            .unwrap()
            .found
            .contains("no event log")
    );
}
