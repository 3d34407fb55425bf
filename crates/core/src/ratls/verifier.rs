//! The client side: a rustls `ServerCertVerifier` that accepts a server only on its quote.
//!
//! The certificate is self-signed, so web PKI checks say nothing here; what binds the TLS
//! key to a genuine TD is the evidence: the claims name the key, the quote's REPORTDATA
//! commits to the claims, and the quote verifies against the pinned root, the collateral and
//! the caller's policy. The handshake signature checks (proof the server holds that key) are
//! rustls' own. Accepted results are cached per (certificate, policy, root).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::endorsements::{self, ENDORSEMENTS_OID};
use super::evidence::{self, CLAIM_EVENT_LOG, Claims, EVIDENCE_OID, Evidence};
use super::{RaTlsError, ring_provider};
use crate::verify::events::{CHECK_EVENT_LOG, appraise_events};
use crate::verify::{Expectations, Policy, PreparedCollateral, Report, Verifier};

/// How far a certificate's notBefore may be ahead of our clock: issuers stamp it with their
/// own clock, and a few minutes of drift must not break a fresh server.
const CLOCK_SKEW_SECS: i64 = 300;
/// Default bound on cached verdicts: a client talks to a handful of servers, and a server
/// rotates its certificate at most a few times a day.
pub const DEFAULT_CACHE_CAPACITY: usize = 256;

/// Where the collateral for the quote comes from.
#[derive(Clone, Debug)]
pub enum CollateralSource {
    /// Only what the server staples; a certificate without it is refused.
    Stapled,
    /// The stapled collateral, or this when none is stapled.
    StapledOr(PreparedCollateral),
    /// Always this, whatever is stapled (e.g. the client's own fresher copy).
    Fixed(PreparedCollateral),
}

type CacheKey = ([u8; 32], [u8; 32], [u8; 32]);

struct Cached {
    report: Arc<Report>,
    /// Unix seconds: the earlier of the certificate's notAfter and the collateral's
    /// nextUpdate, after which the verdict must be earned again.
    expires: i64,
}

/// Accepted verdicts, keyed by (SHA-256 of the certificate DER, policy digest, root SHA-256).
/// Shareable between verifiers (e.g. across policy reloads), hence its own type.
pub struct VerificationCache {
    entries: Mutex<HashMap<CacheKey, Cached>>,
    capacity: usize,
}

impl std::fmt::Debug for VerificationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for VerificationCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_CAPACITY)
    }
}

impl VerificationCache {
    pub fn new(capacity: usize) -> Self {
        VerificationCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Cached>> {
        // The map is consistent after every single insert or remove; a panic elsewhere while
        // holding the lock leaves nothing half-written.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &CacheKey, now: i64) -> Option<Arc<Report>> {
        let mut map = self.lock();
        match map.get(key) {
            Some(c) if now < c.expires => Some(Arc::clone(&c.report)),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: CacheKey, report: Arc<Report>, expires: i64, now: i64) {
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, c| now < c.expires);
            if map.len() >= self.capacity {
                // Evict what would expire first: it has the least use left.
                if let Some(k) = map.iter().min_by_key(|(_, c)| c.expires).map(|(k, _)| *k) {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, Cached { report, expires });
    }
}

/// Verifies RA-TLS servers against one root, one policy and one collateral source.
pub struct RaTlsVerifier {
    verifier: Verifier,
    policy: Policy,
    policy_digest: [u8; 32],
    root_sha256: [u8; 32],
    collateral: CollateralSource,
    cache: Arc<VerificationCache>,
    last_report: Arc<Mutex<Option<Report>>>,
    appraisals: AtomicU64,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for RaTlsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaTlsVerifier")
            .field("policy_digest", &hex::encode(self.policy_digest))
            .field("root_sha256", &hex::encode(self.root_sha256))
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl RaTlsVerifier {
    pub fn new(
        verifier: Verifier,
        policy: Policy,
        collateral: CollateralSource,
    ) -> Result<Self, RaTlsError> {
        Self::with_cache(
            verifier,
            policy,
            collateral,
            Arc::new(VerificationCache::default()),
        )
    }

    /// As [`RaTlsVerifier::new`], sharing `cache` with other verifiers.
    pub fn with_cache(
        verifier: Verifier,
        policy: Policy,
        collateral: CollateralSource,
        cache: Arc<VerificationCache>,
    ) -> Result<Self, RaTlsError> {
        let policy_json = serde_json::to_vec(&policy)
            .map_err(|e| RaTlsError::Config(format!("serialising the policy: {e}")))?;
        Ok(RaTlsVerifier {
            policy_digest: Sha256::digest(&policy_json).into(),
            root_sha256: Sha256::digest(verifier.root_der()).into(),
            verifier,
            policy,
            collateral,
            cache,
            last_report: Arc::new(Mutex::new(None)),
            appraisals: AtomicU64::new(0),
            provider: ring_provider(),
        })
    }

    /// SHA-256 of the policy's JSON serialisation, part of the cache key.
    pub fn policy_digest(&self) -> [u8; 32] {
        self.policy_digest
    }

    /// The report of the most recent appraisal, accepted or rejected, or of the cached
    /// verdict a handshake was accepted on.
    pub fn last_report(&self) -> Option<Report> {
        self.last_report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The slot [`RaTlsVerifier::last_report`] reads, to keep after the verifier has moved
    /// into a `ClientConfig`.
    pub fn report_slot(&self) -> Arc<Mutex<Option<Report>>> {
        Arc::clone(&self.last_report)
    }

    /// The accepted report for this exact certificate (e.g. a connection's
    /// `peer_certificates()[0]`), while it is cached: race-free where `last_report` is not.
    pub fn report_for(&self, cert_der: &[u8], now: i64) -> Option<Arc<Report>> {
        self.cache.get(&self.cache_key(cert_der), now)
    }

    /// How many quotes this verifier has appraised (cache hits excluded).
    pub fn appraisals(&self) -> u64 {
        self.appraisals.load(Ordering::Relaxed)
    }

    fn cache_key(&self, cert_der: &[u8]) -> CacheKey {
        (
            Sha256::digest(cert_der).into(),
            self.policy_digest,
            self.root_sha256,
        )
    }

    fn remember(&self, report: &Report) {
        *self.last_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
    }

    /// The whole RA-TLS check of one end-entity certificate at `now` (unix seconds).
    pub fn verify_certificate(&self, cert_der: &[u8], now: i64) -> Result<Arc<Report>, RaTlsError> {
        let key = self.cache_key(cert_der);
        if let Some(report) = self.cache.get(&key, now) {
            self.remember(&report);
            return Ok(report);
        }

        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| RaTlsError::Certificate(format!("not readable X.509: {e}")))?;
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        if now < not_before.saturating_sub(CLOCK_SKEW_SECS) || now >= not_after {
            return Err(RaTlsError::Validity(format!(
                "valid {} .. {}, now is {}",
                crate::verify::time::format_unix(not_before),
                crate::verify::time::format_unix(not_after),
                crate::verify::time::format_unix(now)
            )));
        }
        // Self-signed: the signature proves nothing about trust, but a certificate whose
        // extensions were altered after signing is not one any honest stack issued.
        cert.verify_signature(None)
            .map_err(|e| RaTlsError::Certificate(format!("self-signature: {e}")))?;

        let (evidence_ext, endorsements_ext) = ratls_extensions(&cert)?;
        let evidence = Evidence::from_cbor(evidence_ext.ok_or(RaTlsError::NoEvidence)?)?;
        let claims = Claims::from_cbor(&evidence.claims)?;
        claims.check_key(cert.public_key().raw)?;
        let expected_rd = evidence::expected_report_data(&evidence.claims, &evidence.quote);

        let stapled = || -> Result<Option<PreparedCollateral>, RaTlsError> {
            match endorsements_ext {
                Some(bytes) => Ok(Some(endorsements::decode(bytes)?.collateral.prepare()?)),
                None => Ok(None),
            }
        };
        let collateral = match &self.collateral {
            CollateralSource::Fixed(c) => c.clone(),
            CollateralSource::StapledOr(c) => stapled()?.unwrap_or_else(|| c.clone()),
            CollateralSource::Stapled => stapled()?.ok_or_else(|| {
                RaTlsError::NoCollateral(
                    "the certificate staples no endorsements (OID 2.23.133.5.4.2) and no other collateral was configured".into(),
                )
            })?,
        };

        self.appraisals.fetch_add(1, Ordering::Relaxed);
        let mut report = self.verifier.appraise(
            &evidence.quote,
            &collateral,
            now,
            &self.policy,
            &Expectations {
                report_data: Some(expected_rd),
            },
        );
        match claims
            .event_log
            .as_deref()
            .map(std::str::from_utf8)
            .transpose()
        {
            Ok(log) => appraise_events(&mut report, log, &self.policy.rtmr3_events),
            Err(e) => report.push_check(
                CHECK_EVENT_LOG,
                false,
                "a UTF-8 JSON-lines event log".into(),
                format!("the {CLAIM_EVENT_LOG:?} claim is not UTF-8: {e}"),
            ),
        }
        crate::verify::gpus::warn_unchecked_gpus(
            &mut report,
            &self.policy.gpu,
            claims.gpu_evidence_sha256.is_some(),
        );
        self.remember(&report);
        if !report.accepted() {
            return Err(RaTlsError::QuoteRejected(Box::new(report)));
        }
        let report = Arc::new(report);
        let expires = not_after.min(collateral.window().next_update());
        self.cache.insert(key, Arc::clone(&report), expires, now);
        Ok(report)
    }
}

impl ServerCertVerifier for RaTlsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        // The server's identity is its quote and our policy, not a DNS name: any name the
        // client dialled reaches the same checks.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify_certificate(end_entity, unix_secs(now)?)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The evidence and endorsements extensions' values, where present.
type RaTlsExtensions<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// The evidence and endorsements extensions of an RA-TLS certificate, each at most once.
fn ratls_extensions<'a>(cert: &'a X509Certificate<'_>) -> Result<RaTlsExtensions<'a>, RaTlsError> {
    let mut evidence_ext = None;
    let mut endorsements_ext = None;
    for ext in cert.extensions() {
        let oid: Vec<u64> = match ext.oid.iter() {
            Some(arcs) => arcs.collect(),
            None => continue,
        };
        let (slot, what) = if oid == EVIDENCE_OID {
            (&mut evidence_ext, "evidence")
        } else if oid == ENDORSEMENTS_OID {
            (&mut endorsements_ext, "endorsements")
        } else {
            continue;
        };
        // Two candidates would leave the choice to us; no honest issuer writes that.
        if slot.replace(ext.value).is_some() {
            return Err(RaTlsError::Certificate(format!(
                "more than one {what} extension"
            )));
        }
    }
    Ok((evidence_ext, endorsements_ext))
}

/// The claims an RA-TLS certificate carries (e.g. the one a connection was verified with),
/// read without appraising anything: for what was bound beside the quote, such as the GPU
/// evidence digest.
pub fn certificate_claims(cert_der: &[u8]) -> Result<Claims, RaTlsError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| RaTlsError::Certificate(format!("not readable X.509: {e}")))?;
    let (evidence_ext, _) = ratls_extensions(&cert)?;
    let evidence = Evidence::from_cbor(evidence_ext.ok_or(RaTlsError::NoEvidence)?)?;
    Claims::from_cbor(&evidence.claims)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo: the key a challenge and the GPU nonce
/// commit to.
pub fn certificate_spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], RaTlsError> {
    use sha2::{Digest as _, Sha256};
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| RaTlsError::Certificate(format!("not readable X.509: {e}")))?;
    Ok(Sha256::digest(cert.public_key().raw).into())
}

/// rustls's clock in the seconds [`RaTlsVerifier::verify_certificate`] takes.
pub fn unix_secs(now: UnixTime) -> Result<i64, rustls::Error> {
    i64::try_from(now.as_secs())
        .map_err(|_| rustls::Error::General("RA-TLS: the clock is out of range".into()))
}

/// A rustls client config (ring provider) that verifies servers with `verifier`.
pub fn client_config(
    verifier: Arc<RaTlsVerifier>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, RaTlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(config)
}
