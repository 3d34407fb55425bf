//! The chunked transfer coding (RFC 9112 §7.1) of upstream response bodies, decoded as bytes
//! arrive: payload is handed on as soon as any of it is there, never held back until a whole
//! chunk has come, so an SSE event the model server flushes reaches the client at once.

use bytes::{Bytes, BytesMut};

/// A chunk-size line (with its extensions) longer than this is refused: no honest server
/// needs it, and it would otherwise be unbounded.
const MAX_SIZE_LINE: usize = 4096;
/// Trailer fields are read and dropped (they are not passed on); this bounds them.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("chunk size is not hexadecimal")]
    BadSize,
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    #[error("chunk-size line longer than {MAX_SIZE_LINE} bytes")]
    SizeLineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("a chunk extension holds a control character")]
    BadExtension,
    #[error("trailer section longer than {MAX_TRAILERS} bytes")]
    TrailersTooLong,
}

/// What the decoder made of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Payload bytes, taken from the front of the buffer.
    Data(Bytes),
    /// The buffer holds no more payload yet: read more.
    NeedMore,
    /// The last chunk and the trailer section have been read; the message has ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hexadecimal size: the value so far, whether any digit was seen, the line
    /// length so far.
    Size {
        value: u64,
        digits: bool,
        line: usize,
    },
    /// Whitespace after the size: more of it, an extension or CR may follow.
    SizeWs {
        value: u64,
        line: usize,
    },
    /// `;name=value` extensions up to CR, ignored.
    Extension {
        value: u64,
        line: usize,
    },
    /// CR of the size line seen; LF expected.
    SizeLf {
        value: u64,
    },
    /// Payload bytes still to come in this chunk.
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section: bytes in the current line, bytes in the section so far.
    Trailer {
        line: usize,
        total: usize,
    },
    TrailerLf {
        empty: bool,
        total: usize,
    },
    Done,
    /// Every later call gives the same error: the bytes after it mean nothing.
    Failed(ChunkedError),
}

#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            state: State::Size {
                value: 0,
                digits: false,
                line: 0,
            },
        }
    }
}

impl Decoder {
    /// Consume framing bytes from the front of `buf` until there is payload to hand on, more
    /// input is needed, or the body has ended. Bytes after the end stay in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        self.skip_framing(buf)?;
        match self.state {
            State::Done => Ok(Decoded::Done),
            State::Data(left) if !buf.is_empty() => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                // `take` is at most `left`, so it fits.
                let rest = left - take as u64;
                self.state = if rest == 0 {
                    State::DataCr
                } else {
                    State::Data(rest)
                };
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            _ => Ok(Decoded::NeedMore),
        }
    }

    /// Consume the framing bytes at the front of `buf`, stopping at payload or at the end;
    /// whether the body has ended. After the last piece of payload this tells, without
    /// waiting for another read, that the terminating chunk is already here.
    pub fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<bool, ChunkedError> {
        let mut used = 0;
        while !matches!(self.state, State::Data(_) | State::Done | State::Failed(_)) {
            let Some(&b) = buf.get(used) else { break };
            used += 1;
            self.state = self.step(b).unwrap_or_else(State::Failed);
        }
        let _ = buf.split_to(used);
        match self.state {
            State::Failed(e) => Err(e),
            s => Ok(s == State::Done),
        }
    }

    /// The state after framing byte `b`.
    fn step(&self, b: u8) -> Result<State, ChunkedError> {
        if let State::Size { line, .. } | State::SizeWs { line, .. } | State::Extension { line, .. } =
            self.state
            && line >= MAX_SIZE_LINE
        {
            return Err(ChunkedError::SizeLineTooLong);
        }
        Ok(match self.state {
            State::Size {
                value,
                digits,
                line,
            } => match b {
                b'\r' if digits => State::SizeLf { value },
                b'\n' => return Err(ChunkedError::MissingCrlf),
                b';' if digits => State::Extension {
                    value,
                    line: line + 1,
                },
                b' ' | b'\t' if digits => State::SizeWs {
                    value,
                    line: line + 1,
                },
                _ => {
                    let d = (b as char).to_digit(16).ok_or(ChunkedError::BadSize)?;
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)))
                        .ok_or(ChunkedError::SizeOverflow)?;
                    State::Size {
                        value,
                        digits: true,
                        line: line + 1,
                    }
                }
            },
            State::SizeWs { value, line } => {
                match b {
                    b'\r' => State::SizeLf { value },
                    b';' => State::Extension {
                        value,
                        line: line + 1,
                    },
                    b' ' | b'\t' => State::SizeWs {
                        value,
                        line: line + 1,
                    },
                    b'\n' => return Err(ChunkedError::MissingCrlf),
                    // "1 0": not one size.
                    _ => return Err(ChunkedError::BadSize),
                }
            }
            State::Extension { value, line } => {
                match b {
                    b'\r' => State::SizeLf { value },
                    b'\n' => return Err(ChunkedError::MissingCrlf),
                    // Control characters other than HTAB.
                    0..=0x08 | 0x0a..=0x1f | 0x7f => return Err(ChunkedError::BadExtension),
                    _ => State::Extension {
                        value,
                        line: line + 1,
                    },
                }
            }
            State::SizeLf { value } => match (b, value) {
                (b'\n', 0) => State::Trailer { line: 0, total: 0 },
                (b'\n', n) => State::Data(n),
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size {
                value: 0,
                digits: false,
                line: 0,
            },
            State::DataCr | State::DataLf => return Err(ChunkedError::MissingCrlf),
            State::Trailer { line, total } => {
                if total >= MAX_TRAILERS {
                    return Err(ChunkedError::TrailersTooLong);
                }
                match b {
                    b'\r' => State::TrailerLf {
                        empty: line == 0,
                        total: total + 1,
                    },
                    b'\n' => return Err(ChunkedError::MissingCrlf),
                    _ => State::Trailer {
                        line: line + 1,
                        total: total + 1,
                    },
                }
            }
            State::TrailerLf { empty, total } => match b {
                b'\n' if empty => State::Done,
                b'\n' => State::Trailer { line: 0, total },
                _ => return Err(ChunkedError::MissingCrlf),
            },
            // The caller stops before these consume a byte.
            State::Data(_) | State::Done | State::Failed(_) => self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `wire` in pieces split at `cuts`, collecting payload until Done.
    fn run(wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort_unstable();
        points.push(wire.len());
        let mut next = points.into_iter();
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Done => return Ok((out, buf.to_vec())),
                Decoded::NeedMore => {
                    let Some(to) = next.next() else {
                        panic!("decoder wants more after all {} bytes", wire.len());
                    };
                    buf.extend_from_slice(&wire[fed..to.max(fed)]);
                    fed = to.max(fed);
                }
            }
        }
    }

    fn encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut w = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            w.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            w.extend_from_slice(c);
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(b"0\r\n\r\n");
        w
    }

    #[test]
    fn extensions_and_trailers_are_read_and_dropped() {
        let wire = b"5;name=\"v\"\r\nhello\r\n1 ; x\r\n!\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\nNEXT";
        let (body, rest) = run(wire, &[]).unwrap();
        assert_eq!(body, b"hello!");
        assert_eq!(
            rest, b"NEXT",
            "bytes after the body stay for the next response"
        );
    }

    #[test]
    fn payload_is_handed_on_before_its_chunk_is_complete() {
        let mut d = Decoder::default();
        let mut buf = BytesMut::from(&b"a\r\nhel"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"hel")))
        );
        assert_eq!(d.decode(&mut buf), Ok(Decoded::NeedMore));
        buf.extend_from_slice(b"lo worl");
        assert_eq!(
            d.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"lo worl")))
        );
    }

    #[test]
    fn malformed_framing_is_refused() {
        for (wire, want) in [
            (&b"zz\r\n"[..], ChunkedError::BadSize),
            (b"\r\n", ChunkedError::BadSize),
            (b"1ffffffffffffffff\r\n", ChunkedError::SizeOverflow),
            (b"3\r\nabcX", ChunkedError::MissingCrlf),
            (b"3\r\nabc\rX", ChunkedError::MissingCrlf),
            (b"3\nabc", ChunkedError::MissingCrlf),
            (b"0\r\nT: 1\rX", ChunkedError::MissingCrlf),
            (b"0\r\n\n", ChunkedError::MissingCrlf),
            (b"1 0\r\n", ChunkedError::BadSize),
            (b"1;a\x01b\r\n", ChunkedError::BadExtension),
        ] {
            assert_eq!(
                run(wire, &[]),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut long = b"1;".to_vec();
        long.resize(MAX_SIZE_LINE + 10, b'x');
        assert_eq!(run(&long, &[]), Err(ChunkedError::SizeLineTooLong));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 8 + 1 {
            trailers.extend_from_slice(b"X: 1234\r\n");
        }
        assert_eq!(run(&trailers, &[]), Err(ChunkedError::TrailersTooLong));
    }

    proptest! {
        #[test]
        fn any_split_of_the_wire_gives_the_same_payload(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let wire = encode(&chunks);
            let (body, rest) = run(&wire, &cuts).unwrap();
            prop_assert_eq!(body, chunks.concat());
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn garbage_never_panics(wire in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut d = Decoder::default();
            let mut buf = BytesMut::from(&wire[..]);
            for _ in 0..wire.len() + 2 {
                match d.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => {}
                    _ => break,
                }
            }
        }
    }
}
