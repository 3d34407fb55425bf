//! Which request targets the front door may forward: only paths that stay under `/v1/` however
//! the model server (or a proxy in front of it) decodes and normalizes them. The path is
//! checked as written and percent-decoded, segment by segment, and then forwarded exactly as
//! written: what was checked is what goes on.

use axum::http::{Uri, Version};

/// Why a target is refused, for the 400 answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "absolute-form request targets are not forwarded; send the path only (origin form, RFC 9112 §3.2.1)"
    )]
    AbsoluteForm,
    #[error("{0}")]
    Path(String),
}

/// Check `uri` (the request target) before it is forwarded under `/v1/`.
pub fn check(uri: &Uri, version: Version) -> Result<(), PathError> {
    // HTTP/2 always carries scheme and authority; HTTP/1.1 only in absolute form, which an
    // origin server is not sent and a proxy in front of the model server would route by.
    if version < Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err(PathError::AbsoluteForm);
    }
    check_path(uri.path())
}

fn refuse(path: &str, why: &str) -> PathError {
    PathError::Path(format!(
        "request path {path:?} {why}; model routes are plain paths under /v1/"
    ))
}

/// The path as written must start with `/v1/`, and no segment, as written or percent-decoded,
/// may be `.` or `..`, be empty, or hold a backslash, a NUL or an encoded `/`.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let Some(rest) = path.strip_prefix(super::super::service::MODEL_PREFIX) else {
        return Err(refuse(path, "is not under /v1/"));
    };
    // Splitting the written path on '/' first, then decoding each segment, keeps "%2F" from
    // creating a separator the check would not see but a decoding server would.
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        // An empty segment ("/v1//x") is where "//host" tricks start; no OpenAI route has
        // one. The last may be empty ("/v1/models/").
        if segment.is_empty() && i + 1 != segments.len() {
            return Err(refuse(path, "has an empty segment (//)"));
        }
        let decoded = percent_decode(segment)
            .ok_or_else(|| refuse(path, "has a malformed percent-encoding"))?;
        if decoded.contains(&b'/') {
            return Err(refuse(path, "encodes a slash (%2F) inside a segment"));
        }
        if decoded.contains(&b'\\') {
            return Err(refuse(
                path,
                "holds a backslash, which some servers read as a slash",
            ));
        }
        if decoded.contains(&0) {
            return Err(refuse(path, "holds a NUL byte"));
        }
        if decoded == b"." || decoded == b".." {
            return Err(refuse(
                path,
                "has a dot segment (. or .., also percent-encoded), which leaves /v1/ once normalized",
            ));
        }
    }
    Ok(())
}

/// `%XX` decoded; `None` for a `%` not followed by two hex digits.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths_pass_and_escapes_are_refused() {
        for ok in [
            "/v1/models",
            "/v1/chat/completions",
            "/v1/models/",
            "/v1/",
            "/v1/files/file-abc.jsonl",
            "/v1/x..y",
            "/v1/.well",
            "/v1/models/tiny%20llama",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/v1/../metrics",
            "/v1/%2e%2e/metrics",
            "/v1/%2E%2E/metrics",
            "/v1/..%2fmetrics",
            "/v1/..%2Fmetrics",
            "/v1/.%2e/metrics",
            "/v1/./models",
            "/v1/models/..",
            "/v1/..\\metrics",
            "/v1/%5c../metrics",
            "/v1//metrics",
            "/v1/a//b",
            "/v1/%00",
            "/v1/%zz",
            "/v1/%2",
            "/v2/models",
            "//v1/models",
            "/v1",
            "/v1/models/meta-llama%2FLlama-3",
        ] {
            assert!(check_path(bad).is_err(), "{bad} passed");
        }
    }

    #[test]
    fn absolute_form_is_refused_on_http1_only() {
        let abs: Uri = "http://127.0.0.1:8000/v1/models"
            .parse()
            .unwrap_or_default();
        assert_eq!(check(&abs, Version::HTTP_11), Err(PathError::AbsoluteForm));
        // HTTP/2 requests always carry :scheme and :authority.
        assert!(check(&abs, Version::HTTP_2).is_ok());
        let origin: Uri = "/v1/models".parse().unwrap_or_default();
        assert!(check(&origin, Version::HTTP_11).is_ok());
    }
}
