//! The head of an upstream response: parsed with httparse into `http` types without copying the
//! header values, and the framing of the body that follows decided by RFC 9112 §6.3 from the
//! raw headers, before the proxy strips the hop-by-hop ones.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use bytes::BytesMut;
use std::mem::MaybeUninit;

/// More header fields than this in one response is refused.
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head: {0}")]
    Syntax(#[from] httparse::Error),
    #[error("status code {0} is out of range")]
    Status(u16),
    #[error("header field {name:?}: {why}")]
    Field { name: String, why: &'static str },
    #[error("Content-Length {0:?} is not one decimal number")]
    ContentLength(String),
    #[error("an HTTP/1.0 response with Transfer-Encoding has no trustworthy framing")]
    TransferEncodingInHttp10,
}

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection, which then cannot be reused.
    UntilClose,
}

#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once this body has ended.
    pub keep_alive: bool,
}

/// Where a header field's value lies in the buffer the head was parsed from (`None`: empty).
pub type Field = (HeaderName, Option<std::ops::Range<usize>>);

/// Parse a complete head from the front of `buf` and remove it, or `None` when the head has
/// not all arrived yet (`buf` is then untouched). `fields` is scratch space, kept by the
/// connection so that a response costs no allocation of its own for it.
pub fn parse(
    buf: &mut BytesMut,
    method: &Method,
    fields: &mut Vec<Field>,
) -> Result<Option<Head>, HeadError> {
    // Left uninitialised: zeroing 128 slots on every parse showed in the profile.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)?
    {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    // httparse sets both on a complete head; 0 stands for a missing one and is refused.
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| HeadError::Status(code))?;
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Where each value lies in `buf`, so that the values can share the head's one allocation
    // once it is split off (the borrow of `buf` ends first).
    let base = buf.as_ptr() as usize;
    fields.clear();
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Field {
            name: h.name.to_string(),
            why: "not a valid field name",
        })?;
        let at = (h.value.as_ptr() as usize).wrapping_sub(base);
        let span = (!h.value.is_empty() && at < len).then_some(at..at + h.value.len());
        fields.push((name, span));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, span) in fields.drain(..) {
        let value = match span.and_then(|s| head.get(s.clone()).map(|_| head.slice(s))) {
            Some(bytes) => HeaderValue::from_maybe_shared(bytes).map_err(|_| HeadError::Field {
                name: name.to_string(),
                why: "not a valid field value",
            })?,
            None => HeaderValue::from_static(""),
        };
        headers.append(name, value);
    }
    let (framing, keep_alive) = framing(status, version, method, &headers)?;
    // What goes on to the client must describe the body it gets (RFC 9112 §6.3 rule 3): a
    // Content-Length beside chunked coding is wrong for it, and a list of equal values
    // becomes the one number.
    match framing {
        Framing::Chunked | Framing::UntilClose => {
            headers.remove(header::CONTENT_LENGTH);
        }
        // Rewritten only when it is not already the one number (the usual case costs nothing).
        Framing::Length(n) => {
            let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
            let single = values
                .next()
                .is_some_and(|v| v.as_bytes().iter().all(u8::is_ascii_digit));
            if !single || values.next().is_some() {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        // HEAD and 304 keep theirs: it tells the length of what a GET would have sent.
        Framing::Empty => {}
    }
    Ok(Some(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// RFC 9112 §6.3, and whether the connection survives the message (§9.3).
fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(Framing, bool), HeadError> {
    let mut keep_alive =
        version == Version::HTTP_11 && !has_token(headers, header::CONNECTION, "close");
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, keep_alive));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // HTTP/1.0 has no transfer codings: such a message's framing is faulty (RFC 9112
        // §6.1), whatever else it says. Found by the differential test against hyper.
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncodingInHttp10);
        }
        // Both present is how requests get smuggled: Transfer-Encoding wins, and the
        // connection is not trusted with another message (§6.1).
        if headers.contains_key(header::CONTENT_LENGTH) {
            keep_alive = false;
        }
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        if last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) {
            return Ok((Framing::Chunked, keep_alive));
        }
        return Ok((Framing::UntilClose, false));
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // A list of identical values is allowed (§6.3 rule 5); anything else is an error.
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten();
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => {
                    return Err(HeadError::ContentLength(
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    ));
                }
            }
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str, method: Method) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(wire), &method, &mut Vec::new())
    }

    fn framed(wire: &str, method: Method) -> (Framing, bool) {
        let h = head(wire, method).unwrap().unwrap();
        (h.framing, h.keep_alive)
    }

    #[test]
    fn the_body_is_framed_as_rfc_9112_says() {
        use Framing::*;
        for (wire, method, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
                Method::POST,
                (Length(12), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
                Method::GET,
                (Length(7), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::POST,
                (Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                Method::GET,
                (Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Method::GET,
                (UntilClose, false),
            ),
            // Both: chunked wins and the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                (Chunked, false),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Method::GET, (UntilClose, false)),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Close\r\n\r\n",
                Method::GET,
                (Length(5), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                (Length(5), false),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
                (Empty, true),
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Method::DELETE,
                (Empty, true),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET,
                (Empty, true),
            ),
            ("HTTP/1.1 100 Continue\r\n\r\n", Method::POST, (Empty, true)),
        ] {
            assert_eq!(framed(wire, method), want, "{wire:?}");
        }
    }

    #[test]
    fn content_length_is_passed_on_only_as_the_length_of_the_body_sent() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(h.headers.get(header::CONTENT_LENGTH).is_none());
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.headers[header::CONTENT_LENGTH], "7");
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(h.headers[header::CONTENT_LENGTH], "9");
    }

    #[test]
    fn a_partial_head_leaves_the_buffer_alone_and_a_whole_one_is_removed() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(
            parse(&mut buf, &Method::GET, &mut Vec::new())
                .unwrap()
                .is_none()
        );
        assert_eq!(buf.len(), 27);
        buf.extend_from_slice(b"ngth: 2\r\nX-Empty:\r\nX-Id: abc\r\n\r\nhi");
        let h = parse(&mut buf, &Method::GET, &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["x-id"], "abc");
        assert_eq!(h.headers["x-empty"], "");
        assert_eq!(&buf[..], b"hi", "the body stays in the buffer");
    }

    #[test]
    fn bad_heads_are_refused() {
        for wire in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert!(head(wire, Method::GET).is_err(), "{wire:?} was accepted");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let wire = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(head(&wire, Method::GET).is_err());
    }
}
