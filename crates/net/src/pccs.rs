//! Collateral from a PCCS (v4 API), cached on disk and refreshed before it expires.
//!
//! Collateral is Intel-signed, so where it comes from does not matter to its trust: a PCCS,
//! Intel PCS or the cache are equally good sources. What matters is freshness: a cached copy
//! is used until shortly before its nextUpdate, refreshed then, and used as a fallback while
//! the PCCS is unreachable only for as long as it is still valid.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use tdx_core::quote::Quote;
use tdx_core::verify::collateral::Collateral;

/// Bigger than any real collateral response (Intel's PCK CRL is a few KiB).
const MAX_BODY: usize = 4 << 20;
/// Refresh at most this long before nextUpdate...
const MAX_REFRESH_MARGIN: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum PccsError {
    #[error("PCCS URL {url:?}: {detail}")]
    Url { url: String, detail: String },
    #[error("cannot tell which collateral the quote needs: {0}")]
    Quote(String),
    #[error("PCCS {url}: {detail}")]
    Fetch { url: String, detail: String },
    #[error("PCCS {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("PCCS {url}: malformed response: {detail}")]
    Malformed { url: String, detail: String },
    #[error("collateral cache {path}: {detail}")]
    Cache { path: PathBuf, detail: String },
    #[error(
        "no valid collateral: the PCCS failed ({fetch}) and the cache holds nothing valid at this time"
    )]
    NoValidCollateral { fetch: Box<PccsError> },
}

/// What the quote's PCK certificate says about the collateral it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollateralKey {
    pub fmspc: [u8; 6],
    /// "processor" or "platform": which PCK CA issued the leaf.
    pub ca: &'static str,
}

impl CollateralKey {
    pub fn for_quote(quote: &[u8]) -> Result<Self, PccsError> {
        let q = Quote::parse(quote).map_err(|e| PccsError::Quote(e.to_string()))?;
        let chain = q
            .pck_chain_der()
            .map_err(|e| PccsError::Quote(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| PccsError::Quote("the quote has no PCK certificate".into()))?;
        let ext = dcap_qvl::intel::parse_pck_extension(leaf)
            .map_err(|e| PccsError::Quote(format!("PCK certificate SGX extension: {e:#}")))?;
        let ca = dcap_qvl::intel::pck_ca(leaf)
            .map_err(|e| PccsError::Quote(format!("PCK certificate issuer: {e:#}")))?;
        Ok(Self {
            fmspc: ext.fmspc,
            ca: ca.as_id_str(),
        })
    }
}

/// Where collateral came from, for logs and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provenance {
    Fetched,
    Cached,
    /// The PCCS failed; the cached copy is still valid and was used.
    StaleFallback(String),
}

/// A PCCS (or Intel PCS) client for the v4 API.
#[derive(Clone)]
pub struct PccsClient {
    base: String,
    http: crate::http::Https,
}

impl PccsClient {
    /// `base_url` is the service root, e.g. `https://pccs.example:8081`; the v4 paths are
    /// appended to it.
    pub fn new(base_url: &str) -> Result<Self, PccsError> {
        let url_err = |detail| PccsError::Url {
            url: base_url.into(),
            detail,
        };
        let base = crate::http::base_url(base_url).map_err(url_err)?;
        let http = crate::http::client().map_err(url_err)?;
        Ok(Self { base, http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Fetch the full collateral for one platform.
    pub async fn fetch(&self, key: &CollateralKey) -> Result<Collateral, PccsError> {
        let fmspc = hex::encode_upper(key.fmspc);
        let (pck_crl, pck_crl_issuer_chain) = self
            .get(
                &format!("/sgx/certification/v4/pckcrl?ca={}&encoding=der", key.ca),
                Some("SGX-PCK-CRL-Issuer-Chain"),
            )
            .await?;
        let (tcb_info, tcb_info_issuer_chain) = self
            .get(
                &format!("/tdx/certification/v4/tcb?fmspc={fmspc}"),
                Some("TCB-Info-Issuer-Chain"),
            )
            .await?;
        let (qe_identity, qe_identity_issuer_chain) = self
            .get(
                "/tdx/certification/v4/qe/identity",
                Some("SGX-Enclave-Identity-Issuer-Chain"),
            )
            .await?;
        let (root_ca_crl, _) = self.get("/sgx/certification/v4/rootcacrl", None).await?;
        PccsAnswers {
            pck_crl: &pck_crl,
            pck_crl_issuer_chain: &pck_crl_issuer_chain,
            tcb_info: &tcb_info,
            tcb_info_issuer_chain: &tcb_info_issuer_chain,
            qe_identity: &qe_identity,
            qe_identity_issuer_chain: &qe_identity_issuer_chain,
            root_ca_crl: &root_ca_crl,
        }
        .collateral(&self.base)
    }

    async fn get(
        &self,
        path: &str,
        chain_header: Option<&str>,
    ) -> Result<(Bytes, Vec<u8>), PccsError> {
        let url = format!("{}{path}", self.base);
        let fetch_err = |detail: String| PccsError::Fetch {
            url: url.clone(),
            detail,
        };
        let uri: hyper::Uri = url.parse().map_err(|e| fetch_err(format!("{e}")))?;
        let request = hyper::Request::get(uri)
            .body(http_body_util::Full::new(Bytes::new()))
            .map_err(|e| fetch_err(format!("{e}")))?;
        let answer = crate::http::send(&self.http, request, MAX_BODY)
            .await
            .map_err(fetch_err)?;
        // An error answer carries no chain header: name the status, not the missing header.
        if !(200..300).contains(&answer.status) {
            let body = &answer.body;
            return Err(PccsError::Status {
                url,
                status: answer.status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
        }
        let chain = match chain_header {
            Some(name) => answer
                .headers
                .get(name)
                .ok_or_else(|| PccsError::Malformed {
                    url: url.clone(),
                    detail: format!("missing {name} header"),
                })?
                .as_bytes()
                .to_vec(),
            None => Vec::new(),
        };
        Ok((answer.body, chain))
    }
}

/// The PCCS answers one platform's collateral is made of, as they arrived: each body, and
/// the issuer-chain headers still URL-encoded. Everything in here came over the network.
#[derive(Clone, Copy, Debug)]
pub struct PccsAnswers<'a> {
    pub pck_crl: &'a [u8],
    pub pck_crl_issuer_chain: &'a [u8],
    pub tcb_info: &'a [u8],
    pub tcb_info_issuer_chain: &'a [u8],
    pub qe_identity: &'a [u8],
    pub qe_identity_issuer_chain: &'a [u8],
    pub root_ca_crl: &'a [u8],
}

impl PccsAnswers<'_> {
    /// The collateral these answers make, or what is malformed in them (named by the path
    /// under `base` it came from). Nothing is verified here: dcap-qvl does that when the
    /// collateral is prepared.
    pub fn collateral(&self, base: &str) -> Result<Collateral, PccsError> {
        const PCK_CRL: &str = "/sgx/certification/v4/pckcrl";
        const TCB: &str = "/tdx/certification/v4/tcb";
        const QE: &str = "/tdx/certification/v4/qe/identity";
        let malformed = |path: &str, detail: String| PccsError::Malformed {
            url: format!("{base}{path}"),
            detail,
        };
        let chain = |raw: &[u8], path: &str, name: &str| {
            percent_decode(raw).ok_or_else(|| {
                malformed(
                    path,
                    format!("{name} header is not a URL-encoded PEM chain"),
                )
            })
        };
        let signed = |body: &[u8], key: &str, path: &str| {
            let text = std::str::from_utf8(body)
                .map_err(|_| malformed(path, "body is not UTF-8".into()))?;
            tdx_core::verify::collateral::split_signed_body(text, key)
                .map_err(|detail| malformed(path, detail))
        };
        let (tcb_info, tcb_info_signature) = signed(self.tcb_info, "tcbInfo", TCB)?;
        let (qe_identity, qe_identity_signature) = signed(self.qe_identity, "enclaveIdentity", QE)?;
        Ok(Collateral {
            pck_crl_issuer_chain: chain(
                self.pck_crl_issuer_chain,
                PCK_CRL,
                "SGX-PCK-CRL-Issuer-Chain",
            )?,
            root_ca_crl: der_or_hex(self.root_ca_crl),
            pck_crl: der_or_hex(self.pck_crl),
            tcb_info_issuer_chain: chain(self.tcb_info_issuer_chain, TCB, "TCB-Info-Issuer-Chain")?,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain: chain(
                self.qe_identity_issuer_chain,
                QE,
                "SGX-Enclave-Identity-Issuer-Chain",
            )?,
            qe_identity,
            qe_identity_signature,
        })
    }
}

/// PCCS serves CRLs as DER with `encoding=der`, and hex text otherwise (root CA CRL).
fn der_or_hex(body: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(body).ok().map(str::trim);
    match text.and_then(|t| hex::decode(t).ok()) {
        Some(der) if !der.is_empty() => der,
        _ => body.to_vec(),
    }
}

fn percent_decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hi = (*raw.get(i + 1)? as char).to_digit(16)?;
                let lo = (*raw.get(i + 2)? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Collateral from a PCCS with an on-disk cache.
#[derive(Clone)]
pub struct CollateralSource {
    client: PccsClient,
    cache_dir: Option<PathBuf>,
}

impl CollateralSource {
    pub fn new(client: PccsClient, cache_dir: Option<PathBuf>) -> Self {
        Self { client, cache_dir }
    }

    /// Collateral valid at `now` for this quote's platform: from the cache while it is
    /// comfortably inside its window, fetched otherwise, the cache as a fallback while valid.
    pub async fn for_quote(
        &self,
        quote: &[u8],
        now: i64,
    ) -> Result<(Collateral, Provenance), PccsError> {
        let key = CollateralKey::for_quote(quote)?;
        self.for_key(&key, now).await
    }

    pub async fn for_key(
        &self,
        key: &CollateralKey,
        now: i64,
    ) -> Result<(Collateral, Provenance), PccsError> {
        let path = self.cache_path(key);
        let cached = match &path {
            Some(p) => read_cache(p).await,
            None => None,
        };
        if let Some(c) = cached.as_ref().filter(|c| fresh(c, now)) {
            return Ok((c.clone(), Provenance::Cached));
        }
        match self.client.fetch(key).await {
            Ok(c) => {
                if let Some(p) = &path {
                    write_cache(p, &c).await?;
                }
                Ok((c, Provenance::Fetched))
            }
            Err(e) => match cached {
                Some(c) if usable(&c, now) => Ok((c, Provenance::StaleFallback(e.to_string()))),
                _ => Err(PccsError::NoValidCollateral { fetch: Box::new(e) }),
            },
        }
    }

    fn cache_path(&self, key: &CollateralKey) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let id = Sha256::digest(format!(
            "{}|{}|{}",
            self.client.base,
            hex::encode(key.fmspc),
            key.ca
        ));
        Some(dir.join(format!(
            "collateral-{}-{}.json",
            hex::encode_upper(key.fmspc),
            &hex::encode(id)[..16]
        )))
    }
}

/// Inside the window and not yet within the refresh margin before nextUpdate.
pub fn fresh(c: &Collateral, now: i64) -> bool {
    let Ok(w) = c.window() else { return false };
    let margin = ((w.next_update() - w.not_before()) / 4).clamp(0, MAX_REFRESH_MARGIN);
    w.violation(now).is_none() && now < w.next_update() - margin
}

fn usable(c: &Collateral, now: i64) -> bool {
    c.window().is_ok_and(|w| w.violation(now).is_none())
}

async fn read_cache(path: &Path) -> Option<Collateral> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    match Collateral::from_bundle_json(&text, &path.display().to_string()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable collateral cache entry");
            None
        }
    }
}

async fn write_cache(path: &Path, c: &Collateral) -> Result<(), PccsError> {
    let err = |detail: String| PccsError::Cache {
        path: path.to_path_buf(),
        detail,
    };
    let json = c.to_bundle_json();
    let path = path.to_path_buf();
    // Blocking file I/O with fsync: off the runtime.
    tokio::task::spawn_blocking(move || tdx_fsutil::write_atomic(&path, json.as_bytes()))
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b%0A-").as_deref(), Some("a b\n-"));
        assert_eq!(percent_decode(b"%2"), None);
        assert_eq!(percent_decode(b"%zz"), None);
    }

    #[test]
    fn der_or_hex_accepts_both() {
        assert_eq!(
            der_or_hex(b"3003020101"),
            vec![0x30, 0x03, 0x02, 0x01, 0x01]
        );
        assert_eq!(der_or_hex(&[0x30, 0x82, 0x01]), vec![0x30, 0x82, 0x01]);
    }

    /// Intel's real answers (the loose files of tests/vectors/google-go-tdx-guest), with the
    /// chains URL-encoded as the headers carry them, make exactly the vector's bundle.
    #[test]
    fn real_answers_make_the_real_bundle() {
        let v = |p: &str| crate::test_support::vector(&format!("google-go-tdx-guest/{p}"));
        let header = |p: &str| {
            v(p).iter()
                .flat_map(|b| format!("%{b:02X}").into_bytes())
                .collect::<Vec<u8>>()
        };
        let (pck_crl, pck_chain) = (v("pckcrl"), header("pck_crl_issuer_chain.pem"));
        let (tcb, tcb_chain) = (
            v("sample_tcbInfo_response"),
            header("tcb_info_issuer_chain.pem"),
        );
        let (qe, qe_chain) = (
            v("sample_qeIdentity_response"),
            header("qe_identity_issuer_chain.pem"),
        );
        let root_crl = v("rootcrl.der");
        let answers = PccsAnswers {
            pck_crl: &pck_crl,
            pck_crl_issuer_chain: &pck_chain,
            tcb_info: &tcb,
            tcb_info_issuer_chain: &tcb_chain,
            qe_identity: &qe,
            qe_identity_issuer_chain: &qe_chain,
            root_ca_crl: &root_crl,
        };
        let got = answers.collateral("https://pccs.example").unwrap();
        let want = Collateral::from_bundle_json(
            &crate::test_support::vector_text(
                "google-go-tdx-guest/tdx_prod_quote_SPR_E4_collateral.json",
            ),
            "vector",
        )
        .unwrap();
        assert_eq!(got, want);

        let bad = PccsAnswers {
            tcb_info_issuer_chain: b"%zz",
            ..answers
        };
        match bad.collateral("https://pccs.example") {
            Err(PccsError::Malformed { url, detail }) => {
                assert_eq!(url, "https://pccs.example/tdx/certification/v4/tcb");
                assert!(detail.contains("TCB-Info-Issuer-Chain"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn collateral_key_of_a_real_quote() {
        let q = crate::test_support::vector("phala-dcap-qvl/tdx_quote");
        let k = CollateralKey::for_quote(&q).unwrap();
        assert_eq!(hex::encode_upper(k.fmspc), "B0C06F000000");
        assert_eq!(k.ca, "platform");
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in ["ftp://x", "not a url", "http://"] {
            assert!(PccsClient::new(url).is_err(), "{url}");
        }
        assert!(PccsClient::new("http://127.0.0.1:8081/").is_ok());
    }
}
