//! GPU collateral from NVIDIA's services, gathered once and stapled: RIMs from the RIM service
//! (`GET /v1/rim/<id>`, JSON with the XML in base64) or from a local directory for air-gapped
//! sites, and OCSP answers from NVIDIA's responder (DER POSTs with SHA-384 CertIDs and no
//! nonce, so the answers can be carried). Both are cached on disk: RIMs by id (they never
//! change), answers by certificate while they are young enough to staple.
//!
//! Where collateral comes from does not matter to its trust: RIMs and answers are signed by
//! NVIDIA and judged by the verifier at its verification time.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use tdx_core::gpu::ocsp::{OcspResponse, ocsp_request_der, parse_ocsp_response};
use tdx_core::gpu::{
    Architecture, DEVICE_CHAIN_LEN, GpuCollateral, GpuRoots, Rim, RimFile, SpdmReport, chain_der,
    rim_ids, valid_rim_id,
};

/// NVIDIA's production services, as NVIDIA's verifier uses them.
pub const DEFAULT_RIM_SERVICE: &str = "https://rim.attestation.nvidia.com";
pub const DEFAULT_OCSP_RESPONDER: &str = "https://ocsp.ndis.nvidia.com";
/// No real RIM is above 100 KiB (base64 and JSON add a third), no answer above 8 KiB.
const MAX_RIM_ANSWER: usize = 1 << 20;
const MAX_OCSP_ANSWER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum GpuFetchError {
    #[error("{what} URL {url:?}: {detail}")]
    Url {
        what: &'static str,
        url: String,
        detail: String,
    },
    #[error("GPU evidence: {0}")]
    Evidence(String),
    #[error("RIM {id}: {url}: {detail}")]
    Rim {
        id: String,
        url: String,
        detail: String,
    },
    #[error("OCSP for {subject}: {url}: {detail}")]
    Ocsp {
        subject: String,
        url: String,
        detail: String,
    },
    #[error("GPU collateral cache {path}: {detail}")]
    Cache { path: PathBuf, detail: String },
}

/// NVIDIA's RIM service and OCSP responder, with a disk cache and an optional local RIM
/// directory (`<dir>/<RIM id>.xml`, or NVIDIA's file names `<RIM id>` and `<RIM id>.swidtag`)
/// that is consulted before any network.
pub struct NvidiaServices {
    rim_base: String,
    ocsp_url: String,
    http: crate::http::Https,
    cache_dir: Option<PathBuf>,
    rim_dir: Option<PathBuf>,
}

impl NvidiaServices {
    pub fn new(
        rim_service: &str,
        ocsp_responder: &str,
        cache_dir: Option<PathBuf>,
        rim_dir: Option<PathBuf>,
    ) -> Result<Self, GpuFetchError> {
        fn url_err(what: &'static str, url: &str) -> impl FnOnce(String) -> GpuFetchError {
            let url = url.to_string();
            move |detail| GpuFetchError::Url { what, url, detail }
        }
        let rim_base =
            crate::http::base_url(rim_service).map_err(url_err("RIM service", rim_service))?;
        let ocsp_url = crate::http::base_url(ocsp_responder)
            .map_err(url_err("OCSP responder", ocsp_responder))?;
        let http = crate::http::client().map_err(url_err("RIM service", rim_service))?;
        Ok(Self {
            rim_base,
            ocsp_url,
            http,
            cache_dir,
            rim_dir,
        })
    }

    /// The RIM `id`: from the local directory, the cache, or the RIM service (then cached).
    pub async fn rim(&self, id: &str) -> Result<Vec<u8>, GpuFetchError> {
        let url = format!("{}/v1/rim/{id}", self.rim_base);
        let err = |detail: String| GpuFetchError::Rim {
            id: id.to_string(),
            url: url.clone(),
            detail,
        };
        // The id becomes a file name and a URL path segment.
        if !valid_rim_id(id) {
            return Err(err("not a RIM service id".into()));
        }
        if let Some(dir) = &self.rim_dir {
            for name in [format!("{id}.xml"), id.to_string(), format!("{id}.swidtag")] {
                if let Some(xml) = read_optional(&dir.join(name)).await? {
                    return Ok(xml);
                }
            }
        }
        let cached = self.cache_path("rim", &format!("{id}.xml"));
        if let Some(p) = &cached
            && let Some(xml) = read_optional(p).await?
        {
            return Ok(xml);
        }
        let uri: hyper::Uri = url.parse().map_err(|e| err(format!("{e}")))?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .body(http_body_util::Full::new(Bytes::new()))
            .map_err(|e| err(format!("{e}")))?;
        let answer = crate::http::send(&self.http, request, MAX_RIM_ANSWER)
            .await
            .map_err(err)?;
        if answer.status == 404 {
            return Err(err(
                "the RIM service has no such RIM (NVIDIA has not published reference values for this driver or VBIOS)".into(),
            ));
        }
        if !(200..300).contains(&answer.status) {
            return Err(err(format!("HTTP {}", answer.status)));
        }
        let xml = rim_from_service_json(&answer.body).map_err(err)?;
        if let Some(p) = &cached {
            write_cache(p, xml.clone()).await?;
        }
        Ok(xml)
    }

    /// An OCSP answer for `cert_der` issued by `issuer_der`: the cached one while its
    /// thisUpdate is less than half `max_age_secs` old at `now`, else a fresh one (cached).
    pub async fn ocsp(
        &self,
        cert_der: &[u8],
        issuer_der: &[u8],
        now: i64,
        max_age_secs: u64,
    ) -> Result<Vec<u8>, GpuFetchError> {
        let subject = subject_of(cert_der);
        let err = |detail: String| GpuFetchError::Ocsp {
            subject: subject.clone(),
            url: self.ocsp_url.clone(),
            detail,
        };
        let key = hex::encode(Sha256::digest(cert_der));
        let cached = self.cache_path("ocsp", &format!("{key}.der"));
        let refresh_after = i64::try_from(max_age_secs / 2).unwrap_or(i64::MAX);
        let cached_answer = match &cached {
            Some(p) => read_optional(p).await?,
            None => None,
        };
        if let Some(der) = &cached_answer
            && answer_age(der, now).is_some_and(|age| age < refresh_after)
        {
            return Ok(der.clone());
        }
        let request = ocsp_request_der(cert_der, issuer_der).map_err(|e| err(e.to_string()))?;
        let uri: hyper::Uri = self.ocsp_url.parse().map_err(|e| err(format!("{e}")))?;
        let request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/ocsp-request")
            .header(hyper::header::ACCEPT, "application/ocsp-response")
            .body(http_body_util::Full::new(Bytes::from(request)))
            .map_err(|e| err(format!("{e}")))?;
        let fetched = match crate::http::send(&self.http, request, MAX_OCSP_ANSWER).await {
            Ok(a) if (200..300).contains(&a.status) => Ok(a.body.to_vec()),
            Ok(a) => Err(err(format!("HTTP {}", a.status))),
            Err(e) => Err(err(e)),
        };
        match fetched {
            Ok(der) => {
                if let Some(p) = &cached {
                    write_cache(p, der.clone()).await?;
                }
                Ok(der)
            }
            // The responder is down: a cached answer still inside the policy's age is as good
            // as it was an hour ago; the verifier judges it either way.
            Err(e) => match cached_answer {
                Some(der)
                    if answer_age(&der, now)
                        .is_some_and(|age| u64::try_from(age).is_ok_and(|a| a <= max_age_secs)) =>
                {
                    tracing::warn!(error = %e, "OCSP responder failed; using the cached answer");
                    Ok(der)
                }
                _ => Err(e),
            },
        }
    }

    /// Everything the GPUs' appraisal needs: both RIMs of each GPU and the answers for its
    /// device chain (BROM, provisioner ICA, identity) and for each RIM's signing chain.
    /// `evidence` is (report, chain PEM) per GPU.
    pub async fn collateral_for(
        &self,
        evidence: &[(Vec<u8>, Vec<u8>)],
        roots: &GpuRoots,
        now: i64,
        max_age_secs: u64,
    ) -> Result<GpuCollateral, GpuFetchError> {
        let mut out = GpuCollateral::default();
        for (report, chain_pem) in evidence {
            let report =
                SpdmReport::parse(report).map_err(|e| GpuFetchError::Evidence(e.to_string()))?;
            let chain = chain_der(chain_pem).map_err(|e| GpuFetchError::Evidence(e.to_string()))?;
            if chain.len() != DEVICE_CHAIN_LEN {
                return Err(GpuFetchError::Evidence(format!(
                    "{} certificates in the chain, expected {DEVICE_CHAIN_LEN}",
                    chain.len()
                )));
            }
            let arch = chain
                .first()
                .map(|leaf| subject_of(leaf))
                .and_then(|s| Architecture::from_leaf_subject(&s));
            // The device chain's own root is replaced by the pinned one, as the verifier does.
            let device = roots.device_chain(&chain);
            let mut answers = GpuCollateral::default();
            for i in 1..DEVICE_CHAIN_LEN - 1 {
                if let (Some(c), Some(issuer)) = (device.get(i), device.get(i + 1)) {
                    answers
                        .ocsp
                        .push(self.ocsp(c, issuer, now, max_age_secs).await?);
                }
            }
            let (driver_id, vbios_id) = rim_ids(&report, arch);
            for id in [driver_id, vbios_id] {
                let id = id.ok_or_else(|| {
                    GpuFetchError::Evidence(
                        "the report does not say which RIMs it needs (versions or board ids missing)"
                            .into(),
                    )
                })?;
                let xml = self.rim(&id).await?;
                let rim_err = |detail: String| GpuFetchError::Rim {
                    id: id.clone(),
                    url: format!("{}/v1/rim/{id}", self.rim_base),
                    detail,
                };
                // Up to 1 MiB of XML, parsed and canonicalized: off the runtime.
                let (xml, parsed) = tokio::task::spawn_blocking(move || {
                    let parsed = Rim::parse(&xml);
                    (xml, parsed)
                })
                .await
                .map_err(|e| rim_err(format!("parsing stopped: {e}")))?;
                let rim = parsed.map_err(|e| rim_err(e.to_string()))?;
                let signing = roots.rim_chain(&rim);
                for i in 0..signing.len().saturating_sub(1) {
                    if let (Some(c), Some(issuer)) = (signing.get(i), signing.get(i + 1)) {
                        answers
                            .ocsp
                            .push(self.ocsp(c, issuer, now, max_age_secs).await?);
                    }
                }
                answers.rims.push(RimFile { id: Some(id), xml });
            }
            out.merge(answers);
        }
        Ok(out)
    }

    fn cache_path(&self, kind: &str, name: &str) -> Option<PathBuf> {
        Some(self.cache_dir.as_ref()?.join("gpu").join(kind).join(name))
    }
}

fn subject_of(der: &[u8]) -> String {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    X509Certificate::from_der(der).map_or_else(
        |_| "an unreadable certificate".to_string(),
        |(_, c)| c.subject().to_string(),
    )
}

/// Seconds since the answer's (first) thisUpdate, if it is a readable successful answer.
fn answer_age(der: &[u8], now: i64) -> Option<i64> {
    match parse_ocsp_response(der).ok()? {
        OcspResponse::Successful(b) => b.responses.first().map(|r| now - r.this_update),
        OcspResponse::Unsuccessful(_) => None,
    }
}

/// The XML out of the RIM service's JSON answer (`{"id": …, "rim": "<base64>", …}`).
pub fn rim_from_service_json(body: &[u8]) -> Result<Vec<u8>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let b64 = v
        .get("rim")
        .and_then(serde_json::Value::as_str)
        .ok_or("answer has no \"rim\" string")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("\"rim\" is not base64: {e}"))
}

async fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, GpuFetchError> {
    match tokio::fs::read(path).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GpuFetchError::Cache {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

async fn write_cache(path: &Path, bytes: Vec<u8>) -> Result<(), GpuFetchError> {
    let err = |detail: String| GpuFetchError::Cache {
        path: path.to_path_buf(),
        detail,
    };
    let p = path.to_path_buf();
    // Blocking file I/O with fsync: off the runtime.
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        tdx_fsutil::write_atomic(&p, &bytes)
    })
    .await
    .map_err(|e| err(e.to_string()))?
    .map_err(|e| err(e.to_string()))
}
