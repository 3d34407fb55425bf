//! A simulated PCCS: the PCCS v4 collateral API served from a [`SimPki`], fresh per request,
//! so the agent's real collateral-fetching path runs against the simulation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{SimError, SimPki};

pub const PCK_CRL_PATH: &str = "/sgx/certification/v4/pckcrl";
pub const TCB_PATH: &str = "/tdx/certification/v4/tcb";
pub const QE_IDENTITY_PATH: &str = "/tdx/certification/v4/qe/identity";
pub const ROOT_CA_CRL_PATH: &str = "/sgx/certification/v4/rootcacrl";

pub const PCK_CRL_ISSUER_CHAIN: &str = "SGX-PCK-CRL-Issuer-Chain";
pub const TCB_INFO_ISSUER_CHAIN: &str = "TCB-Info-Issuer-Chain";
pub const ENCLAVE_IDENTITY_ISSUER_CHAIN: &str = "SGX-Enclave-Identity-Issuer-Chain";

type Pki = State<Arc<SimPki>>;
type Params = Query<HashMap<String, String>>;

/// The PCCS v4 routes for the simulated platform.
/// Serve the PCCS API from `pki` on `listener` until `shutdown`, with the simulated GPUs'
/// NVIDIA services (`gpu_services`) on the same port when there are any.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pki: Arc<SimPki>,
    gpus: Option<Arc<super::gpu_services::SimGpuServices>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = router(pki);
    if let Some(gpus) = gpus {
        app = app.merge(super::gpu_services::router(gpus));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub fn router(pki: Arc<SimPki>) -> Router {
    Router::new()
        .route(PCK_CRL_PATH, get(pck_crl))
        .route(TCB_PATH, get(tcb_info))
        .route(QE_IDENTITY_PATH, get(qe_identity))
        .route(ROOT_CA_CRL_PATH, get(root_ca_crl))
        .with_state(pki)
}

/// A refusal: status and a plain-text reason for the client.
#[derive(Debug)]
pub struct PccsError {
    status: StatusCode,
    msg: String,
}

impl PccsError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        PccsError {
            status,
            msg: msg.into(),
        }
    }

    fn bad_request(msg: impl Into<String>) -> Self {
        PccsError::new(StatusCode::BAD_REQUEST, msg)
    }

    fn not_found(msg: impl Into<String>) -> Self {
        PccsError::new(StatusCode::NOT_FOUND, msg)
    }

    fn internal(msg: impl Into<String>) -> Self {
        PccsError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
}

impl From<SimError> for PccsError {
    fn from(e: SimError) -> Self {
        PccsError::internal(e.to_string())
    }
}

impl IntoResponse for PccsError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.msg + "\n",
        )
            .into_response()
    }
}

fn now() -> Result<u64, PccsError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| PccsError::internal("system clock is before 1970"))
}

/// Refuse query parameters the endpoint does not know: a typo must not silently select a
/// default.
fn only_params(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), PccsError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) if allowed.is_empty() => Err(PccsError::bad_request(format!(
            "unknown query parameter {k:?}; this endpoint takes none"
        ))),
        Some(k) => Err(PccsError::bad_request(format!(
            "unknown query parameter {k:?}; expected {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

/// Percent-encode like JavaScript's encodeURIComponent, which is how Intel's PCS and PCCS
/// encode PEM chains in headers.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `name` is one of the header constants above; `HeaderName` wants it lowercase.
fn chain_header(name: &str, pem: &str) -> Result<(HeaderName, HeaderValue), PccsError> {
    let name = HeaderName::try_from(name.to_ascii_lowercase())
        .map_err(|e| PccsError::internal(format!("bad header name {name}: {e}")))?;
    let value = HeaderValue::from_str(&url_encode(pem))
        .map_err(|e| PccsError::internal(format!("issuer chain is not a header value: {e}")))?;
    Ok((name, value))
}

async fn pck_crl(State(pki): Pki, Query(q): Params) -> Result<Response, PccsError> {
    only_params(&q, &["ca", "encoding"])?;
    match q.get("ca").map(String::as_str) {
        Some("processor") => {}
        Some("platform") => {
            return Err(PccsError::not_found(
                "the simulated PKI has no PCK Platform CA; its PCK certificate is issued by the processor CA (ca=processor)",
            ));
        }
        Some(other) => {
            return Err(PccsError::bad_request(format!(
                "ca={other:?} is not valid; expected processor or platform"
            )));
        }
        None => {
            return Err(PccsError::bad_request(
                "missing query parameter ca=processor|platform",
            ));
        }
    }
    let der_body = match q.get("encoding").map(String::as_str) {
        None => false,
        Some("der") => true,
        Some(other) => {
            return Err(PccsError::bad_request(format!(
                "encoding={other:?} is not valid; expected der (or omit it for hex)"
            )));
        }
    };
    let crl = pki.pck_crl(now()?)?;
    let chain = chain_header(PCK_CRL_ISSUER_CHAIN, &pki.pck_crl_issuer_chain_pem())?;
    Ok(if der_body {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/pkix-crl"),
                ),
                chain,
            ],
            crl,
        )
            .into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
                chain,
            ],
            hex::encode(crl),
        )
            .into_response()
    })
}

/// `{"<key>":<signed text>,"signature":"<hex>"}` with the signed text embedded byte for byte:
/// re-serialising it would change the bytes the signature covers.
fn signed_body(key: &str, signed: &str, sig: &[u8; 64]) -> String {
    format!(
        "{{\"{key}\":{signed},\"signature\":\"{}\"}}",
        hex::encode(sig)
    )
}

/// `update=standard|early`, which Intel's PCCS accepts and Intel's QCNL (DCAP 1.21 and later)
/// and dcap-qvl's collateral client always send. The simulated platform has one TCB
/// evaluation, so both give the same answer.
fn update_param(q: &HashMap<String, String>) -> Result<(), PccsError> {
    match q.get("update").map(String::as_str) {
        None | Some("standard" | "early") => Ok(()),
        Some(other) => Err(PccsError::bad_request(format!(
            "update={other:?} is not valid; expected standard or early"
        ))),
    }
}

async fn tcb_info(State(pki): Pki, Query(q): Params) -> Result<Response, PccsError> {
    only_params(&q, &["fmspc", "update"])?;
    update_param(&q)?;
    let Some(fmspc) = q.get("fmspc") else {
        return Err(PccsError::bad_request(
            "missing query parameter fmspc (12 hex digits)",
        ));
    };
    let bytes = hex::decode(fmspc)
        .ok()
        .filter(|b| b.len() == 6)
        .ok_or_else(|| PccsError::bad_request(format!("fmspc={fmspc:?} is not 12 hex digits")))?;
    if bytes != pki.fmspc() {
        return Err(PccsError::not_found(format!(
            "no TCB info for fmspc {}; the simulated platform is {}",
            fmspc.to_uppercase(),
            hex::encode_upper(pki.fmspc())
        )));
    }
    let (info, sig) = pki.tcb_info(now()?)?;
    let chain = chain_header(TCB_INFO_ISSUER_CHAIN, &pki.tcb_issuer_chain_pem())?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            chain,
        ],
        signed_body("tcbInfo", &info, &sig),
    )
        .into_response())
}

async fn qe_identity(State(pki): Pki, Query(q): Params) -> Result<Response, PccsError> {
    only_params(&q, &["update"])?;
    update_param(&q)?;
    let (id, sig) = pki.qe_identity(now()?)?;
    let chain = chain_header(ENCLAVE_IDENTITY_ISSUER_CHAIN, &pki.tcb_issuer_chain_pem())?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            chain,
        ],
        signed_body("enclaveIdentity", &id, &sig),
    )
        .into_response())
}

async fn root_ca_crl(State(pki): Pki, Query(q): Params) -> Result<Response, PccsError> {
    only_params(&q, &[])?;
    let crl = pki.root_ca_crl(now()?)?;
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))],
        hex::encode(crl),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SimFixture, SimSettings};
    use tdx_core::verify::collateral::Collateral;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn text(&self) -> String {
            String::from_utf8(self.body.clone()).unwrap()
        }
    }

    async fn serve(fx: &SimFixture) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Arc::clone(&fx.pki));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    async fn get(addr: std::net::SocketAddr, target: &str) -> Reply {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let body = raw[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let reply = Reply {
            status,
            headers,
            body,
        };
        if let Some(len) = reply.header("content-length") {
            assert_eq!(len.parse::<usize>().unwrap(), reply.body.len());
        }
        reply
    }

    fn url_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Split `{"key":<text>,"signature":"hex"}` the way a collateral client must: keep the
    /// signed text byte for byte.
    fn split_signed(body: &str, key: &str) -> (String, Vec<u8>) {
        let prefix = format!("{{\"{key}\":");
        let rest = body.strip_prefix(&prefix).unwrap();
        let at = rest.rfind(",\"signature\":\"").unwrap();
        let text = rest[..at].to_string();
        let sig = rest[at..]
            .trim_start_matches(",\"signature\":\"")
            .trim_end_matches("\"}");
        // The body is also plain JSON with the same object.
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v[key],
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        );
        (text, hex::decode(sig).unwrap())
    }

    #[tokio::test]
    async fn collateral_fetched_from_the_sim_pccs_verifies_a_sim_quote() {
        let tmp = tempfile::tempdir().unwrap();
        let fx = SimFixture::create(&tmp.path().join("sim"), SimSettings::default()).unwrap();
        let addr = serve(&fx).await;
        let fmspc = hex::encode(fx.pki.fmspc());

        let pck = get(
            addr,
            "/sgx/certification/v4/pckcrl?ca=processor&encoding=der",
        )
        .await;
        assert_eq!(pck.status, 200);
        let pck_hex = get(addr, "/sgx/certification/v4/pckcrl?ca=processor").await;
        assert_eq!(pck_hex.status, 200);
        assert!(hex::decode(pck_hex.text().trim()).is_ok());
        let root_crl = get(addr, "/sgx/certification/v4/rootcacrl").await;
        assert_eq!(root_crl.status, 200);
        let tcb = get(addr, &format!("/tdx/certification/v4/tcb?fmspc={fmspc}")).await;
        assert_eq!(tcb.status, 200);
        assert_eq!(tcb.header("content-type"), Some("application/json"));
        let qe = get(addr, "/tdx/certification/v4/qe/identity").await;
        assert_eq!(qe.status, 200);

        let (tcb_info, tcb_sig) = split_signed(&tcb.text(), "tcbInfo");
        let (qe_identity, qe_sig) = split_signed(&qe.text(), "enclaveIdentity");
        let coll = Collateral {
            pck_crl_issuer_chain: url_decode(pck.header(PCK_CRL_ISSUER_CHAIN).unwrap()),
            root_ca_crl: hex::decode(root_crl.text().trim()).unwrap(),
            pck_crl: pck.body.clone(),
            tcb_info_issuer_chain: url_decode(tcb.header(TCB_INFO_ISSUER_CHAIN).unwrap()),
            tcb_info,
            tcb_info_signature: tcb_sig,
            qe_identity_issuer_chain: url_decode(qe.header(ENCLAVE_IDENTITY_ISSUER_CHAIN).unwrap()),
            qe_identity,
            qe_identity_signature: qe_sig,
        };
        assert_eq!(coll.pck_crl_issuer_chain, fx.pki.pck_crl_issuer_chain_pem());
        assert_eq!(coll.tcb_info_issuer_chain, fx.pki.tcb_issuer_chain_pem());

        let quote = fx.quote(&[7; 64]).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let report = fx.verifier().verify(&quote, &(&coll).into(), now).unwrap();
        assert_eq!(report.status, "UpToDate");
        assert_eq!(report.report.as_td10().unwrap().report_data, [7; 64]);
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let fx = SimFixture::create(&tmp.path().join("sim"), SimSettings::default()).unwrap();
        let addr = serve(&fx).await;
        for (target, status) in [
            ("/tdx/certification/v4/tcb?fmspc=00906ED50000", 404),
            ("/tdx/certification/v4/tcb?fmspc=zz", 400),
            ("/tdx/certification/v4/tcb?fmspc=00906ED500", 400),
            ("/tdx/certification/v4/tcb", 400),
            ("/tdx/certification/v4/tcb?fmspc=00906ED50000&x=1", 400),
            ("/sgx/certification/v4/pckcrl", 400),
            ("/sgx/certification/v4/pckcrl?ca=vendor", 400),
            (
                "/sgx/certification/v4/pckcrl?ca=processor&encoding=pem",
                400,
            ),
            ("/sgx/certification/v4/pckcrl?ca=platform", 404),
            ("/tdx/certification/v4/qe/identity?update=later", 400),
            ("/tdx/certification/v4/qe/identity?updates=early", 400),
            (
                "/tdx/certification/v4/tcb?fmspc=00906ED50000&update=soon",
                400,
            ),
            ("/sgx/certification/v4/rootcacrl?x=1", 400),
            ("/tdx/certification/v4/nothing", 404),
        ] {
            let r = get(addr, target).await;
            assert_eq!(r.status, status, "{target}: {}", r.text());
        }
        // What Intel's QCNL and dcap-qvl's collateral client send, query strings verbatim.
        let fmspc = hex::encode_upper(fx.pki.fmspc());
        for target in [
            format!("/tdx/certification/v4/tcb?fmspc={fmspc}&update=standard"),
            format!("/tdx/certification/v4/tcb?fmspc={fmspc}&update=early"),
            format!("/tdx/certification/v4/tcb?update=standard&fmspc={fmspc}"),
            "/tdx/certification/v4/qe/identity?update=standard".to_string(),
            "/tdx/certification/v4/qe/identity?update=early".to_string(),
        ] {
            let r = get(addr, &target).await;
            assert_eq!(r.status, 200, "{target}: {}", r.text());
        }
        // The FMSPC match is case-insensitive, like hex everywhere else.
        let upper = hex::encode_upper(fx.pki.fmspc());
        let r = get(addr, &format!("/tdx/certification/v4/tcb?fmspc={upper}")).await;
        assert_eq!(r.status, 200);
    }

    #[test]
    fn url_encoding_matches_encode_uri_component() {
        assert_eq!(
            url_encode("-----BEGIN CERTIFICATE-----\nab+/=\n"),
            "-----BEGIN%20CERTIFICATE-----%0Aab%2B%2F%3D%0A"
        );
    }
}
