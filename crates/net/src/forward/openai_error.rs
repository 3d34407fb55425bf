//! Errors in the shape OpenAI's API and SDKs use (`{"error": {"message", "type", "param",
//! "code"}}`), so an unmodified SDK raises them with our message instead of a parse error.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why a request was not answered by the model; `kind` is the error `type` clients see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// Machine-readable detail, e.g. the readiness stage or the failed check.
    pub code: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<()>,
    code: Option<&'a str>,
}

impl OpenAiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        OpenAiError {
            status,
            kind,
            message: message.into(),
            code: None,
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: None,
                code: self.code.as_deref(),
            },
        })
        // Only strings: serialisation cannot fail.
        .unwrap_or_default()
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.to_json()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = OpenAiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "say \"why\"")
            .with_code("upstream_healthy");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"message": "say \"why\"", "type": "not_ready", "param": null, "code": "upstream_healthy"}})
        );
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
