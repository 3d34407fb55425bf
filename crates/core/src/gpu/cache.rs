//! Verdicts that do not depend on the evidence of one attestation, cached by digest: device
//! chains and RIM signing chains (with the window in which every certificate is valid, so a
//! cached "valid" is never used outside it), the signature of each link of those chains (so
//! chains sharing intermediates verify them once), and parsed RIMs with their signature
//! verdict. What stays per attestation is the report's signature, the comparison and
//! revocation. Each kind is bounded by entries, and the RIMs by bytes as well.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::GpuChainError;
use super::chain::verify_device_chain_with;
use super::link::LinkMemo;
use super::ocsp::{Authenticated, OcspError, OcspMemo};
use super::rim::{Rim, RimChainError, RimError, RimSignatureError};

/// Bounds the memory a stream of distinct hostile chains or RIMs can take: the cache is
/// emptied when it reaches this many entries of a kind.
const MAX_ENTRIES: usize = 4096;
/// Bounds the parsed RIMs by their size too: a RIM may be up to 1 MiB
/// ([`super::rim::MAX_DOCUMENT_LEN`]), so 4096 of them would be GiBs, and any well-formed RIM
/// is kept, whatever its signature and chain. A RIM counts as its input's length (its parsed
/// form is of the same order: every field is read from that text); the RIMs are emptied
/// when the next one would go over. Real RIMs are about 20 KiB, so this holds thousands.
pub(crate) const MAX_RIM_BYTES: usize = 64 << 20;

/// A RIM parsed once, with its signature verdict (which depends on nothing else).
#[derive(Debug)]
pub struct ParsedRim {
    pub rim: Rim,
    pub signature: Result<(), RimSignatureError>,
}

#[derive(Clone)]
struct Valid {
    subjects: Vec<String>,
    not_before: i64,
    not_after: i64,
}

#[derive(Default)]
struct Inner {
    chains: HashMap<[u8; 32], Valid>,
    links: HashMap<[u8; 32], bool>,
    rims: HashMap<[u8; 32], Arc<ParsedRim>>,
    /// The input bytes of the RIMs in `rims`.
    rim_bytes: usize,
    ocsp: HashMap<[u8; 32], Result<Authenticated, OcspError>>,
}

pub struct VerdictCache {
    inner: Mutex<Inner>,
    rim_budget: usize,
}

impl Default for VerdictCache {
    fn default() -> Self {
        Self::with_rim_budget(MAX_RIM_BYTES)
    }
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The instants at which every certificate of `ders` is valid.
fn window<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> Option<(i64, i64)> {
    let mut w = (i64::MIN, i64::MAX);
    for der in ders {
        let (_, c) = X509Certificate::from_der(der).ok()?;
        let v = c.validity();
        w = (
            w.0.max(v.not_before.timestamp()),
            w.1.min(v.not_after.timestamp()),
        );
    }
    Some(w)
}

impl OcspMemo for VerdictCache {
    fn authenticated(
        &self,
        key: [u8; 32],
        compute: &mut dyn FnMut() -> Result<Authenticated, OcspError>,
    ) -> Result<Authenticated, OcspError> {
        self.recall(|i| &mut i.ocsp, &key).unwrap_or_else(|| {
            let v = compute();
            self.remember(|i| &mut i.ocsp, key, v.clone());
            v
        })
    }
}

impl LinkMemo for VerdictCache {
    fn link(&self, key: [u8; 32], verify: &mut dyn FnMut() -> bool) -> bool {
        self.recall(|i| &mut i.links, &key).unwrap_or_else(|| {
            let v = verify();
            self.remember(|i| &mut i.links, key, v);
            v
        })
    }
}

type Map<V> = HashMap<[u8; 32], V>;

impl VerdictCache {
    /// A cache whose parsed RIMs take at most `rim_budget` bytes of input.
    pub(crate) fn with_rim_budget(rim_budget: usize) -> Self {
        Self {
            inner: Mutex::default(),
            rim_budget,
        }
    }

    fn recall<V: Clone>(&self, map: fn(&mut Inner) -> &mut Map<V>, key: &[u8; 32]) -> Option<V> {
        let mut inner = self.inner.lock().ok()?;
        map(&mut inner).get(key).cloned()
    }

    fn remember<V>(&self, map: fn(&mut Inner) -> &mut Map<V>, key: [u8; 32], v: V) {
        if let Ok(mut inner) = self.inner.lock() {
            let m = map(&mut inner);
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
            m.insert(key, v);
        }
    }

    #[cfg(test)]
    pub fn links_remembered(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.links.len())
    }

    /// The RIMs remembered and the input bytes they account for.
    #[cfg(test)]
    pub fn rims_remembered(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map_or((0, 0), |i| (i.rims.len(), i.rim_bytes))
    }

    fn remember_rim(&self, key: [u8; 32], len: usize, rim: Arc<ParsedRim>) {
        if len > self.rim_budget {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            if inner.rims.len() >= MAX_ENTRIES
                || inner.rim_bytes.saturating_add(len) > self.rim_budget
            {
                inner.rims.clear();
                inner.rim_bytes = 0;
            }
            // Another thread may have parsed the same bytes meanwhile: count them once.
            if inner.rims.insert(key, rim).is_none() {
                inner.rim_bytes = inner.rim_bytes.saturating_add(len);
            }
        }
    }

    fn lookup_chain(&self, key: &[u8; 32], at: i64) -> Option<Vec<String>> {
        let inner = self.inner.lock().ok()?;
        let v = inner.chains.get(key)?;
        (v.not_before <= at && at <= v.not_after).then(|| v.subjects.clone())
    }

    fn store_chain(&self, key: [u8; 32], subjects: &[String], w: Option<(i64, i64)>) {
        if let Some((not_before, not_after)) = w {
            let valid = Valid {
                subjects: subjects.to_vec(),
                not_before,
                not_after,
            };
            self.remember(|i| &mut i.chains, key, valid);
        }
    }

    /// `verify`'s verdict on `chain` (leaf first; its last certificate stands for the pinned
    /// `root_der`), remembered while every certificate stays valid.
    fn chain<E>(
        &self,
        kind: &[u8],
        chain: &[Vec<u8>],
        root_der: &[u8],
        at: i64,
        verify: impl FnOnce() -> Result<Vec<String>, E>,
    ) -> Result<Vec<String>, E> {
        let mut parts: Vec<&[u8]> = vec![kind, root_der];
        parts.extend(chain.iter().map(Vec::as_slice));
        let key = digest(&parts);
        if let Some(s) = self.lookup_chain(&key, at) {
            return Ok(s);
        }
        let subjects = verify()?;
        let checked = chain
            .iter()
            .take(chain.len().saturating_sub(1))
            .map(Vec::as_slice)
            .chain([root_der]);
        self.store_chain(key, &subjects, window(checked));
        Ok(subjects)
    }

    /// [`super::verify_device_chain`], cached.
    pub fn device_chain(
        &self,
        chain: &[Vec<u8>],
        root_der: &[u8],
        at: i64,
    ) -> Result<Vec<String>, GpuChainError> {
        self.chain(b"device", chain, root_der, at, || {
            verify_device_chain_with(chain, root_der, at, self)
        })
    }

    /// A parsed RIM and its signature verdict, by the digest of its bytes; at most
    /// [`MAX_ENTRIES`] and `rim_budget` bytes of them are kept.
    pub fn rim(&self, xml: &[u8]) -> Result<Arc<ParsedRim>, RimError> {
        let key = digest(&[b"rim", xml]);
        if let Some(r) = self.recall(|i| &mut i.rims, &key) {
            return Ok(r);
        }
        let rim = Rim::parse(xml)?;
        let signature = rim.verify_signature();
        let parsed = Arc::new(ParsedRim { rim, signature });
        self.remember_rim(key, xml.len(), parsed.clone());
        Ok(parsed)
    }

    /// [`Rim::verify_chain`], cached.
    pub fn rim_chain(
        &self,
        rim: &Rim,
        root_der: &[u8],
        at: i64,
    ) -> Result<Vec<String>, RimChainError> {
        self.chain(b"rim chain", rim.signing_chain(), root_der, at, || {
            rim.verify_chain_with(root_der, at, self)
        })
    }
}
