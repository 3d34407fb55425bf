//! The model server's chunked response body as the front door decodes it, however the bytes
//! are cut into reads: the payload handed on must not depend on where the reads ended.
#![no_main]
#![forbid(unsafe_code)]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tdx_daemon::server::proxy::h1::chunked::{Decoded, Decoder};

/// Decode `reads` in order; the payload and whether the body ended, or None on an error.
fn run<'a>(reads: impl Iterator<Item = &'a [u8]>) -> Option<(Vec<u8>, bool)> {
    let mut d = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for r in reads {
        buf.extend_from_slice(r);
        loop {
            match d.decode(&mut buf).ok()? {
                Decoded::Data(b) => {
                    assert!(!b.is_empty(), "empty Data would spin the body reader");
                    out.extend_from_slice(&b);
                }
                Decoded::NeedMore => break,
                Decoded::Done => return Some((out, true)),
            }
        }
    }
    Some((out, false))
}

fuzz_target!(|data: &[u8]| {
    // First byte: the read size for the split run (1..=256), the rest the body.
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = run(std::iter::once(body));
    let step = usize::from(cut) + 1;
    let pieces = run(body.chunks(step));
    if let (Some((a, true)), Some((b, true))) = (&whole, &pieces) {
        assert_eq!(a, b, "payload depends on how the reads were cut");
    }
});
