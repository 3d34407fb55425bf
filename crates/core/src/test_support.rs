//! Shared helpers for tests: the vendored real-hardware vectors (tests/vectors/README.md).
//! Crates that test against them include this file by path.

use std::path::PathBuf;

/// The repository's tests/vectors/, found above the crate being tested.
fn vectors_dir() -> PathBuf {
    let start = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    start
        .ancestors()
        .map(|d| d.join("tests/vectors"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no tests/vectors above {}", start.display()))
}

/// Bytes of a file under tests/vectors/ (see tests/vectors/README.md for provenance).
pub fn vector(path: &str) -> Vec<u8> {
    let full = vectors_dir().join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[allow(dead_code)] // not every crate that includes this file reads text vectors
pub fn vector_text(path: &str) -> String {
    String::from_utf8(vector(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}
