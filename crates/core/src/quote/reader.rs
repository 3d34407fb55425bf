//! A bounds-checked little-endian cursor: every read names the field it is for.

use std::ops::Range;

use super::QuoteError;

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` inside the whole quote, so errors and ranges are absolute.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self::with_base(buf, 0)
    }

    pub fn with_base(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    /// Absolute position.
    pub fn pos(&self) -> usize {
        self.base + self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], QuoteError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let out = &self.buf[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(QuoteError::Truncated {
                field,
                offset: self.pos(),
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    /// Skip `n` bytes and return their absolute range.
    pub fn range(&mut self, n: usize, field: &'static str) -> Result<Range<usize>, QuoteError> {
        let start = self.pos();
        self.take(n, field)?;
        Ok(start..start + n)
    }

    /// The bytes of an absolute range previously returned by [`Reader::range`].
    pub fn slice(&self, whole: &'a [u8], r: Range<usize>) -> &'a [u8] {
        whole.get(r).unwrap_or_default()
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, QuoteError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, QuoteError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}
