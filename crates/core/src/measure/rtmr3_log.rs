//! The RTMR3 event log's format and replay: events, their digests and the lines a client
//! receives. The agent's file of this boot's log is `tdx_tee::rtmr3_log`.
//!
//! File: a header line `{"boot_id":"..."}`, then one line per event:
//! `{"seq":N,"rtmr":3,"digest":"<hex SHA-384 of the event's JCS bytes>","event":{"type":...,"data":{...}}}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha384};

use super::jcs;

#[derive(Debug, thiserror::Error)]
pub enum Rtmr3LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {detail}")]
    Malformed {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("event: {0}")]
    Event(String),
}

/// Longest event `type`, in bytes.
pub const MAX_TYPE_BYTES: usize = 64;

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One measured event: `{"type": ..., "data": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
}

impl Event {
    /// The 48 bytes extended into RTMR3: SHA-384 of the event's canonical (JCS) bytes.
    pub fn digest(&self) -> Result<[u8; 48], Rtmr3LogError> {
        // Bytes, not characters: the bound is on what is stored and hashed, and a byte count
        // cannot be stretched fourfold with wide characters.
        if self.kind.is_empty() || self.kind.len() > MAX_TYPE_BYTES {
            return Err(Rtmr3LogError::Event(format!(
                "type must be 1..={MAX_TYPE_BYTES} bytes of UTF-8, got {} bytes",
                self.kind.len()
            )));
        }
        // An object is what docs/formats.md §11 promises and what a policy pin matches as a
        // subset; any other value could never match a pin, so it is refused on both sides.
        if !self.data.is_object() {
            return Err(Rtmr3LogError::Event(format!(
                "data must be a JSON object, got {}",
                json_kind(&self.data)
            )));
        }
        let v = serde_json::to_value(self).map_err(|e| Rtmr3LogError::Event(e.to_string()))?;
        let canonical = jcs::canonicalize(&v).map_err(|e| Rtmr3LogError::Event(e.to_string()))?;
        Ok(Sha384::digest(canonical.as_bytes()).into())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    pub seq: u64,
    pub rtmr: u8,
    pub digest: String,
    pub event: Event,
}

/// `RTMR_new = SHA-384(RTMR_old || digest)` over `digests`, from zero.
pub fn replay<'a>(digests: impl IntoIterator<Item = &'a [u8; 48]>) -> [u8; 48] {
    let mut r = [0u8; 48];
    for d in digests {
        let mut h = Sha384::new();
        h.update(r);
        h.update(d);
        r = h.finalize().into();
    }
    r
}

/// Parse event lines (the log without its header, as served to clients), checking that the
/// sequence numbers count from 1 and each digest is its event's. `first_line` numbers the
/// first line in errors, which are `(line number, what is wrong)`.
pub fn parse_lines<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    first_line: usize,
) -> Result<Vec<LogLine>, (usize, String)> {
    let mut parsed: Vec<LogLine> = Vec::new();
    for (i, l) in lines.into_iter().enumerate() {
        let n = first_line + i;
        let line: LogLine = serde_json::from_str(l).map_err(|e| (n, e.to_string()))?;
        let expect = parsed.len() as u64 + 1;
        let digest = line.event.digest().map_err(|e| (n, e.to_string()))?;
        if line.seq != expect || line.rtmr != 3 || line.digest != hex::encode(digest) {
            return Err((
                n,
                format!(
                    "expected seq {expect}, rtmr 3 and digest {} of its event",
                    hex::encode(digest)
                ),
            ));
        }
        parsed.push(line);
    }
    Ok(parsed)
}

/// The digests of `lines` replayed from zero: what RTMR3 holds if exactly these were extended.
pub fn replay_lines(lines: &[LogLine]) -> Result<[u8; 48], Rtmr3LogError> {
    let digests: Result<Vec<[u8; 48]>, _> = lines.iter().map(|l| l.event.digest()).collect();
    Ok(replay(digests?.iter()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: &str, data: Value) -> Event {
        Event {
            kind: kind.into(),
            data,
        }
    }

    #[test]
    fn the_type_is_bounded_in_bytes() {
        assert!(ev(&"a".repeat(64), json!({})).digest().is_ok());
        let err = ev(&"a".repeat(65), json!({})).digest().unwrap_err();
        assert!(err.to_string().contains("1..=64 bytes"), "{err}");
        assert!(ev("", json!({})).digest().is_err());
        // 22 characters, 66 bytes: over the limit though far under 64 characters.
        let wide = "模".repeat(22);
        assert_eq!(wide.chars().count(), 22);
        let err = ev(&wide, json!({})).digest().unwrap_err();
        assert!(err.to_string().contains("got 66 bytes"), "{err}");
    }

    #[test]
    fn data_must_be_an_object() {
        assert!(ev("t", json!({"a": [1, "x", null]})).digest().is_ok());
        for (data, named) in [
            (json!([1]), "an array"),
            (json!("x"), "a string"),
            (json!(1), "a number"),
            (json!(true), "a boolean"),
            (Value::Null, "null"),
        ] {
            let err = ev("t", data).digest().unwrap_err().to_string();
            assert!(
                err.contains("data must be a JSON object") && err.contains(named),
                "{err}"
            );
        }
        // A client refuses such a line in a served log too.
        let line = r#"{"seq":1,"rtmr":3,"digest":"00","event":{"type":"t","data":[1]}}"#;
        let (n, detail) = parse_lines([line], 1).unwrap_err();
        assert_eq!(n, 1);
        assert!(detail.contains("JSON object"), "{detail}");
    }
}
