//! The HTTPS routes: evidence, fresh challenges, probes and metrics.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::ApiError;
use super::state::{AppState, Served};
use tdx_core::challenge::merkle::ProofJson;
use tdx_core::encoding::{b64, from_b64, hex};
use tdx_core::verify::time::format_unix;
use tdx_core::wire::{
    CHALLENGE, ChallengeRequest, ChallengeResponseJson, EvidenceJson, WELL_KNOWN,
};

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.limits.max_request_body_bytes;
    Router::new()
        .route(WELL_KNOWN, get(evidence))
        .route(CHALLENGE, post(challenge))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Paths no route serves: an OpenAI-shaped 404 (docs/api.md), or for a gRPC call to a method
/// or service the agent does not have, gRPC's own "unimplemented".
pub async fn not_found(request: axum::extract::Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("{}: no such method", request.uri().path()))
            .into_http();
    }
    ApiError::NotFound(format!(
        "{} {}: no such route",
        request.method(),
        request.uri().path()
    ))
    .into_response()
}

/// A route the agent serves, with a method it does not take: an OpenAI-shaped 405 (the
/// router adds the `Allow` header) rather than axum's empty one.
pub async fn method_not_allowed(request: axum::extract::Request) -> Response {
    ApiError::MethodNotAllowed(format!(
        "{} {}: method not allowed on this route",
        request.method(),
        request.uri().path()
    ))
    .into_response()
}

pub fn evidence_json(state: &AppState, served: &Served) -> Result<EvidenceJson, ApiError> {
    let event_log = served.event_log.clone();
    Ok(EvidenceJson {
        version: 1,
        tee: match state.tee.kind() {
            tdx_tee::TeeKind::Configfs => "configfs".into(),
            tdx_tee::TeeKind::Simulated => "simulated".into(),
        },
        certificate: b64(&served.cert.cert_der),
        quote: b64(&served.quote),
        spki_sha256: hex(&served.cert.spki_sha256),
        not_before: format_unix(served.cert.not_before),
        not_after: format_unix(served.cert.not_after),
        collateral: serde_json::from_str(&served.collateral_json)
            .map_err(|e| ApiError::Internal(format!("collateral bundle: {e}")))?,
        event_log,
        tcb_status: served.self_check.tcb_status().map(str::to_string),
        gpu_evidence: served.gpu.as_ref().map(|g| g.evidence_json.clone()),
        gpu_collateral: served.gpu.as_ref().map(|g| g.collateral_json.clone()),
    })
}

/// The document is made once per certificate (`AppState::evidence_document`).
async fn evidence(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let document = state.evidence_document(|served| {
        let json = evidence_json(&state, served)?;
        serde_json::to_vec(&json)
            .map(bytes::Bytes::from)
            .map_err(|e| ApiError::Internal(format!("evidence document: {e}")))
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        document,
    )
        .into_response())
}

/// Run one challenge; shared by HTTPS and gRPC.
pub async fn run_challenge(
    state: &AppState,
    nonce: Vec<u8>,
) -> Result<(crate::batcher::ChallengeResponse, [u8; 32]), ApiError> {
    if nonce.is_empty() || nonce.len() > tdx_core::challenge::merkle::MAX_NONCE_LEN {
        return Err(ApiError::BadRequest(format!(
            "nonce: {} bytes, expected 1..={}",
            nonce.len(),
            tdx_core::challenge::merkle::MAX_NONCE_LEN
        )));
    }
    let spki = state.served().cert.spki_sha256;
    match state.batcher.challenge(&nonce, spki).await {
        Ok(r) => {
            state.metrics.count(&state.metrics.challenges, "ok");
            Ok((r, spki))
        }
        Err(e) => {
            state.metrics.count(&state.metrics.challenges, "error");
            Err(match e {
                tdx_core::challenge::ChallengeError::Overloaded => {
                    ApiError::Overloaded(e.to_string())
                }
                tdx_core::challenge::ChallengeError::NonceLength { .. } => {
                    ApiError::BadRequest(e.to_string())
                }
                other => ApiError::Unavailable(other.to_string()),
            })
        }
    }
}

async fn challenge(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ChallengeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ChallengeResponseJson>, ApiError> {
    let limit = state.config.limits.max_request_body_bytes;
    let Json(req) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                limit: u64::try_from(limit).unwrap_or(u64::MAX),
            }
        } else if stalled(&e) {
            // The client's body stopped coming: a timeout on its side (408, which clients
            // take for "try again"), not a malformed request (400, a verdict).
            ApiError::RequestTimeout(format!("body: {}", e.body_text()))
        } else {
            ApiError::BadRequest(format!("body: {}", e.body_text()))
        }
    })?;
    let nonce = from_b64(req.nonce.trim())
        .map_err(|e| ApiError::BadRequest(format!("nonce: not base64: {e}")))?;
    let (r, spki) = run_challenge(&state, nonce).await?;
    Ok(Json(ChallengeResponseJson {
        quote: b64(&r.quote),
        report_data: hex(&r.report_data),
        audit_head: hex(&r.audit_head),
        root: hex(&r.root),
        leaf_hash: hex(&r.leaf_hash),
        proof: ProofJson::from(r.proof.clone()),
        spki_sha256: hex(&spki),
        gpu_evidence: r.gpu_evidence.as_deref().cloned(),
    }))
}

/// Whether reading the body failed because it stopped coming, or was not whole within its
/// time (the limits `Service` puts on request bodies), somewhere down the rejection's causes.
fn stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<super::proxy::body::IdleTimeoutError>()
            || c.is::<super::proxy::body::BodyDeadlineError>()
        {
            return true;
        }
        cause = c.source();
    }
    false
}

async fn livez() -> impl IntoResponse {
    Json(serde_json::json!({"status": "alive"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let stages = state.readiness.snapshot();
    let ready = stages.iter().all(|s| s.ok);
    let body = Json(serde_json::json!({"ready": ready, "stages": stages}));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.ready.set(i64::from(state.readiness.ready()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
