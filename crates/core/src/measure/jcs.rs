//! RFC 8785 (JCS) canonical JSON for the values RTMR3 events hold.
//!
//! Events carry strings, integers, booleans, null, arrays and objects. Floating-point numbers
//! are refused rather than canonicalised: their JCS form (ECMAScript shortest round-trip) is
//! easy to get subtly wrong, and no event needs them.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JcsError {
    #[error("{path}: non-integer number {value} (events hold integers only)")]
    Float { path: String, value: String },
    #[error("{path}: integer {value} is outside the range JSON numbers represent exactly")]
    Range { path: String, value: String },
}

/// The canonical bytes of `v`.
pub fn canonicalize(v: &Value) -> Result<String, JcsError> {
    let mut out = String::new();
    write(v, Path::Root, &mut out)?;
    Ok(out)
}

/// Where a value sits, for errors: rendered only when one is reported, since building the
/// text for every element copies each ancestor's key again and again (a hostile event with a
/// long key over a long array made that quadratic).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Index(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => f.write_str("$"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Path::Key(parent, k) => write!(f, "{parent}.{k}"),
        }
    }
}

/// 2^53: beyond it an IEEE double (which JCS numbers are) no longer holds every integer.
const MAX_SAFE: u64 = 9_007_199_254_740_992;

fn write(v: &Value, path: Path<'_>, out: &mut String) -> Result<(), JcsError> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let text = n.to_string();
            if let Some(u) = n.as_u64() {
                if u > MAX_SAFE {
                    return Err(JcsError::Range {
                        path: path.to_string(),
                        value: text,
                    });
                }
                out.push_str(&u.to_string());
            } else if let Some(i) = n.as_i64() {
                if i.unsigned_abs() > MAX_SAFE {
                    return Err(JcsError::Range {
                        path: path.to_string(),
                        value: text,
                    });
                }
                out.push_str(&i.to_string());
            } else {
                return Err(JcsError::Float {
                    path: path.to_string(),
                    value: text,
                });
            }
        }
        // serde_json escapes exactly JCS's set (", \, U+0000..U+001F with the short forms
        // and lowercase \u00xx) and writes everything else as is.
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, Path::Index(&path, i), out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // JCS orders members by the UTF-16 code units of their names.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, val)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(val, Path::Key(&path, k), out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_forms() {
        let v = json!({"b": [1, "x", null, true], "a": {"d": -5, "c": "é\n\u{1}"}, "": 0});
        assert_eq!(
            canonicalize(&v).unwrap(),
            r#"{"":0,"a":{"c":"é\n\u0001","d":-5},"b":[1,"x",null,true]}"#
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // In UTF-8 bytes U+E000 (EE ..) comes before U+10000 (F0 ..); in UTF-16 code units
        // U+10000 (the surrogate D800 ..) comes first, and JCS uses UTF-16.
        let v = json!({"\u{10000}": 1, "\u{e000}": 2});
        assert_eq!(
            canonicalize(&v).unwrap(),
            "{\"\u{10000}\":1,\"\u{e000}\":2}"
        );
    }

    #[test]
    fn floats_and_huge_integers_are_refused() {
        assert!(matches!(
            canonicalize(&json!({"a": [1.5]})),
            Err(JcsError::Float { path, .. }) if path == "$.a[0]"
        ));
        assert!(canonicalize(&json!(u64::MAX)).is_err());
        assert!(canonicalize(&json!(9_007_199_254_740_992u64)).is_ok());
    }
}
