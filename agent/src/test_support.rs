//! Shared helpers for unit tests: the vendored real-hardware vectors.

/// Bytes of a file under tests/vectors/ (see tests/vectors/README.md for provenance).
pub fn vector(path: &str) -> Vec<u8> {
    let full = format!("{}/../tests/vectors/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

pub fn vector_text(path: &str) -> String {
    String::from_utf8(vector(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}
