//! The model server's response head as the front door's HTTP/1.1 client reads it, whole or
//! arriving in pieces: status, headers, framing (Content-Length, chunked, close-delimited) and
//! keep-alive.
#![no_main]
#![forbid(unsafe_code)]

use bytes::BytesMut;
use hyper::Method;
use libfuzzer_sys::fuzz_target;
use tdx_daemon::server::proxy::h1::response;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let method = if sel & 1 == 0 {
        Method::GET
    } else {
        Method::HEAD
    };
    let mut fields = Vec::new();
    let mut whole = BytesMut::from(rest);
    let once = response::parse(&mut whole, &method, &mut fields);
    // Fed a byte at a time as a slow server sends it, the head must come out the same: the
    // parser is called again on every read.
    let mut buf = BytesMut::new();
    let mut fields = Vec::new();
    let mut got = None;
    for &b in rest.iter().take(1024) {
        buf.extend_from_slice(&[b]);
        match response::parse(&mut buf, &method, &mut fields) {
            Ok(None) => continue,
            Ok(Some(h)) => {
                got = Some(Ok(h));
                break;
            }
            Err(e) => {
                got = Some(Err(e));
                break;
            }
        }
    }
    if let (Ok(Some(a)), Some(Ok(b))) = (&once, &got) {
        assert_eq!(a.status, b.status);
        assert_eq!(a.framing, b.framing);
        assert_eq!(a.keep_alive, b.keep_alive);
    }
});
