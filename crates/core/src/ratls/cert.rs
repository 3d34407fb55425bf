//! Issuing RA-TLS certificates, and the resolver that lets a server swap them on rotation.
//!
//! Issuance is two steps because the quote comes from the TEE, which the caller owns:
//! [`claims_for`] gives the claims and the REPORTDATA to quote, then [`build_certificate`]
//! wraps the quote (and optionally the collateral) into a self-signed certificate. The key is
//! generated in memory and only ever leaves it inside the rustls signing key.

use std::sync::{Arc, RwLock};

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256,
    PublicKeyData as _, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use sha2::{Digest as _, Sha256};

use super::evidence::{self, Claims, EVIDENCE_OID, Evidence, HashAlg};
use super::{RaTlsError, endorsements, ring_provider};
use crate::encoding::hex;
use crate::quote::Quote;
use crate::verify::Collateral;

pub const SUBJECT_CN: &str = "tdx-agent RA-TLS";
/// docs/design.md §5: a certificate lives at most a day, so evidence in use is never older.
pub const MAX_VALIDITY_SECS: i64 = 86_400;

/// A fresh P-256 key in memory.
pub fn generate_key() -> Result<KeyPair, RaTlsError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// The SubjectPublicKeyInfo DER of `key`, what the pubkey-hash claim hashes.
pub fn spki_der(key: &KeyPair) -> Vec<u8> {
    key.subject_public_key_info()
}

/// The claims bytes for `key` and the REPORTDATA the quote must carry for them.
pub fn claims_for(key: &KeyPair) -> (Vec<u8>, [u8; 64]) {
    claims_with_nonce(key, None)
}

/// As [`claims_for`], also carrying the RTMR3 event log (JSON lines) in its own claim.
pub fn claims_with_event_log(key: &KeyPair, log: &[u8]) -> (Vec<u8>, [u8; 64]) {
    let claims = Claims::for_spki(HashAlg::Sha256, &spki_der(key), None)
        .with_event_log(log)
        .to_cbor();
    let rd = evidence::report_data_sha256(&claims);
    (claims, rd)
}

/// As [`claims_with_event_log`], also committing to the served GPU evidence's digest.
pub fn claims_with_gpu_evidence(
    key: &KeyPair,
    log: &[u8],
    gpu_evidence_sha256: Option<[u8; 32]>,
) -> (Vec<u8>, [u8; 64]) {
    let claims = Claims::for_spki(HashAlg::Sha256, &spki_der(key), None)
        .with_event_log(log)
        .with_gpu_evidence(gpu_evidence_sha256)
        .to_cbor();
    let rd = evidence::report_data_sha256(&claims);
    (claims, rd)
}

/// As [`claims_for`], with a `nonce` claim (e.g. a client's challenge) included.
pub fn claims_with_nonce(key: &KeyPair, nonce: Option<&[u8]>) -> (Vec<u8>, [u8; 64]) {
    let claims = Claims::for_spki(HashAlg::Sha256, &spki_der(key), nonce).to_cbor();
    let rd = evidence::report_data_sha256(&claims);
    (claims, rd)
}

/// Validity window of a certificate, unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// From `now` for `secs` seconds.
    pub fn starting_at(now: i64, secs: i64) -> Self {
        Validity {
            not_before: now,
            not_after: now.saturating_add(secs),
        }
    }

    fn check(&self) -> Result<(), RaTlsError> {
        let span = self.not_after.saturating_sub(self.not_before);
        if span <= 0 {
            return Err(RaTlsError::Validity(format!(
                "notAfter {} is not after notBefore {}",
                self.not_after, self.not_before
            )));
        }
        if span > MAX_VALIDITY_SECS {
            return Err(RaTlsError::Validity(format!(
                "{span} s requested, at most {MAX_VALIDITY_SECS} s (24 h) allowed"
            )));
        }
        Ok(())
    }
}

/// An issued certificate and its key, ready for a rustls server.
pub struct RaTlsCertifiedKey {
    pub cert_der: CertificateDer<'static>,
    key_der: PrivatePkcs8KeyDer<'static>,
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo DER.
    pub spki_sha256: [u8; 32],
    /// SHA-256 of the certificate DER, the key the verifier caches under.
    pub cert_sha256: [u8; 32],
    pub report_data: [u8; 64],
    rustls: Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for RaTlsCertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaTlsCertifiedKey")
            .field("cert_sha256", &hex(&self.cert_sha256))
            .field("spki_sha256", &hex(&self.spki_sha256))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Clone for RaTlsCertifiedKey {
    fn clone(&self) -> Self {
        RaTlsCertifiedKey {
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
            spki_sha256: self.spki_sha256,
            cert_sha256: self.cert_sha256,
            report_data: self.report_data,
            rustls: Arc::clone(&self.rustls),
        }
    }
}

impl RaTlsCertifiedKey {
    /// The PKCS#8 private key, for a TLS stack other than our rustls configs.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// The certificate and signing key as rustls serves them.
    pub fn rustls_certified_key(&self) -> Arc<rustls::sign::CertifiedKey> {
        Arc::clone(&self.rustls)
    }
}

/// Issue the certificate for `key`, carrying `quote` over `claims` (from [`claims_for`] or
/// [`claims_with_nonce`]) and, when given, the collateral. Refuses evidence that would not
/// verify (claims for another key, a quote over other REPORTDATA) and validity beyond 24 h.
pub fn build_certificate(
    key: &KeyPair,
    claims: &[u8],
    quote: &[u8],
    collateral: Option<&Collateral>,
    validity: Validity,
    sans: &[String],
) -> Result<RaTlsCertifiedKey, RaTlsError> {
    validity.check()?;
    Claims::from_cbor(claims)?.check_key(&spki_der(key))?;
    let parsed = Quote::parse(quote).map_err(|e| RaTlsError::Evidence(format!("quote: {e}")))?;
    let expected = evidence::report_data_sha256(claims);
    if parsed.body.report_data != expected {
        return Err(RaTlsError::ReportDataBinding {
            expected: hex(&expected),
            found: hex(&parsed.body.report_data),
        });
    }
    let evidence = Evidence {
        quote: parsed.raw.to_vec(),
        claims: claims.to_vec(),
    };
    danger_issue_unchecked(key, &evidence, collateral, validity, sans)
}

/// Build the certificate with no consistency checks (the quote need not bind the key): tests
/// use it to forge certificates the verifier must refuse.
pub fn danger_issue_unchecked(
    key: &KeyPair,
    evidence: &Evidence,
    collateral: Option<&Collateral>,
    validity: Validity,
    sans: &[String],
) -> Result<RaTlsCertifiedKey, RaTlsError> {
    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SUBJECT_CN);
    params.distinguished_name = dn;
    params.not_before = to_time(validity.not_before)?;
    params.not_after = to_time(validity.not_after)?;
    params.serial_number = Some(random_serial());
    // from_oid_content puts the bytes straight into extnValue: the raw CBOR, as Gramine and
    // rats-rs expect (docs/design.md §13), not a DER-wrapped OCTET STRING.
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        EVIDENCE_OID,
        evidence.to_cbor(),
    )];
    if let Some(c) = collateral {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                endorsements::ENDORSEMENTS_OID,
                endorsements::encode(c, validity.not_before),
            ));
    }
    let cert = params.self_signed(key)?;
    let cert_der = cert.der().clone();
    let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
    let rustls = rustls::sign::CertifiedKey::from_der(
        vec![cert_der.clone()],
        PrivateKeyDer::Pkcs8(key_der.clone_key()),
        &ring_provider(),
    )?;
    Ok(RaTlsCertifiedKey {
        cert_sha256: Sha256::digest(&cert_der).into(),
        spki_sha256: Sha256::digest(spki_der(key)).into(),
        report_data: evidence::report_data_sha256(&evidence.claims),
        not_before: validity.not_before,
        not_after: validity.not_after,
        cert_der,
        key_der,
        rustls: Arc::new(rustls),
    })
}

fn to_time(secs: i64) -> Result<time::OffsetDateTime, RaTlsError> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| RaTlsError::Validity(format!("{secs} is not a representable instant: {e}")))
}

fn random_serial() -> SerialNumber {
    use rand_core::RngCore as _;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    // Positive, no leading zero byte (RFC 5280 §4.1.2.2).
    b[0] = (b[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&b)
}

/// Serves whichever certificate was set last. Handshakes in progress keep the `Arc` they
/// resolved, so replacing the certificate never disturbs them (rotation without restarts).
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl CertResolver {
    pub fn new(first: Arc<rustls::sign::CertifiedKey>) -> Self {
        CertResolver {
            current: RwLock::new(first),
        }
    }

    pub fn replace(&self, next: Arc<rustls::sign::CertifiedKey>) {
        // A poisoned lock only means a writer panicked between two pointer writes; the
        // pointer itself is always whole, so keep serving.
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        *slot = next;
    }

    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server config (ring provider, TLS 1.2 and 1.3) serving `resolver`'s certificate.
pub fn server_config(
    resolver: Arc<CertResolver>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, RaTlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer as _, X509Certificate};

    fn fake_evidence(key: &KeyPair) -> Evidence {
        let (claims, _) = claims_for(key);
        Evidence {
            quote: vec![0; 8],
            claims,
        }
    }

    #[test]
    fn extension_holds_raw_cbor_non_critical() {
        let key = generate_key().unwrap();
        let c = danger_issue_unchecked(
            &key,
            &fake_evidence(&key),
            None,
            Validity::starting_at(1_751_328_000, 3600),
            &["localhost".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let (_, x) = X509Certificate::from_der(&c.cert_der).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "2.23.133.5.4.9")
            .unwrap();
        assert!(!ext.critical);
        // The CBOR tag header directly, not an OCTET STRING (0x04) around it.
        assert_eq!(&ext.value[..3], &[0xd9, 0xea, 0x60]);
        assert_eq!(Evidence::from_cbor(ext.value).unwrap(), fake_evidence(&key));
        assert!(
            x.subject()
                .iter_common_name()
                .any(|cn| cn.as_str().ok() == Some(SUBJECT_CN))
        );
        assert_eq!(x.issuer(), x.subject(), "self-signed");
        x.verify_signature(None).unwrap();
        assert_eq!(
            x.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
        );
        assert_eq!(x.validity().not_after.timestamp(), 1_751_328_000 + 3600);
        let sans = x.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 2);
        assert_eq!(
            c.spki_sha256,
            <[u8; 32]>::from(Sha256::digest(x.public_key().raw))
        );
    }

    #[test]
    fn validity_over_24_hours_is_refused() {
        let key = generate_key().unwrap();
        let (claims, _) = claims_for(&key);
        for (v, needle) in [
            (Validity::starting_at(0, MAX_VALIDITY_SECS + 1), "24 h"),
            (Validity::starting_at(0, 0), "not after"),
        ] {
            let err = build_certificate(&key, &claims, &[], None, v, &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        // Exactly 24 h passes the validity check (and then fails on the empty quote).
        let err = build_certificate(
            &key,
            &claims,
            &[],
            None,
            Validity::starting_at(0, MAX_VALIDITY_SECS),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("quote"), "{err}");
    }

    #[test]
    fn resolver_swaps_atomically() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        let v = Validity::starting_at(1_751_328_000, 60);
        let ca = danger_issue_unchecked(&a, &fake_evidence(&a), None, v, &[]).unwrap();
        let cb = danger_issue_unchecked(&b, &fake_evidence(&b), None, v, &[]).unwrap();
        let r = CertResolver::new(ca.rustls_certified_key());
        let held = r.current();
        r.replace(cb.rustls_certified_key());
        assert_eq!(held.cert[0], ca.cert_der);
        assert_eq!(r.current().cert[0], cb.cert_der);
        assert!(!format!("{ca:?}").contains("key_der"));
    }
}
