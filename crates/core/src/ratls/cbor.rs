//! A minimal, strict CBOR (RFC 8949) encoder and decoder for the RA-TLS extensions.
//!
//! We write our own rather than pull in a general CBOR crate because the RA-TLS formats use a
//! tiny subset (unsigned integers, byte and text strings, arrays, text-keyed maps, one tag),
//! and a few dozen lines we can read in full are easier to trust on hostile input than a
//! general decoder. Definite lengths only; every declared length is checked against the input
//! that is left before anything is allocated, nesting depth is bounded, and no input panics.

/// Deeper than any RA-TLS structure (tag > array > bstr is depth 3) with room to spare, and
/// shallow enough that recursion on hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 16;

/// Most entries a container reserves room for before it has read them.
const PREALLOCATE: usize = 64;

/// One CBOR data item of the subset we read and write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Major type 0, encoded in the shortest form.
    Uint(u64),
    /// Major type 0 always encoded 32 bits wide (`0x1A` + 4 bytes): rats-tls reads the
    /// endorsements version that way. Decoding yields [`Value::Uint`].
    Uint32(u32),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Value>),
    /// Text keys only, kept in the order given (callers choose a deterministic order).
    Map(Vec<(String, Value)>),
    Tag(u64, Box<Value>),
}

impl Value {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_uint(&self) -> Option<u64> {
        match self {
            Value::Uint(v) => Some(*v),
            Value::Uint32(v) => Some(u64::from(*v)),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The content of tag `tag`, if this is that tag.
    /// Decode `bytes` and take the item out of tag `tag`; the error names what stood there.
    pub fn decode_tagged(bytes: &[u8], tag: u64) -> Result<Value, String> {
        match decode(bytes).map_err(|e| e.to_string())? {
            Value::Tag(t, inner) if t == tag => Ok(*inner),
            other => Err(format!("a {} where CBOR tag {tag} belongs", other.kind())),
        }
    }

    pub fn untag(&self, tag: u64) -> Option<&Value> {
        match self {
            Value::Tag(t, v) if *t == tag => Some(v),
            _ => None,
        }
    }

    /// The short name of this item's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Uint(_) | Value::Uint32(_) => "unsigned integer",
            Value::Bytes(_) => "byte string",
            Value::Text(_) => "text string",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Tag(..) => "tag",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("CBOR ends early at byte {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated {
        offset: usize,
        what: &'static str,
        needed: u64,
        available: usize,
    },
    #[error("CBOR item at byte {offset}: {detail}")]
    Unsupported { offset: usize, detail: String },
    #[error("CBOR nested deeper than {MAX_DEPTH} levels at byte {offset}")]
    TooDeep { offset: usize },
    #[error("CBOR text string at byte {offset} is not UTF-8")]
    BadText { offset: usize },
    #[error("CBOR map at byte {offset} repeats the key {key:?}")]
    DuplicateKey { offset: usize, key: String },
    #[error("{count} bytes follow the CBOR item (it ends at byte {end})")]
    TrailingBytes { end: usize, count: usize },
}

/// Encode one item.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

fn head(major: u8, arg: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    // Each branch's range makes the narrowing cast exact.
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

fn encode_into(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Uint(v) => head(0, *v, out),
        Value::Uint32(v) => {
            out.push(26);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Bytes(b) => {
            head(2, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Value::Text(t) => {
            head(3, t.len() as u64, out);
            out.extend_from_slice(t.as_bytes());
        }
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for item in items {
                encode_into(item, out);
            }
        }
        Value::Map(entries) => {
            head(5, entries.len() as u64, out);
            for (k, v) in entries {
                head(3, k.len() as u64, out);
                out.extend_from_slice(k.as_bytes());
                encode_into(v, out);
            }
        }
        Value::Tag(tag, inner) => {
            head(6, *tag, out);
            encode_into(inner, out);
        }
    }
}

/// Decode exactly one item that spans all of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
    let mut d = Decoder { bytes, pos: 0 };
    let v = d.item(0)?;
    if d.pos != bytes.len() {
        return Err(CborError::TrailingBytes {
            end: d.pos,
            count: bytes.len() - d.pos,
        });
    }
    Ok(v)
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], CborError> {
        let available = self.remaining();
        let n_usize =
            usize::try_from(n)
                .ok()
                .filter(|n| *n <= available)
                .ok_or(CborError::Truncated {
                    offset: self.pos,
                    what,
                    needed: n,
                    available,
                })?;
        let start = self.pos;
        self.pos += n_usize;
        Ok(&self.bytes[start..self.pos])
    }

    /// The major type and argument of the next item.
    fn head(&mut self) -> Result<(u8, u64, usize), CborError> {
        let offset = self.pos;
        let first = self.take(1, "item head")?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1, "1-byte argument")?[0]),
            25 => be(self.take(2, "2-byte argument")?),
            26 => be(self.take(4, "4-byte argument")?),
            27 => be(self.take(8, "8-byte argument")?),
            31 => {
                return Err(CborError::Unsupported {
                    offset,
                    detail: "indefinite length (only definite lengths are accepted)".into(),
                });
            }
            _ => {
                return Err(CborError::Unsupported {
                    offset,
                    detail: format!("reserved additional information {info}"),
                });
            }
        };
        Ok((major, arg, offset))
    }

    /// A declared element count, bounded by the input left: every element takes at least
    /// one byte (two for a map entry), so a larger count cannot be honest and must not drive
    /// an allocation.
    fn count(&self, n: u64, per_item: u64, offset: usize) -> Result<usize, CborError> {
        let available = self.remaining();
        match n.checked_mul(per_item) {
            Some(need) if need <= available as u64 => Ok(n as usize),
            _ => Err(CborError::Truncated {
                offset,
                what: "the declared number of elements",
                needed: n.saturating_mul(per_item),
                available,
            }),
        }
    }

    fn text(&mut self, len: u64, offset: usize) -> Result<String, CborError> {
        let raw = self.take(len, "text string")?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|_| CborError::BadText { offset })
    }

    fn item(&mut self, depth: usize) -> Result<Value, CborError> {
        if depth >= MAX_DEPTH {
            return Err(CborError::TooDeep { offset: self.pos });
        }
        let (major, arg, offset) = self.head()?;
        match major {
            0 => Ok(Value::Uint(arg)),
            2 => Ok(Value::Bytes(self.take(arg, "byte string")?.to_vec())),
            3 => Ok(Value::Text(self.text(arg, offset)?)),
            4 => {
                let n = self.count(arg, 1, offset)?;
                // `count` bounds `n` by the bytes left, but nested containers would each
                // reserve that much again: reserve a little and let the vector grow.
                let mut items = Vec::with_capacity(n.min(PREALLOCATE));
                for _ in 0..n {
                    items.push(self.item(depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            5 => {
                let n = self.count(arg, 2, offset)?;
                let mut entries: Vec<(String, Value)> = Vec::with_capacity(n.min(PREALLOCATE));
                let mut keys = std::collections::HashSet::new();
                for _ in 0..n {
                    let (kmajor, klen, koffset) = self.head()?;
                    if kmajor != 3 {
                        return Err(CborError::Unsupported {
                            offset: koffset,
                            detail: format!("map key of major type {kmajor} (only text keys)"),
                        });
                    }
                    let key = self.text(klen, koffset)?;
                    if !keys.insert(key.clone()) {
                        return Err(CborError::DuplicateKey {
                            offset: koffset,
                            key,
                        });
                    }
                    let value = self.item(depth + 1)?;
                    entries.push((key, value));
                }
                Ok(Value::Map(entries))
            }
            6 => Ok(Value::Tag(arg, Box::new(self.item(depth + 1)?))),
            other => Err(CborError::Unsupported {
                offset,
                detail: format!(
                    "major type {other} ({}) is not used by RA-TLS",
                    match other {
                        1 => "negative integer",
                        _ => "float or simple value",
                    }
                ),
            }),
        }
    }
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        assert_eq!(encode(&Value::Uint(0)), [0x00]);
        assert_eq!(encode(&Value::Uint(23)), [0x17]);
        assert_eq!(encode(&Value::Uint(24)), [0x18, 0x18]);
        assert_eq!(encode(&Value::Uint(0x100)), [0x19, 0x01, 0x00]);
        assert_eq!(
            encode(&Value::Uint(0x0001_0003)),
            [0x1a, 0x00, 0x01, 0x00, 0x03]
        );
        assert_eq!(encode(&Value::Uint32(1)), [0x1a, 0, 0, 0, 1]);
        assert_eq!(
            encode(&Value::Tag(60000, Box::new(Value::Array(vec![])))),
            [0xd9, 0xea, 0x60, 0x80]
        );
        assert_eq!(
            encode(&Value::Map(vec![("a".into(), Value::Bytes(vec![1]))])),
            [0xa1, 0x61, b'a', 0x41, 0x01]
        );
        // A wide encoding of a small number decodes to the same number.
        assert_eq!(decode(&[0x1a, 0, 0, 0, 1]).unwrap(), Value::Uint(1));
    }

    #[test]
    fn rejects_what_we_do_not_read() {
        for (bytes, needle) in [
            (&[0x5f, 0x41, 0x00, 0xff][..], "indefinite"),
            (&[0x20][..], "negative"),
            (&[0xf5][..], "simple"),
            (&[0x1c][..], "reserved"),
            (&[0x42, 0x00][..], "ends early"),
            (
                &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
                "elements",
            ),
            (&[0xa1, 0x01, 0x01][..], "only text keys"),
            (&[0xa2, 0x61, b'a', 0x00, 0x61, b'a', 0x00][..], "repeats"),
            (&[0x61, 0xff][..], "UTF-8"),
            (&[0x00, 0x00][..], "follow"),
        ] {
            let err = decode(bytes).unwrap_err().to_string();
            assert!(err.contains(needle), "{bytes:02x?}: {err}");
        }
        let deep: Vec<u8> = std::iter::repeat_n(0x81u8, MAX_DEPTH + 1)
            .chain([0x00])
            .collect();
        assert!(matches!(decode(&deep), Err(CborError::TooDeep { .. })));
        let ok: Vec<u8> = std::iter::repeat_n(0x81u8, MAX_DEPTH - 1)
            .chain([0x00])
            .collect();
        assert!(decode(&ok).is_ok());
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(Value::Uint),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            ".{0,12}".prop_map(Value::Text),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner.clone(), 0..5)
                    .prop_map(|m| Value::Map(m.into_iter().collect())),
                (any::<u64>(), inner).prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn round_trips(v in value()) {
            let bytes = encode(&v);
            prop_assert_eq!(decode(&bytes).unwrap(), v);
        }

        #[test]
        fn every_truncation_is_an_error(v in value()) {
            let bytes = encode(&v);
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut]).is_err());
            }
        }
    }
}
