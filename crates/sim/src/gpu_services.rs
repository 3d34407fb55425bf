//! NVIDIA's two attestation services for the simulated GPU PKI, in the shapes NVIDIA's
//! verifier talks to (docs/design.md §14): the RIM service (`GET /v1/rim/<id>`, JSON whose
//! `rim` is the XML in base64) and the OCSP responder (`POST /ocsp`, DER request in, DER
//! answer out, dated at the wall clock).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;

use super::gpu::SimGpuPki;

pub const RIM_PATH: &str = "/v1/rim/{id}";
pub const OCSP_PATH: &str = "/ocsp";

/// What the services answer from: the PKI and the RIMs filed under their service ids.
pub struct SimGpuServices {
    pub pki: SimGpuPki,
    pub rims: HashMap<String, Vec<u8>>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<SimGpuServices>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

pub fn router(state: Arc<SimGpuServices>) -> Router {
    Router::new()
        .route(RIM_PATH, get(rim))
        .route(OCSP_PATH, post(ocsp))
        .with_state(state)
}

async fn rim(State(s): State<Arc<SimGpuServices>>, Path(id): Path<String>) -> Response {
    match s.rims.get(&id) {
        None => (StatusCode::NOT_FOUND, format!("no RIM {id}")).into_response(),
        Some(xml) => axum::Json(serde_json::json!({
            "id": id,
            "rim": base64::engine::general_purpose::STANDARD.encode(xml),
            "rim_format": "SWID",
        }))
        .into_response(),
    }
}

async fn ocsp(State(s): State<Arc<SimGpuServices>>, body: Bytes) -> Response {
    let now = tdx_core::verify::time::now_unix();
    match s.pki.answer_request(&body, now) {
        Ok(der) => ([(header::CONTENT_TYPE, "application/ocsp-response")], der).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
