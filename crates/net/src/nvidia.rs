//! GPU collateral from NVIDIA's services, gathered once and stapled: RIMs from the RIM service
//! (`GET /v1/rim/<id>`, JSON with the XML in base64) or from a local directory for air-gapped
//! sites, and OCSP answers from NVIDIA's responder (DER POSTs with SHA-384 CertIDs and no
//! nonce, so the answers can be carried). Both are cached on disk: RIMs by id (they never
//! change), answers by certificate while they are young enough to staple. Only what parses is
//! cached: a RIM that `Rim::parse` accepts, a successful OCSP answer about the certificate
//! asked for.
//!
//! A round (one call of [`NvidiaServices::collateral_per_gpu`]) asks for each certificate and
//! each RIM once, however many GPUs share them; a service that timed out or failed as a whole
//! is not asked again in that round (cached answers stand in); and the round ends at
//! [`ROUND_DEADLINE`] whatever the services do, naming what is still missing.
//!
//! Where collateral comes from does not matter to its trust: RIMs and answers are signed by
//! NVIDIA and judged by the verifier at its verification time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use tdx_core::gpu::ocsp::{OcspResponse, ocsp_cert_id, ocsp_request_der, parse_ocsp_response};
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
/// A RIM on disk is the decoded XML, smaller than the service's answer carrying it.
const MAX_RIM_FILE: u64 = MAX_RIM_ANSWER as u64;
const MAX_OCSP_FILE: u64 = MAX_OCSP_ANSWER as u64;

/// How long one round of fetches may take in all. Twice the per-request limit: a round in
/// which both services time out once (each is then skipped for the rest of the round) still
/// ends on its own; what this stops is a service that answers every request just inside the
/// limit, one after another, while the round holds the agent's issuing lock. (At start the
/// agent extends systemd's start timeout every 10 s while it works, so a round up to this
/// deadline after a long model hash does not end in a kill.) A healthy cold round of 8 GPUs
/// makes about 30 requests of well under a second.
pub const ROUND_DEADLINE: Duration = Duration::from_secs(60);
/// One request, head and body together.
const REQUEST_TIMEOUT: Duration = crate::http::REQUEST_TIMEOUT;
/// A read of a local RIM or a cache file: these are checked to be small regular files before
/// they are opened, so only a file system that hangs (or a FIFO swapped in between the check
/// and the open) reaches this.
const FILE_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
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
    #[error("local RIM {path} (gpu.rim_dir): {detail}")]
    LocalRim { path: PathBuf, detail: String },
    #[error(
        "GPU collateral was not gathered within the round's {} s (NVIDIA's services are slow or unreachable; cached collateral young enough was used): still missing {missing}",
        .limit.as_secs_f64()
    )]
    Deadline { limit: Duration, missing: String },
    /// Some GPUs' collateral could not be gathered, each with its own reason.
    #[error("{}", describe_failures(.0))]
    Gpus(Vec<GpuFailure>),
}

/// Why one GPU's collateral could not be gathered.
#[derive(Debug, Clone)]
pub struct GpuFailure {
    /// The GPU's position in the evidence given.
    pub position: usize,
    pub error: GpuFetchError,
}

fn describe_failures(failures: &[GpuFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("GPU {} of the evidence: {}", f.position, f.error))
        .collect::<Vec<_>>()
        .join("; ")
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
    request_timeout: Duration,
    round_deadline: Duration,
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
            request_timeout: REQUEST_TIMEOUT,
            round_deadline: ROUND_DEADLINE,
        })
    }

    /// Shorter limits, so that tests of slow services run in well under a second.
    #[cfg(test)]
    pub(crate) fn with_limits(
        mut self,
        request_timeout: Duration,
        round_deadline: Duration,
    ) -> Self {
        self.request_timeout = request_timeout;
        self.round_deadline = round_deadline;
        self
    }

    /// The RIM `id`: from the local directory, the cache, or the RIM service (then cached),
    /// whichever comes first and parses.
    pub async fn rim(&self, id: &str) -> Result<Vec<u8>, GpuFetchError> {
        let mut round = Round::new(self, 0, 0);
        round.rim(id).await.map(|r| r.xml.clone())
    }

    /// An OCSP answer for `cert_der` issued by `issuer_der`: the cached one while its
    /// thisUpdate is less than half `max_age_secs` old at `now`, else a fresh one (cached),
    /// else, when the responder fails, the cached one while it is at most `max_age_secs` old.
    pub async fn ocsp(
        &self,
        cert_der: &[u8],
        issuer_der: &[u8],
        now: i64,
        max_age_secs: u64,
    ) -> Result<Vec<u8>, GpuFetchError> {
        Round::new(self, now, max_age_secs)
            .ocsp(cert_der, issuer_der)
            .await
    }

    /// Everything the GPUs' appraisal needs, or, if any GPU's collateral could not be
    /// gathered, every such GPU with its reason ([`GpuFetchError::Gpus`]).
    pub async fn collateral_for(
        &self,
        evidence: &[(Vec<u8>, Vec<u8>)],
        roots: &GpuRoots,
        now: i64,
        max_age_secs: u64,
    ) -> Result<GpuCollateral, GpuFetchError> {
        let mut all = GpuCollateral::default();
        let mut failures = Vec::new();
        let per_gpu = self
            .collateral_per_gpu(evidence, roots, now, max_age_secs)
            .await;
        for (position, gathered) in per_gpu.into_iter().enumerate() {
            match gathered {
                Ok(c) => all.merge(c),
                Err(error) => failures.push(GpuFailure { position, error }),
            }
        }
        if failures.is_empty() {
            Ok(all)
        } else {
            Err(GpuFetchError::Gpus(failures))
        }
    }

    /// Each GPU's collateral, in the order of `evidence` ((report, chain PEM) per GPU): both
    /// RIMs and the answers for its device chain (BROM, provisioner ICA, identity) and for
    /// each RIM's signing chain, or why it could not be gathered. One round: what GPUs share
    /// is fetched once, and the whole ends within [`ROUND_DEADLINE`]. `now` is the time the
    /// cache's answers are judged young enough at.
    pub async fn collateral_per_gpu(
        &self,
        evidence: &[(Vec<u8>, Vec<u8>)],
        roots: &GpuRoots,
        now: i64,
        max_age_secs: u64,
    ) -> Vec<Result<GpuCollateral, GpuFetchError>> {
        let mut round = Round::new(self, now, max_age_secs);
        let mut out = Vec::with_capacity(evidence.len());
        for (report, chain_pem) in evidence {
            out.push(round.gpu(report, chain_pem, roots).await);
        }
        out
    }

    fn cache_path(&self, kind: &str, name: &str) -> Option<PathBuf> {
        Some(self.cache_dir.as_ref()?.join("gpu").join(kind).join(name))
    }

    fn rim_url(&self, id: &str) -> String {
        format!("{}/v1/rim/{id}", self.rim_base)
    }
}

/// A RIM that parsed, with the XML it came from.
struct FetchedRim {
    xml: Vec<u8>,
    rim: Rim,
}

/// Why a request brought nothing usable.
enum Fetch {
    /// `service_down`: the service as a whole failed (no answer in time, no connection, a
    /// server error, tryLater), so it is not asked again this round.
    Failed { detail: String, service_down: bool },
    /// The round's deadline passed.
    Deadline,
}

/// One round of fetches: what was asked and answered, which service failed, and the deadline.
struct Round<'s> {
    services: &'s NvidiaServices,
    now: i64,
    max_age_secs: u64,
    deadline: Instant,
    answers: HashMap<[u8; 32], Result<Vec<u8>, GpuFetchError>>,
    rims: HashMap<String, Result<Arc<FetchedRim>, GpuFetchError>>,
    ocsp_down: Option<String>,
    rim_down: Option<String>,
}

impl<'s> Round<'s> {
    fn new(services: &'s NvidiaServices, now: i64, max_age_secs: u64) -> Self {
        Self {
            services,
            now,
            max_age_secs,
            deadline: Instant::now() + services.round_deadline,
            answers: HashMap::new(),
            rims: HashMap::new(),
            ocsp_down: None,
            rim_down: None,
        }
    }

    fn deadline_error(&self, missing: String) -> GpuFetchError {
        GpuFetchError::Deadline {
            limit: self.services.round_deadline,
            missing,
        }
    }

    /// One GPU's collateral. Past the deadline it goes on with what the cache holds, so that
    /// the error names everything still missing, not only the first thing.
    async fn gpu(
        &mut self,
        report: &[u8],
        chain_pem: &[u8],
        roots: &GpuRoots,
    ) -> Result<GpuCollateral, GpuFetchError> {
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
        let (driver_id, vbios_id) = rim_ids(&report, arch);
        let ids = [driver_id, vbios_id]
            .into_iter()
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| {
                GpuFetchError::Evidence(
                    "the report does not say which RIMs it needs (versions or board ids missing)"
                        .into(),
                )
            })?;
        let mut out = GpuCollateral::default();
        let mut missing = Vec::new();
        // The device chain's own root is replaced by the pinned one, as the verifier does.
        let device = roots.device_chain(&chain);
        for i in 1..DEVICE_CHAIN_LEN - 1 {
            if let (Some(c), Some(issuer)) = (device.get(i), device.get(i + 1))
                && let Some(der) = unless_late(self.ocsp(c, issuer).await, &mut missing)?
            {
                push_answer(&mut out, der);
            }
        }
        for id in ids {
            let Some(rim) = unless_late(self.rim(&id).await, &mut missing)? else {
                continue;
            };
            let signing = roots.rim_chain(&rim.rim);
            for i in 0..signing.len().saturating_sub(1) {
                if let (Some(c), Some(issuer)) = (signing.get(i), signing.get(i + 1))
                    && let Some(der) = unless_late(self.ocsp(c, issuer).await, &mut missing)?
                {
                    push_answer(&mut out, der);
                }
            }
            out.rims.push(RimFile {
                id: Some(id),
                xml: rim.xml.clone(),
            });
        }
        if !missing.is_empty() {
            return Err(self.deadline_error(missing.join(", ")));
        }
        Ok(out)
    }

    /// Send `request` unless the deadline has passed, giving it what is left of the round
    /// or the per-request limit, whichever is shorter.
    async fn send(
        &self,
        request: hyper::Request<http_body_util::Full<Bytes>>,
        max_body: usize,
    ) -> Result<crate::http::Answer, Fetch> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fetch::Deadline);
        }
        let limit = left.min(self.services.request_timeout);
        match tokio::time::timeout(
            limit,
            crate::http::send(&self.services.http, request, max_body),
        )
        .await
        {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(detail)) => Err(Fetch::Failed {
                detail,
                service_down: true,
            }),
            Err(_) if Instant::now() >= self.deadline => Err(Fetch::Deadline),
            Err(_) => Err(Fetch::Failed {
                detail: format!(
                    "no complete answer within {} s",
                    self.services.request_timeout.as_secs_f64()
                ),
                service_down: true,
            }),
        }
    }

    async fn rim(&mut self, id: &str) -> Result<Arc<FetchedRim>, GpuFetchError> {
        if let Some(known) = self.rims.get(id) {
            return known.clone();
        }
        let got = self.fetch_rim(id).await.map(Arc::new);
        self.rims.insert(id.to_string(), got.clone());
        got
    }

    async fn fetch_rim(&mut self, id: &str) -> Result<FetchedRim, GpuFetchError> {
        let services = self.services;
        let url = services.rim_url(id);
        let err = |detail: String| GpuFetchError::Rim {
            id: id.to_string(),
            url: url.clone(),
            detail,
        };
        // The id becomes a file name and a URL path segment.
        if !valid_rim_id(id) {
            return Err(err("not a RIM service id".into()));
        }
        if let Some(dir) = &services.rim_dir {
            for name in [format!("{id}.xml"), id.to_string(), format!("{id}.swidtag")] {
                let path = dir.join(name);
                let local = |detail: String| GpuFetchError::LocalRim {
                    path: path.clone(),
                    detail,
                };
                if let Some(xml) = read_bounded(&path, MAX_RIM_FILE).await.map_err(local)? {
                    // The operator's file: refused, never replaced or passed over.
                    return parse_rim(xml).await.map_err(|e| {
                        local(format!(
                            "{e}; replace it with the RIM NVIDIA publishes as {id}, or remove it"
                        ))
                    });
                }
            }
        }
        let cached = services.cache_path("rim", &format!("{id}.xml"));
        let mut note = String::new();
        if let Some(p) = &cached {
            let cache_err = |detail: String| GpuFetchError::Cache {
                path: p.clone(),
                detail,
            };
            let read = read_bounded(p, MAX_RIM_FILE)
                .await
                .map_err(|e| cache_err(format!("{e}; remove it")))?;
            if let Some(xml) = read {
                match parse_rim(xml).await {
                    Ok(rim) => return Ok(rim),
                    Err(e) => {
                        tracing::warn!(
                            path = %p.display(),
                            error = %e,
                            "the cached RIM does not parse; removing it and fetching it again"
                        );
                        remove_file(p).await.map_err(|e| {
                            cache_err(format!("does not parse and could not be removed: {e}"))
                        })?;
                        note = format!(
                            " (the cached copy {} did not parse: {e}; it was removed)",
                            p.display()
                        );
                    }
                }
            }
        }
        if let Some(why) = &self.rim_down {
            return Err(err(format!(
                "the RIM service failed earlier in this round ({why}); not asked again{note}"
            )));
        }
        let uri: hyper::Uri = url.parse().map_err(|e| err(format!("{e}")))?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .body(http_body_util::Full::new(Bytes::new()))
            .map_err(|e| err(format!("{e}")))?;
        let answer = match self.send(request, MAX_RIM_ANSWER).await {
            Ok(a) => a,
            Err(Fetch::Deadline) => return Err(self.deadline_error(format!("RIM {id}"))),
            Err(Fetch::Failed {
                detail,
                service_down,
            }) => {
                if service_down {
                    self.rim_down = Some(detail.clone());
                }
                return Err(err(format!("{detail}{note}")));
            }
        };
        if answer.status == 404 {
            return Err(err(format!(
                "the RIM service has no such RIM (NVIDIA has not published reference values for this driver or VBIOS){note}"
            )));
        }
        if !(200..300).contains(&answer.status) {
            let detail = format!("HTTP {}", answer.status);
            if answer.status >= 500 {
                self.rim_down = Some(detail.clone());
            }
            return Err(err(format!("{detail}{note}")));
        }
        let xml = rim_from_service_json(&answer.body).map_err(|e| err(format!("{e}{note}")))?;
        let fetched = parse_rim(xml).await.map_err(|e| {
            err(format!(
                "the answer's RIM does not parse: {e}; nothing was cached{note}"
            ))
        })?;
        if let Some(p) = &cached {
            write_cache(p, fetched.xml.clone()).await?;
        }
        Ok(fetched)
    }

    async fn ocsp(&mut self, cert_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, GpuFetchError> {
        // DER is self-delimiting: the two side by side name the pair unambiguously.
        let key: [u8; 32] = Sha256::new()
            .chain_update(cert_der)
            .chain_update(issuer_der)
            .finalize()
            .into();
        if let Some(known) = self.answers.get(&key) {
            return known.clone();
        }
        let got = self.fetch_ocsp(cert_der, issuer_der).await;
        self.answers.insert(key, got.clone());
        got
    }

    async fn fetch_ocsp(
        &mut self,
        cert_der: &[u8],
        issuer_der: &[u8],
    ) -> Result<Vec<u8>, GpuFetchError> {
        let services = self.services;
        let subject = subject_of(cert_der);
        let err = |detail: String| GpuFetchError::Ocsp {
            subject: subject.clone(),
            url: services.ocsp_url.clone(),
            detail,
        };
        let key = hex::encode(Sha256::digest(cert_der));
        let cached = services.cache_path("ocsp", &format!("{key}.der"));
        let refresh_after = i64::try_from(self.max_age_secs / 2).unwrap_or(i64::MAX);
        let cached_answer = match &cached {
            Some(p) => read_bounded(p, MAX_OCSP_FILE)
                .await
                .map_err(|e| GpuFetchError::Cache {
                    path: p.clone(),
                    detail: format!("{e}; remove it"),
                })?,
            None => None,
        };
        if let Some(der) = &cached_answer
            && answer_age(der, self.now).is_some_and(|age| age < refresh_after)
        {
            return Ok(der.clone());
        }
        let failure = match &self.ocsp_down {
            Some(why) => Fetch::Failed {
                detail: format!(
                    "the responder failed earlier in this round ({why}); not asked again"
                ),
                service_down: true,
            },
            None => {
                let request =
                    ocsp_request_der(cert_der, issuer_der).map_err(|e| err(e.to_string()))?;
                let uri: hyper::Uri = services.ocsp_url.parse().map_err(|e| err(format!("{e}")))?;
                let request = hyper::Request::post(uri)
                    .header(hyper::header::CONTENT_TYPE, "application/ocsp-request")
                    .header(hyper::header::ACCEPT, "application/ocsp-response")
                    .body(http_body_util::Full::new(Bytes::from(request)))
                    .map_err(|e| err(format!("{e}")))?;
                let checked = match self.send(request, MAX_OCSP_ANSWER).await {
                    Ok(answer) => usable_answer(answer.status, &answer.body, cert_der, issuer_der)
                        .map(|()| answer.body.to_vec()),
                    Err(f) => Err(f),
                };
                match checked {
                    Ok(der) => {
                        if let Some(p) = &cached {
                            write_cache(p, der.clone()).await?;
                        }
                        return Ok(der);
                    }
                    Err(f) => {
                        if let Fetch::Failed {
                            detail,
                            service_down: true,
                        } = &f
                        {
                            self.ocsp_down = Some(detail.clone());
                        }
                        f
                    }
                }
            }
        };
        // The responder failed: a cached answer still inside the policy's age is as good as
        // it was an hour ago; the verifier judges it either way.
        if let Some(der) = &cached_answer
            && answer_age(der, self.now)
                .is_some_and(|age| u64::try_from(age).is_ok_and(|a| a <= self.max_age_secs))
        {
            let why = match &failure {
                Fetch::Failed { detail, .. } => detail.clone(),
                Fetch::Deadline => "the round's deadline passed".into(),
            };
            tracing::warn!(subject = %subject, error = %why, "OCSP responder failed; using the cached answer");
            return Ok(der.clone());
        }
        match failure {
            Fetch::Deadline => Err(self.deadline_error(format!("the OCSP answer for {subject}"))),
            Fetch::Failed { detail, .. } => Err(err(match (&cached, &cached_answer) {
                (Some(p), Some(der)) if answer_age(der, self.now).is_some() => format!(
                    "{detail}; the cached answer {} is older than the policy's [gpu] ocsp_max_age_secs ({} s)",
                    p.display(),
                    self.max_age_secs
                ),
                (Some(p), Some(_)) => format!(
                    "{detail}; the cached answer {} is not a successful OCSP answer",
                    p.display()
                ),
                _ => detail,
            })),
        }
    }
}

/// `Some(value)`, `None` with what is missing noted when the round's deadline stopped it, or
/// the error.
fn unless_late<T>(
    got: Result<T, GpuFetchError>,
    missing: &mut Vec<String>,
) -> Result<Option<T>, GpuFetchError> {
    match got {
        Ok(v) => Ok(Some(v)),
        Err(GpuFetchError::Deadline { missing: m, .. }) => {
            missing.push(m);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn push_answer(c: &mut GpuCollateral, der: Vec<u8>) {
    if !c.ocsp.contains(&der) {
        c.ocsp.push(der);
    }
}

/// Whether a fetched answer may be cached and stapled: HTTP 2xx, a successful OCSP response
/// (RFC 6960 responders send tryLater and internalError with 200), about this certificate.
fn usable_answer(
    status: u16,
    body: &[u8],
    cert_der: &[u8],
    issuer_der: &[u8],
) -> Result<(), Fetch> {
    let failed = |detail: String, service_down: bool| {
        Err(Fetch::Failed {
            detail,
            service_down,
        })
    };
    if !(200..300).contains(&status) {
        return failed(format!("HTTP {status}"), status >= 500);
    }
    match parse_ocsp_response(body) {
        Err(e) => failed(
            format!("HTTP {status}, but the body is not an OCSP response ({e}): a proxy's page?"),
            true,
        ),
        Ok(OcspResponse::Unsuccessful(s)) => {
            let (name, down) = match s {
                1 => ("malformedRequest", false),
                2 => ("internalError", true),
                3 => ("tryLater", true),
                5 => ("sigRequired", false),
                6 => ("unauthorized", false),
                _ => ("an undefined status", true),
            };
            failed(
                format!("the responder answered {name} (OCSP responseStatus {s})"),
                down,
            )
        }
        Ok(OcspResponse::Successful(b)) => {
            let about_it = b.responses.iter().any(|r| {
                ocsp_cert_id(cert_der, issuer_der, &r.cert_id.hash).is_ok_and(|id| id == r.cert_id)
            });
            if about_it {
                Ok(())
            } else {
                failed(
                    "the answer is not about the certificate asked for".into(),
                    false,
                )
            }
        }
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

/// Up to 1 MiB of XML, parsed and canonicalized: off the runtime.
async fn parse_rim(xml: Vec<u8>) -> Result<FetchedRim, String> {
    tokio::task::spawn_blocking(move || match Rim::parse(&xml) {
        Ok(rim) => Ok(FetchedRim { xml, rim }),
        Err(e) => Err(e.to_string()),
    })
    .await
    .map_err(|e| format!("parsing stopped: {e}"))?
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

/// The file at `path`, `None` where there is none. Only a regular file of at most `max`
/// bytes is read (a FIFO would block the round, a device never end), off the runtime.
async fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    let p = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || tdx_fsutil::read_regular(&p, max));
    match tokio::time::timeout(FILE_READ_TIMEOUT, read).await {
        Err(_) => Err(format!(
            "not read within {} s (a hung file system?)",
            FILE_READ_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("reading stopped: {e}")),
        Ok(Ok(Ok(b))) => Ok(Some(b)),
        Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Ok(Ok(Err(e))) => Err(e.to_string()),
    }
}

async fn remove_file(path: &Path) -> Result<(), String> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.to_string()),
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
