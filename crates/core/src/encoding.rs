//! Small shared encodings: lowercase hex for digests, standard base64 for blobs.

use base64::Engine as _;

/// Lowercase hex, the form every digest takes in our JSON and reports.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Standard base64 (with padding), the form every binary blob takes in our JSON.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn from_b64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// Decode hex text that may carry a `0x` prefix and any whitespace (line breaks included).
pub fn from_hex_loose(text: &str) -> Result<Vec<u8>, ::hex::FromHexError> {
    let compact: String = text.split_whitespace().collect();
    let digits = compact
        .strip_prefix("0x")
        .or_else(|| compact.strip_prefix("0X"))
        .unwrap_or(&compact);
    ::hex::decode(digits)
}

/// Decode exactly `N` bytes of hex.
pub fn hex_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let bytes = from_hex_loose(text).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, expected {N}", b.len()))
}
