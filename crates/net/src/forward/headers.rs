//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a proxy must not
//! pass them on, including any header the `Connection` header itself names.

use axum::http::HeaderMap;
use axum::http::header::{self, HeaderName};

const FIXED: usize = 8;

/// Headers that never cross a proxy, whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; FIXED] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Remove hop-by-hop headers and those listed in `Connection`, plus `Proxy-Connection`,
/// which old clients still send.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present, then a removal for each one found, rather than a
    // hashed removal for every name that might be there; and no allocation unless
    // `Connection` names some other header. This runs twice per proxied request.
    let is_fixed = |k: &HeaderName| HOP_BY_HOP.contains(k) || k.as_str() == "proxy-connection";
    let mut fixed: [Option<HeaderName>; FIXED + 1] = Default::default();
    // `keys` yields each name once, so the fixed names found fit.
    for (slot, k) in fixed.iter_mut().zip(headers.keys().filter(|k| is_fixed(k))) {
        *slot = Some(k.clone());
    }
    if fixed[0].is_none() {
        return;
    }
    // Names listed in `Connection` are matched against the names present, so no name is
    // built from what the peer sent.
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if let Some(k) = headers
                .keys()
                .find(|k| !is_fixed(k) && k.as_str().as_bytes().eq_ignore_ascii_case(token))
            {
                listed.push(k.clone());
            }
        }
    }
    for name in fixed.iter().flatten().chain(&listed) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("x-secret-hop", "1"),
            ("content-type", "application/json"),
            ("authorization", "Bearer k"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["authorization", "content-type"]);
    }

    #[test]
    fn junk_in_connection_is_ignored() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_bytes(b"\xff, ,,").unwrap());
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key("x-kept"));
        assert!(!h.contains_key("connection"));
    }
}
