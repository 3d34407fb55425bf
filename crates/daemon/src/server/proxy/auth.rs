//! Optional API keys for the model routes: the config holds only their SHA-256, and a
//! presented key is compared against every configured hash without early exit.

use axum::http::{HeaderMap, header};
use sha2::{Digest as _, Sha256};

use crate::config::ApiKeyHash;

/// Why a request carries no acceptable key; the message goes to the client.
pub fn check(headers: &HeaderMap, keys: &[ApiKeyHash]) -> Result<(), &'static str> {
    if keys.is_empty() {
        return Ok(());
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err("this endpoint needs an API key: send `Authorization: Bearer KEY`");
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or("the Authorization header is not `Bearer KEY`")?;
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    // Hashes of secrets, but still: compare all of them, each in full.
    let mut found = false;
    for k in keys {
        let diff =
            k.0.iter()
                .zip(hash.iter())
                .fold(0u8, |d, (a, b)| d | (a ^ b));
        found |= diff == 0;
    }
    if found {
        Ok(())
    } else {
        Err("the API key is not accepted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(a));
        }
        h
    }

    #[test]
    fn keys_are_checked_by_hash() {
        let keys = [
            ApiKeyHash(Sha256::digest(b"first").into()),
            ApiKeyHash(Sha256::digest(b"s3cret").into()),
        ];
        assert!(check(&headers(Some("Bearer s3cret")), &keys).is_ok());
        assert!(check(&headers(Some("Bearer first")), &keys).is_ok());
        assert!(check(&headers(Some("Bearer wrong")), &keys).is_err());
        assert!(check(&headers(Some("Basic czNjcmV0")), &keys).is_err());
        assert!(check(&headers(None), &keys).is_err());
        // No keys configured: the attestation is the only gate.
        assert!(check(&headers(None), &[]).is_ok());
    }
}
