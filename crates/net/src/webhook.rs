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
    url: String,
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
        Ok(Self {
            http: crate::http::client().map_err(|e| WebhookError {
                url: url.clone(),
                detail: e,
            })?,
            url,
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
            let request = hyper::Request::post(self.url.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;

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
