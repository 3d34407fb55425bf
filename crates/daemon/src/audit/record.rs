//! Parsing one audit line back into the fields the chain depends on; shared by the writer
//! (resuming a log) and the verifier, so both judge a line by the same rules.

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What is wrong with one line of an audit file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineFault {
    #[error("no trailing newline: an incomplete record (torn by a crash or a failed write)")]
    Torn,
    #[error("longer than {max} bytes")]
    TooLong { max: usize },
    #[error("empty line")]
    Empty,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("field {0} is missing")]
    MissingField(&'static str),
    #[error("unexpected field {0:?}")]
    UnexpectedField(String),
    #[error("field {field}: expected {expected}")]
    BadField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("seq is {found}, expected {expected}")]
    Seq { found: u64, expected: u64 },
    #[error("prev does not match the hash of {previous}")]
    Prev { previous: String },
    #[error("prev is 64 zeros (the start of a log) but seq is {found}, expected 1")]
    GenesisSeq { found: u64 },
    #[error("seq is 1 (the start of a log) but prev is not 64 zeros")]
    GenesisPrev,
}

/// The fields of a record the chain is checked with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub seq: u64,
    pub prev: [u8; 32],
}

/// Check one line (without its newline) against the format in the module docs.
pub(crate) fn parse_line(line: &[u8]) -> Result<Parsed, LineFault> {
    if line.is_empty() {
        return Err(LineFault::Empty);
    }
    let value: Value =
        serde_json::from_slice(line).map_err(|e| LineFault::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(LineFault::NotObject);
    };
    if let Some(extra) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "seq" | "time" | "event" | "prev"))
    {
        return Err(LineFault::UnexpectedField(extra.chars().take(64).collect()));
    }
    let seq = map
        .get("seq")
        .ok_or(LineFault::MissingField("seq"))?
        .as_u64()
        .ok_or(LineFault::BadField {
            field: "seq",
            expected: "an unsigned integer",
        })?;
    let time = map
        .get("time")
        .ok_or(LineFault::MissingField("time"))?
        .as_str()
        .ok_or(LineFault::BadField {
            field: "time",
            expected: "a string",
        })?;
    OffsetDateTime::parse(time, &Rfc3339).map_err(|_| LineFault::BadField {
        field: "time",
        expected: "an RFC 3339 timestamp",
    })?;
    let event = map
        .get("event")
        .ok_or(LineFault::MissingField("event"))?
        .as_object()
        .ok_or(LineFault::BadField {
            field: "event",
            expected: "a JSON object",
        })?;
    match event.get("type") {
        Some(Value::String(t)) if !t.is_empty() => {}
        Some(_) => {
            return Err(LineFault::BadField {
                field: "event.type",
                expected: "a non-empty string",
            });
        }
        None => return Err(LineFault::MissingField("event.type")),
    }
    let prev = map
        .get("prev")
        .ok_or(LineFault::MissingField("prev"))?
        .as_str()
        .ok_or(LineFault::BadField {
            field: "prev",
            expected: "a string",
        })?;
    let prev = parse_hash(prev).ok_or(LineFault::BadField {
        field: "prev",
        expected: "64 lowercase hex digits",
    })?;
    Ok(Parsed { seq, prev })
}

/// 64 lowercase hex digits, exactly as the writer produces them: one canonical spelling, so
/// that two lines that differ only in hex case cannot both claim the same `prev`.
pub(crate) fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}
