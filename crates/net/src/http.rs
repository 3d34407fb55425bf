//! The HTTP(S) client the collateral fetchers share (PCCS, NVIDIA's RIM service and OCSP
//! responder): rustls with ring and the webpki roots, a timeout on the answer and on its body,
//! and a bound on the body's size, so a slow or hostile service cannot hang or exhaust us.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type Https = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A service root URL without its trailing slash, if it is `http(s)://HOST[:PORT][/path]`.
pub(crate) fn base_url(url: &str) -> Result<String, String> {
    let base = url.trim_end_matches('/').to_string();
    let uri: hyper::Uri = base.parse().map_err(|e| format!("{e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err("expected http://HOST[:PORT] or https://HOST[:PORT]".into());
    }
    Ok(base)
}

pub(crate) fn client() -> Result<Https, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(|e| format!("TLS setup: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

pub(crate) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Send `request` and read the whole answer (at most `max_body` bytes). The error is the
/// reason, for the caller to wrap with the URL.
pub(crate) async fn send(
    http: &Https,
    request: hyper::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Answer, String> {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, http.request(request))
        .await
        .map_err(|_| format!("no response within {}s", REQUEST_TIMEOUT.as_secs()))?
        .map_err(|e| error_chain(&e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(
        REQUEST_TIMEOUT,
        Limited::new(response.into_body(), max_body).collect(),
    )
    .await
    .map_err(|_| "body did not arrive in time".to_string())?
    .map_err(|e| format!("reading body: {e}"))?
    .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// `e` and every error under it, `outer: inner: ...`: hyper's own message names only the
/// layer (`http2 error`, `client error (Connect)`); the cause is in its sources. A source
/// whose text the message already shows is left out rather than repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Whether a URL's host (as `Uri::host` gives it, IPv6 in brackets) is this machine: a
/// loopback address or `localhost`. Other names that resolve to loopback do not count:
/// resolution is the host's to answer. A caller that connects must not resolve `localhost`
/// either (connect to 127.0.0.1), for the same reason.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_error_chain_names_the_error_and_every_cause_once() {
        let e = Layer(
            "http2 error",
            Some(Box::new(Layer(
                "connection error: frame with invalid size",
                Some(Box::new(Layer("frame with invalid size", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "http2 error: connection error: frame with invalid size"
        );
        assert_eq!(error_chain(&Layer("closed", None)), "closed");
    }
}
