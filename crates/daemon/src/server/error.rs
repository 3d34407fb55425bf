//! Errors that reach a client, mapped to HTTP and gRPC status in this one place.
//!
//! A variant's text (`Display`) is what the client is told, and callers on these routes need
//! not have authenticated: it never carries an internal error's words (a path, the model
//! server's address, a connection error). Where a variant holds such details they go to the
//! agent's log when the answer is made ([`ApiError::withheld`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use tdx_net::forward::openai_error::OpenAiError;

use super::readiness::Public;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the message says which field and why.
    #[error("{0}")]
    BadRequest(String),
    /// A readiness stage does not hold; `detail` is the stage's public detail (its log
    /// detail was logged when the stage changed).
    #[error("not ready: {stage}: {detail}")]
    NotReady { stage: &'static str, detail: Public },
    /// Too many callers are waiting for a quote or a model answer.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The TEE or the audit log failed; evidence is withheld rather than issued unlogged.
    #[error("evidence unavailable: {0}")]
    Unavailable(String),
    /// No API key, or one that is not configured, on a model route.
    #[error("{0}")]
    Unauthorized(String),
    #[error("request body over {limit} bytes")]
    TooLarge { limit: u64 },
    /// The request body on a model route stalled, or was not received whole within its
    /// overall bound: the client's fault. The message says which limit.
    #[error("{0}")]
    RequestTimeout(String),
    /// The model server could not be reached or broke off: its fault, not the client's. The
    /// client learns that much; its address and the connection's error chain are logged.
    #[error(
        "the model server is unavailable: it refused the connection, broke off or answered in a way the agent refuses; see the agent's log"
    )]
    UpstreamUnavailable { upstream: String, detail: String },
    /// The model server did not start answering in time.
    #[error(
        "the model server did not answer within {secs}s (upstream.response_header_timeout_secs)"
    )]
    UpstreamTimeout { upstream: String, secs: u64 },
    #[error("{0}")]
    NotFound(String),
    /// A route the agent serves, asked with a method it does not take (the `Allow` header,
    /// which the router adds, lists those it does).
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotReady { .. } | ApiError::Overloaded(_) | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_)
            | ApiError::TooLarge { .. }
            | ApiError::RequestTimeout(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::Unauthorized(_) => "invalid_request_error",
            ApiError::NotReady { .. } => "not_ready",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unavailable(_) => "evidence_unavailable",
            ApiError::UpstreamUnavailable { .. } => "upstream_unavailable",
            ApiError::UpstreamTimeout { .. } => "upstream_timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// What the client is not told but the agent's log must say: the model server's address
    /// and what went wrong on the connection to it.
    pub fn withheld(&self) -> Option<String> {
        match self {
            ApiError::UpstreamUnavailable { upstream, detail } => Some(format!(
                "the model server {upstream} is unavailable: {detail}"
            )),
            ApiError::UpstreamTimeout { upstream, secs } => Some(format!(
                "the model server {upstream} did not answer within {secs}s"
            )),
            _ => None,
        }
    }

    fn log_withheld(&self) {
        if let Some(w) = self.withheld() {
            tracing::warn!(kind = self.kind(), "model request failed: {w}");
        }
    }

    fn code(&self) -> String {
        match self {
            ApiError::NotReady { stage, .. } => (*stage).to_string(),
            ApiError::Unauthorized(_) => "invalid_api_key".into(),
            ApiError::TooLarge { .. } => "request_too_large".into(),
            ApiError::RequestTimeout(_) => "request_timeout".into(),
            ApiError::MethodNotAllowed(_) => "method_not_allowed".into(),
            other => other.status().as_u16().to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log_withheld();
        // OpenAI's error shape, so SDKs show the message.
        let mut r = OpenAiError::new(self.status(), self.kind(), self.to_string())
            .with_code(self.code())
            .into_response();
        if let ApiError::Unauthorized(_) = self {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.log_withheld();
        let msg = e.to_string();
        match e {
            ApiError::BadRequest(_) => tonic::Status::invalid_argument(msg),
            ApiError::NotReady { .. }
            | ApiError::Unavailable(_)
            | ApiError::UpstreamUnavailable { .. }
            | ApiError::UpstreamTimeout { .. } => tonic::Status::unavailable(msg),
            ApiError::Overloaded(_) => tonic::Status::resource_exhausted(msg),
            ApiError::Unauthorized(_) => tonic::Status::unauthenticated(msg),
            ApiError::TooLarge { .. } => tonic::Status::out_of_range(msg),
            ApiError::RequestTimeout(_) => tonic::Status::deadline_exceeded(msg),
            ApiError::NotFound(_) => tonic::Status::not_found(msg),
            ApiError::MethodNotAllowed(_) => tonic::Status::unimplemented(msg),
            ApiError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            ApiError::BadRequest("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::NotReady {
                stage: "measured",
                detail: Public::fixed("x")
            }
            .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            tonic::Status::from(ApiError::Overloaded("x".into())).code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            tonic::Status::from(ApiError::BadRequest("nonce".into())).code(),
            tonic::Code::InvalidArgument
        );
        let wrong_method = ApiError::MethodNotAllowed("GET /x".into());
        assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong_method.code(), "method_not_allowed");
        assert_eq!(
            tonic::Status::from(wrong_method).code(),
            tonic::Code::Unimplemented
        );
    }

    /// A model request the model server failed: the client learns which side failed, not the
    /// model server's address or the connection's error chain (they are logged instead).
    #[tokio::test]
    async fn the_model_servers_address_and_errors_stay_out_of_the_answer() {
        use http_body_util::BodyExt as _;
        let failures = || {
            [
                ApiError::UpstreamUnavailable {
                    upstream: "http://10.1.2.3:8000".into(),
                    detail:
                        "client error (Connect): tcp connect error: Connection refused (os error 111)"
                            .into(),
                },
                ApiError::UpstreamTimeout {
                    upstream: "http://10.1.2.3:8000".into(),
                    secs: 7,
                },
            ]
        };
        let secrets = ["10.1.2.3", "Connect", "os error"];
        for (e, grpc) in failures().into_iter().zip(failures()) {
            let withheld = e.withheld().unwrap();
            assert!(withheld.contains("10.1.2.3:8000"), "{withheld}");
            let grpc = tonic::Status::from(grpc);
            let r = e.into_response();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body);
            for secret in secrets {
                assert!(!body.contains(secret), "{secret} in {body}");
                assert!(!grpc.message().contains(secret), "{secret} in {grpc:?}");
            }
            assert!(body.contains("the model server"), "{body}");
        }
    }
}
