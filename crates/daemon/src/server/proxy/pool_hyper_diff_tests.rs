//! The front door's HTTP/1.1 client (`h1`, through the pool) against hyper's
//! (`hyper::client::conn::http1`) on generated response byte streams: the same bytes, split at
//! the same points, go to both over loopback TCP, and what each makes of them — the status and
//! body it accepted or that it rejected, and whether the connection may carry another request —
//! must agree, except where ours is stricter by design ([`expected_ours`]).
//!
//! Each case runs on a current-thread runtime with the clock paused: a sleep ends only once
//! every task is blocked and the I/O already in the kernel has been seen, so "waits for more
//! bytes forever" is an outcome ([`Outcome::Stalled`]) rather than a timing.

use super::*;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Longer than anything here takes once the bytes are in: on the paused clock it only ends
/// when nothing more can happen.
const QUIET: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A final response whose body ended.
    Response {
        status: u16,
        body: Vec<u8>,
        reusable: bool,
    },
    /// The head or the body was refused (or cut short).
    Rejected,
    /// Still waiting for bytes that never come.
    Stalled,
}

/// One generated response stream.
#[derive(Debug, Clone)]
struct Wire {
    bytes: Vec<u8>,
    /// Where the server splits its writes.
    cuts: Vec<usize>,
    /// The server closes its side after writing.
    close: bool,
    http10: bool,
}

/// The server: read the request head, write `wire` piece by piece, then close or keep the
/// connection open (reading until the client goes).
async fn upstream(wire: Wire) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut b = [0u8; 1024];
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        let mut at = 0;
        for cut in wire.cuts.iter().copied().chain([wire.bytes.len()]) {
            let cut = cut.clamp(at, wire.bytes.len());
            if s.write_all(&wire.bytes[at..cut]).await.is_err() {
                return;
            }
            at = cut;
            tokio::task::yield_now().await;
        }
        if wire.close {
            let _ = s.shutdown().await;
        }
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    addr
}

/// Our client, through the pool, as the front door uses it.
async fn ours(wire: Wire) -> Outcome {
    let addr = upstream(wire).await;
    let pool = Pool::new(
        addr.to_string(),
        Duration::from_secs(5),
        Duration::from_secs(3600),
        4,
        0,
    );
    let req = Request::get("/")
        .header("host", "upstream")
        .body(RequestBody::Full(Bytes::new()))
        .unwrap();
    let resp = match tokio::time::timeout(QUIET, pool.send(req)).await {
        Err(_) => return Outcome::Stalled,
        Ok(Err(_)) => return Outcome::Rejected,
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let body = match tokio::time::timeout(QUIET, resp.into_body().collect()).await {
        Err(_) => return Outcome::Stalled,
        Ok(Err(_)) => return Outcome::Rejected,
        Ok(Ok(b)) => b.to_bytes().to_vec(),
    };
    // Let whatever else the server sent arrive before the pool is asked.
    tokio::time::sleep(QUIET).await;
    let reusable = pool.stack().take().is_some();
    Outcome::Response {
        status,
        body,
        reusable,
    }
}

/// hyper's client connection on the same bytes.
async fn hyper(wire: Wire) -> Outcome {
    let addr = upstream(wire).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return Outcome::Rejected;
    };
    let conn = tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "upstream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = match tokio::time::timeout(QUIET, sender.send_request(req)).await {
        Err(_) => return Outcome::Stalled,
        Ok(Err(_)) => return Outcome::Rejected,
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let body = match tokio::time::timeout(QUIET, resp.into_body().collect()).await {
        Err(_) => return Outcome::Stalled,
        Ok(Err(_)) => return Outcome::Rejected,
        Ok(Ok(b)) => b.to_bytes().to_vec(),
    };
    tokio::time::sleep(QUIET).await;
    // hyper ends the connection's task when it will not carry another request: closed by
    // the server, `close` asked for, or bytes that belong to no request.
    let reusable = !conn.is_finished() && sender.is_ready();
    Outcome::Response {
        status,
        body,
        reusable,
    }
}

fn run(f: impl std::future::Future<Output = Outcome>) -> Outcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

/// What ours must do given what hyper did. Where they differ, ours is stricter by design:
///
/// - an HTTP/1.0 response never leaves its connection for reuse (hyper keeps one that says
///   `Connection: keep-alive`): the front door's upstream speaks HTTP/1.1;
/// - a response with both Transfer-Encoding and Content-Length is read as chunked but its
///   connection is not reused (RFC 9112 §6.1: the message may be an attempt at smuggling);
///   hyper reuses it.
fn expected_ours(wire: &Wire, hyper: &Outcome) -> Outcome {
    match hyper {
        Outcome::Response {
            status,
            body,
            reusable,
        } => {
            let head = head_of(&wire.bytes);
            let both =
                head.contains("\r\ntransfer-encoding:") && head.contains("\r\ncontent-length:");
            Outcome::Response {
                status: *status,
                body: body.clone(),
                reusable: *reusable && !wire.http10 && !both,
            }
        }
        other => other.clone(),
    }
}

/// The head's lines, lower-cased, up to the blank line.
fn head_of(bytes: &[u8]) -> String {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |p| p + 2);
    String::from_utf8_lossy(&bytes[..end]).to_lowercase()
}

/// How the generated body is framed.
#[derive(Debug, Clone)]
enum Framing {
    None,
    Length,
    /// A Content-Length off by this much from the body sent.
    WrongLength(i8),
    LengthTwice,
    LengthList,
    LengthConflict,
    LengthInvalid(&'static str),
    Chunked,
    ChunkedAndLength,
    TransferNotChunked,
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        1 => Just(Framing::None),
        4 => Just(Framing::Length),
        1 => (-3i8..=3).prop_filter("off", |d| *d != 0).prop_map(Framing::WrongLength),
        1 => Just(Framing::LengthTwice),
        1 => Just(Framing::LengthList),
        1 => Just(Framing::LengthConflict),
        1 => prop::sample::select(vec!["abc", "-1", "+5", "", "1 2", "0x10"])
            .prop_map(Framing::LengthInvalid),
        4 => Just(Framing::Chunked),
        1 => Just(Framing::ChunkedAndLength),
        1 => Just(Framing::TransferNotChunked),
    ]
}

/// What follows the response in the stream.
fn trailing() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => Just(Vec::new()),
        1 => Just(b"garbage".to_vec()),
        1 => Just(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()),
        1 => Just(b"\r\n".to_vec()),
    ]
}

fn chunked(body: &[u8], sizes: &[usize], upper: bool, trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let size = if upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        out.extend_from_slice(size.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n");
    if trailer {
        out.extend_from_slice(b"X-Trailer: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

prop_compose! {
    fn wire()(
        status in prop::sample::select(vec![200u16, 201, 204, 304, 404, 503]),
        http10 in prop::bool::weighted(0.15),
        framing in framing(),
        connection in prop::sample::select(vec!["", "", "", "close", "keep-alive", "Close"]),
        body in prop::collection::vec(b'a'..=b'z', 0..40),
        chunk_sizes in prop::collection::vec(1usize..16, 1..4),
        upper in any::<bool>(),
        trailer in prop::bool::weighted(0.2),
        trailing in trailing(),
        close in prop::bool::weighted(0.25),
        cuts in prop::collection::vec(0usize..200, 0..5),
    ) -> Wire {
        let mut head = format!(
            "HTTP/1.{} {status} Reason\r\n",
            if http10 { 0 } else { 1 }
        );
        let len = body.len();
        let mut payload = body.clone();
        match &framing {
            Framing::None => {}
            Framing::Length => head += &format!("Content-Length: {len}\r\n"),
            Framing::WrongLength(d) => {
                let n = (len as i64 + i64::from(*d)).max(0);
                head += &format!("Content-Length: {n}\r\n");
            }
            Framing::LengthTwice => {
                head += &format!("Content-Length: {len}\r\nContent-Length: {len}\r\n");
            }
            Framing::LengthList => head += &format!("Content-Length: {len}, {len}\r\n"),
            Framing::LengthConflict => {
                head += &format!("Content-Length: {len}\r\nContent-Length: {}\r\n", len + 1);
            }
            Framing::LengthInvalid(v) => head += &format!("Content-Length: {v}\r\n"),
            Framing::Chunked => {
                head += "Transfer-Encoding: chunked\r\n";
                payload = chunked(&body, &chunk_sizes, upper, trailer);
            }
            Framing::ChunkedAndLength => {
                head += &format!("Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n");
                payload = chunked(&body, &chunk_sizes, upper, trailer);
            }
            Framing::TransferNotChunked => head += "Transfer-Encoding: gzip\r\n",
        }
        if !connection.is_empty() {
            head += &format!("Connection: {connection}\r\n");
        }
        head += "\r\n";
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&trailing);
        let mut cuts = cuts;
        cuts.sort_unstable();
        Wire { bytes, cuts, close, http10 }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn framing_and_reuse_agree_with_hyper(wire in wire()) {
        let theirs = run(hyper(wire.clone()));
        let mine = run(ours(wire.clone()));
        prop_assert_eq!(
            &mine,
            &expected_ours(&wire, &theirs),
            "hyper: {:?}\nwire: {:?}",
            theirs,
            String::from_utf8_lossy(&wire.bytes)
        );
    }
}
