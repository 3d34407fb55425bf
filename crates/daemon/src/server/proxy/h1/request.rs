//! The head of a request to the upstream, written as HTTP/1.1 bytes. Every piece comes from
//! `http` types that already refuse CR, LF and NUL, so nothing a client sends can split the
//! head; the body's framing header is always ours, never the client's.

use axum::http::request::Parts;
use axum::http::{Method, header};
use std::fmt::Write as _;

use bytes::{BufMut as _, BytesMut};

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

/// Append the request line and header section of `parts` to `out`. The caller has already
/// removed the hop-by-hop headers and set Host; Content-Length and Transfer-Encoding are
/// written from `framing` alone.
pub fn encode(parts: &Parts, framing: Framing, out: &mut BytesMut) {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.reserve(64 + target.len() + parts.headers.len() * 32);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        // An empty body needs no header where the method defines no body meaning (RFC 9110
        // §8.6: a user agent should not send Content-Length then).
        Framing::Length(0)
            if matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
            ) => {}
        Framing::Length(n) => {
            // Formatting into a BytesMut cannot fail: it grows.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn wire(req: Request<()>, framing: Framing) -> String {
        let (parts, ()) = req.into_parts();
        let mut out = BytesMut::new();
        encode(&parts, framing, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn the_framing_header_is_ours_alone() {
        let req = Request::post("/v1/chat/completions?x=1")
            .header("host", "127.0.0.1:8000")
            .header("content-length", "999")
            .header("transfer-encoding", "gzip")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap();
        assert_eq!(
            wire(req, Framing::Length(17)),
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8000\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 17\r\n\r\n"
        );
        let req = Request::put("/u").body(()).unwrap();
        assert_eq!(
            wire(req, Framing::Chunked),
            "PUT /u HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn an_empty_body_is_declared_only_where_the_method_expects_one() {
        assert_eq!(
            wire(
                Request::get("/health").body(()).unwrap(),
                Framing::Length(0)
            ),
            "GET /health HTTP/1.1\r\n\r\n"
        );
        assert_eq!(
            wire(Request::post("/").body(()).unwrap(), Framing::Length(0)),
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
