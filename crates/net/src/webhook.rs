//! Webhooks: a JSON event POSTed to a configured URL, signed with HMAC-SHA256 over the exact
//! body (header `X-Tdx-Agent-Signature: sha256=<hex>`), retried with backoff on failure.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use sha2::{Digest as _, Sha256};

pub const SIGNATURE_HEADER: &str = "x-tdx-agent-signature";

/// HMAC-SHA256 (RFC 2104): a few lines over `sha2` rather than another crate.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// `sha256=<hex>` of `body` under `secret`, as the header carries it.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, body)))
}

pub struct Webhook {
    /// The URL as configured: what errors and logs name.
    url: String,
    /// Where requests go: `url`, but plain `http://localhost` as `http://127.0.0.1`
    /// ([`Webhook::new`]).
    request_url: String,
    /// The `Host` header `url` gives, sent where `request_url` names another host.
    host: Option<String>,
    secret: Vec<u8>,
    http: crate::http::Https,
    /// Attempts in all (the first and the retries), and the first backoff (doubled each time).
    attempts: u32,
    backoff: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("webhook {url}: {detail}")]
pub struct WebhookError {
    pub url: String,
    pub detail: String,
}

impl Webhook {
    pub fn new(url: &str, secret: Vec<u8>) -> Result<Self, WebhookError> {
        let err = |detail: String| WebhookError {
            url: url.to_string(),
            detail,
        };
        let url = crate::http::base_url(url).map_err(err)?;
        if secret.len() < 16 {
            return Err(err("the secret must be at least 16 bytes".into()));
        }
        let (request_url, host) = connect_to(&url).map_err(err)?;
        Ok(Self {
            http: crate::http::client().map_err(|e| WebhookError {
                url: url.clone(),
                detail: e,
            })?,
            url,
            request_url,
            host,
            secret,
            attempts: 4,
            backoff: Duration::from_millis(500),
        })
    }

    /// POST `event` (its JSON text is what is signed); retried on a failure or a non-2xx
    /// answer, with backoff. Returns the final status.
    pub async fn send(&self, event: &serde_json::Value) -> Result<u16, WebhookError> {
        let body = event.to_string();
        let sig = signature(&self.secret, body.as_bytes());
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let mut request = hyper::Request::post(self.request_url.as_str());
            if let Some(host) = &self.host {
                request = request.header(hyper::header::HOST, host.as_str());
            }
            let request = request
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, sig.as_str())
                .body(Full::new(Bytes::from(body.clone())))
                .map_err(|e| WebhookError {
                    url: self.url.clone(),
                    detail: e.to_string(),
                })?;
            match crate::http::send(&self.http, request, 64 << 10).await {
                Ok(a) if (200..300).contains(&a.status) => return Ok(a.status),
                Ok(a) => last = format!("HTTP {}", a.status),
                Err(e) => last = e,
            }
            if attempt < self.attempts {
                tracing::warn!(url = %self.url, attempt, error = %last, "webhook failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        Err(WebhookError {
            url: self.url.clone(),
            detail: format!("{} attempts failed, the last with {last}", self.attempts),
        })
    }
}

/// The URL to request for `url`, and the `Host` header to send with it when that is not
/// `url`'s own. Plain `http://` is allowed to this machine only (the watch config's rule)
/// because the events then never leave it; `localhost` is connected to as 127.0.0.1 rather
/// than asking the resolver, which DNS answers where /etc/hosts has no line for it and could
/// send the unencrypted events anywhere (`crate::http::is_loopback_host`). Over `https://` the
/// certificate names the receiver, so the name is resolved as usual.
fn connect_to(url: &str) -> Result<(String, Option<String>), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().unwrap_or_default();
    if uri.scheme_str() != Some("http") || !host.eq_ignore_ascii_case("localhost") {
        return Ok((url.to_string(), None));
    }
    let port = uri.port_u16();
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    let header = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok((
        format!("http://127.0.0.1:{}{path}", port.unwrap_or(80)),
        Some(header),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_http_to_localhost_goes_to_127_0_0_1_under_its_own_host_name() {
        let hook = |url: &str| Webhook::new(url, vec![7; 16]).unwrap();
        let w = hook("http://localhost:8080/hook?x=1");
        assert_eq!(w.request_url, "http://127.0.0.1:8080/hook?x=1");
        assert_eq!(w.host.as_deref(), Some("localhost:8080"));
        assert_eq!(
            w.url, "http://localhost:8080/hook?x=1",
            "errors name the URL given"
        );
        let w = hook("http://LocalHost/");
        assert_eq!(w.request_url, "http://127.0.0.1:80/");
        assert_eq!(w.host.as_deref(), Some("LocalHost"));
        // Addresses, other names, and https (whose certificate names the receiver) as given.
        for url in [
            "http://127.0.0.1:9/hook",
            "http://[::1]:9/hook",
            "https://localhost:9/hook",
            "https://alerts.example/tdx",
        ] {
            let w = hook(url);
            assert_eq!((w.request_url.as_str(), w.host.as_deref()), (url, None));
        }
    }

    #[tokio::test]
    async fn an_event_to_localhost_arrives_at_127_0_0_1_with_its_host_header() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the request's head");
                head.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let w = Webhook::new(&format!("http://localhost:{port}/hook"), vec![7; 16]).unwrap();
        assert_eq!(w.send(&serde_json::json!({"x": 1})).await.unwrap(), 204);
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /hook http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nhost: localhost:{port}\r\n")),
            "{head}"
        );
        assert_eq!(head.matches("\r\nhost:").count(), 1, "{head}");
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 1, 2 and 6 (a key longer than the block).
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
