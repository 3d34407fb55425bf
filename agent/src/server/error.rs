//! Errors that reach a client, mapped to HTTP and gRPC status in this one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the message says which field and why.
    #[error("{0}")]
    BadRequest(String),
    /// A readiness stage does not hold; the message names it.
    #[error("not ready: {0}")]
    NotReady(String),
    /// Too many callers are waiting for a quote.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The TEE or the audit log failed; evidence is withheld rather than issued unlogged.
    #[error("evidence unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotReady(_) | ApiError::Overloaded(_) | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid_request_error",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unavailable(_) => "evidence_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // OpenAI's error shape, so SDKs show the message.
        let body = json!({"error": {"message": self.to_string(), "type": self.kind(), "code": self.status().as_u16()}});
        (self.status(), Json(body)).into_response()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let msg = e.to_string();
        match e {
            ApiError::BadRequest(_) => tonic::Status::invalid_argument(msg),
            ApiError::NotReady(_) | ApiError::Unavailable(_) => tonic::Status::unavailable(msg),
            ApiError::Overloaded(_) => tonic::Status::resource_exhausted(msg),
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
            ApiError::NotReady("x".into()).status(),
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
    }
}
