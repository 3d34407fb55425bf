//! A small HTTP/1.1 client for the front door's one upstream, run inside the task of the
//! request it carries.
//!
//! hyper's client drives each connection from a task of its own: the request, the response
//! head and every piece of the body cross channels between that task and the request's, and
//! each crossing is a wake-up. On the front door's hot path that was the largest share of the
//! CPU per request left above nginx's (docs/benchmarks.md, session 5). Here the request's task
//! writes the request and reads the response itself, and the response body reads the socket
//! only when the client's side asks for more, which keeps backpressure end to end.
//!
//! It speaks only what the front door needs: one request at a time per connection (no
//! pipelining), no upgrades, responses framed by Content-Length, chunked coding or close.

pub mod body;
pub mod chunked;
pub mod request;
pub mod response;

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

pub use body::Reader;
pub use response::{Framing, Head};

use super::body::BoxError;
use chunked::ChunkedError;
use response::HeadError;

/// A response head larger than this is refused (hyper's client allowed about 400 KiB; no model
/// server sends more than a few hundred bytes).
pub const MAX_HEAD: usize = 64 * 1024;
/// Reads ask for at least this much room.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("the connection closed before a response arrived")]
    ClosedBeforeHead,
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("the server switched protocols (101), which was never asked for")]
    Upgrade,
    #[error("reading the client's request body")]
    RequestBody(#[source] BoxError),
    #[error("the connection closed before the end of the response body")]
    Truncated,
    #[error("no response head within {0:?} of the end of the request")]
    HeaderTimeout(Duration),
    #[error("the server took none of the request for {0:?}")]
    WriteStalled(Duration),
    #[error("chunked response body: {0}")]
    Chunked(#[from] ChunkedError),
}

/// A streamed request body that did not match its `Content-Length`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body does not match its Content-Length of {declared} bytes ({sent} bytes seen)"
)]
struct LengthMismatch {
    declared: u64,
    sent: u64,
}

impl Error {
    /// Nothing of the request reached the server: it may be sent again elsewhere.
    pub fn unsent(&self) -> bool {
        matches!(self, Error::Write(_))
    }
}

/// A request body, as the front door hands it over.
pub enum RequestBody {
    /// Already read whole (or empty): written together with the head, and sent again as is
    /// if a kept-alive connection turns out to have been closed.
    Full(Bytes),
    /// Streamed from the client as it arrives: with its declared length passed on, or in
    /// chunked coding when there is none.
    Stream {
        body: axum::body::Body,
        length: Option<u64>,
    },
}

impl RequestBody {
    pub fn is_full(&self) -> bool {
        matches!(self, RequestBody::Full(_))
    }
}

/// One connection to the upstream, and the bytes read from it that no response has used yet.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The request head being written; kept so that a request allocates none of its own.
    out: BytesMut,
    /// Scratch space for parsing response heads.
    fields: Vec<response::Field>,
}

/// A write to the server, failing when it takes none of it for `stall`. A single write of
/// more than the socket buffer holds is bounded as a whole: the head and a small body go in
/// one write, and a streamed body's frames are each at most what the client sent at once.
async fn written(
    stall: Option<Duration>,
    write: impl std::future::Future<Output = io::Result<()>>,
) -> Result<(), Error> {
    match stall {
        None => write.await.map_err(Error::Write),
        Some(t) => tokio::time::timeout(t, write)
            .await
            .map_err(|_| Error::WriteStalled(t))?
            .map_err(Error::Write),
    }
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            fields: Vec::new(),
        }
    }

    /// Whether an idle connection can carry another request: the server has neither closed
    /// it nor sent anything unasked. No system call unless the socket has turned readable.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        // Only the readiness the runtime already recorded is looked at; the no-op waker is
        // replaced by the request's own on its first read. Unconstrained: with the task's
        // cooperative budget spent, the check would say "not ready" without looking.
        let mut cx = Context::from_waker(Waker::noop());
        let ready = std::pin::pin!(tokio::task::unconstrained(
            self.io.ready(tokio::io::Interest::READABLE)
        ))
        .poll(&mut cx);
        match ready {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(r)) if r.is_read_closed() => false,
            Poll::Ready(Ok(_)) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Send a request and read the head of its final response (interim 1xx ones are skipped).
    /// The body stays on the connection, for a [`Reader`]. `upstream_timeout` bounds only
    /// the server: each write it takes no byte of, and the wait for the head once the whole
    /// request is written. How long the client takes to upload its body is not the server's
    /// delay (a stalled upload is cut by the body's own idle timeout).
    pub async fn send(
        &mut self,
        parts: &Parts,
        body: &mut RequestBody,
        upstream_timeout: Option<Duration>,
    ) -> Result<Head, Error> {
        self.write_request(parts, body, upstream_timeout).await?;
        let head = async {
            loop {
                let head = self.read_head(&parts.method).await?;
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Error::Upgrade);
                }
                if !head.status.is_informational() {
                    return Ok(head);
                }
            }
        };
        match upstream_timeout {
            None => head.await,
            Some(t) => tokio::time::timeout(t, head)
                .await
                .map_err(|_| Error::HeaderTimeout(t))?,
        }
    }

    /// Write the head (encoded in the connection's own buffer) and the body.
    async fn write_request(
        &mut self,
        parts: &Parts,
        body: &mut RequestBody,
        stall: Option<Duration>,
    ) -> Result<(), Error> {
        self.out.clear();
        match body {
            RequestBody::Full(bytes) => {
                let length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                request::encode(parts, request::Framing::Length(length), &mut self.out);
                // One write for head and body: a chat request is a single segment.
                self.out.extend_from_slice(bytes);
                written(stall, self.io.write_all(&self.out)).await?;
            }
            RequestBody::Stream { body, length } => {
                let framing = length.map_or(request::Framing::Chunked, request::Framing::Length);
                request::encode(parts, framing, &mut self.out);
                written(stall, self.io.write_all(&self.out)).await?;
                // All of the body goes before the response is read. A server that answers
                // early and stops reading stalls this until `stall` passes with no byte
                // taken; vLLM reads the whole request first.
                self.write_body(body, *length, stall).await?;
            }
        }
        Ok(())
    }

    /// Stream the body: as it is when `length` was declared (and held to it, so that a body
    /// longer or shorter than declared can never be read by the server as the start of
    /// another request), chunked otherwise.
    async fn write_body(
        &mut self,
        body: &mut axum::body::Body,
        length: Option<u64>,
        stall: Option<Duration>,
    ) -> Result<(), Error> {
        let mut sent: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::RequestBody(e.into_inner()))?;
            // Trailers are not passed on.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            sent = sent.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
            match length {
                Some(declared) if sent > declared => {
                    return Err(Error::RequestBody(Box::new(LengthMismatch {
                        declared,
                        sent,
                    })));
                }
                Some(_) => written(stall, self.io.write_all(&data)).await?,
                None => {
                    let size = Bytes::from(format!("{:x}\r\n", data.len()));
                    let mut piece = size.chain(data).chain(&b"\r\n"[..]);
                    written(stall, self.io.write_all_buf(&mut piece)).await?;
                }
            }
        }
        match length {
            Some(declared) if sent != declared => {
                Err(Error::RequestBody(Box::new(LengthMismatch {
                    declared,
                    sent,
                })))
            }
            Some(_) => Ok(()),
            None => written(stall, self.io.write_all(b"0\r\n\r\n")).await,
        }
    }

    async fn read_head(&mut self, method: &Method) -> Result<Head, Error> {
        // How far the buffer was searched for the blank line that ends a head. The first
        // try parses at once (a head nearly always comes whole in one read); after that, a
        // head that trickles in is parsed again only once that line may have arrived, not on
        // every read (byte by byte up to the limit would otherwise be quadratic).
        let mut searched: Option<usize> = None;
        loop {
            let may_end = match searched {
                None => !self.buf.is_empty(),
                Some(n) => self.buf.get(n.saturating_sub(2)..).is_some_and(ends_a_head),
            };
            if may_end && let Some(head) = response::parse(&mut self.buf, method, &mut self.fields)?
            {
                return Ok(head);
            }
            // Nothing is searched (or parsed) until some bytes have come.
            if !self.buf.is_empty() {
                searched = Some(self.buf.len());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Error::HeadTooLarge);
            }
            let n = std::future::poll_fn(|cx| self.poll_read(cx))
                .await
                .map_err(Error::Read)?;
            if n == 0 {
                return Err(Error::ClosedBeforeHead);
            }
        }
    }

    /// Read what the socket has into the buffer; 0 means the server closed the connection.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// Whether `bytes` holds an empty line (the end of a head), with CRLF or bare LF endings.
fn ends_a_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use hyper::body::Frame;
    use std::collections::VecDeque;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;

    /// What the scripted server does with each request it reads.
    enum Step {
        Answer(&'static [u8]),
        AnswerAndClose(&'static [u8]),
        /// Hang up without answering.
        Close,
    }

    /// A server on one connection at a time that reads whole requests and follows `steps`;
    /// each request it read comes out of the returned channel, byte for byte.
    async fn scripted(
        steps: Vec<Step>,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut steps = steps.into_iter();
            while let Ok((mut s, _)) = listener.accept().await {
                let mut got = Vec::new();
                while let Some(request) = read_request(&mut s, &mut got).await {
                    let _ = seen.send(request);
                    match steps.next() {
                        Some(Step::Answer(a)) => s.write_all(a).await.unwrap(),
                        Some(Step::AnswerAndClose(a)) => {
                            s.write_all(a).await.unwrap();
                            break;
                        }
                        Some(Step::Close) | None => break,
                    }
                }
            }
        });
        (addr, rx)
    }

    /// One whole request (head, then a Content-Length or chunked body) from `s`.
    async fn read_request(s: &mut TcpStream, got: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.parse::<usize>().ok());
                let whole = match length {
                    Some(n) => (got.len() >= end + 4 + n).then_some(end + 4 + n),
                    None if head.contains("transfer-encoding: chunked") => got
                        .windows(5)
                        .position(|w| w == b"0\r\n\r\n")
                        .map(|p| p + 5),
                    None => Some(end + 4),
                };
                if let Some(n) = whole {
                    return Some(got.drain(..n).collect());
                }
            }
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&b[..n]);
        }
    }

    fn parts(method: Method, path: &str) -> Parts {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    async fn body(conn: &mut Conn, head: &Head) -> Result<Vec<u8>, Error> {
        let mut reader = Reader::new(head.framing);
        let mut out = Vec::new();
        while let Some(b) = std::future::poll_fn(|cx| reader.poll_data(conn, cx)).await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// A connection to `addr` and the answer to `GET /` on it.
    async fn get(addr: std::net::SocketAddr) -> (Conn, Result<Head, Error>) {
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let mut empty = RequestBody::Full(Bytes::new());
        let head = conn.send(&parts(Method::GET, "/"), &mut empty, None).await;
        (conn, head)
    }

    /// A client body that yields one frame per piece, each ready at once.
    struct Pieces(VecDeque<Bytes>);

    impl Pieces {
        fn of(pieces: &[&'static [u8]]) -> Self {
            Pieces(pieces.iter().map(|p| Bytes::from_static(p)).collect())
        }
    }

    impl hyper::body::Body for Pieces {
        type Data = Bytes;
        type Error = io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|p| Ok(Frame::data(p))))
        }
    }

    #[tokio::test]
    async fn one_connection_carries_requests_one_after_another() {
        let (addr, mut seen) = scripted(vec![
            Step::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            Step::Answer(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            ),
        ])
        .await;
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let mut full = RequestBody::Full(Bytes::from_static(b"{\"a\":1}"));
        let head = conn
            .send(&parts(Method::POST, "/v1/x"), &mut full, None)
            .await
            .unwrap();
        assert_eq!((head.status, head.keep_alive), (StatusCode::OK, true));
        assert_eq!(body(&mut conn, &head).await.unwrap(), b"hello");
        assert_eq!(
            seen.recv().await.unwrap(),
            b"POST /v1/x HTTP/1.1\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
        assert!(conn.is_reusable());

        let mut empty = RequestBody::Full(Bytes::new());
        let head = conn
            .send(&parts(Method::GET, "/y"), &mut empty, None)
            .await
            .unwrap();
        assert_eq!(head.status, StatusCode::CREATED, "the 100 was skipped");
        assert_eq!(body(&mut conn, &head).await.unwrap(), b"abcde");
        assert_eq!(seen.recv().await.unwrap(), b"GET /y HTTP/1.1\r\n\r\n");
        assert!(conn.is_reusable());
    }

    #[tokio::test]
    async fn a_streamed_body_of_unknown_length_goes_chunked() {
        let (addr, mut seen) = scripted(vec![Step::Answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )])
        .await;
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let pieces = Pieces::of(&[b"ab", b"", b"cde"]);
        let mut body = RequestBody::Stream {
            body: axum::body::Body::new(pieces),
            length: None,
        };
        let head = conn
            .send(&parts(Method::POST, "/s"), &mut body, None)
            .await
            .unwrap();
        assert_eq!(head.framing, Framing::Length(0));
        assert_eq!(
            seen.recv().await.unwrap(),
            b"POST /s HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
        );
    }

    /// The old bound on a server that stops reading was the response-header timeout around
    /// the whole exchange; now that the wait for the head starts after the body, a write the
    /// server takes nothing of for that long fails on its own.
    #[tokio::test]
    async fn a_server_that_stops_reading_the_body_is_let_go() {
        let addr = one_connection(|s| async move {
            // Hold the connection open, reading nothing more.
            let _keep = s;
            std::future::pending::<()>().await;
        })
        .await;
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let mut body = RequestBody::Stream {
            // 256 frames of 1 MiB (one buffer, shared).
            body: axum::body::Body::new(Pieces(
                std::iter::repeat_n(Bytes::from(vec![b'x'; 1 << 20]), 256).collect(),
            )),
            length: None,
        };
        let post = parts(Method::POST, "/");
        let sent = conn.send(&post, &mut body, Some(Duration::from_millis(300)));
        let err = tokio::time::timeout(Duration::from_secs(30), sent)
            .await
            .expect("the write never gave up")
            .unwrap_err();
        assert!(matches!(err, Error::WriteStalled(_)), "{err}");
    }

    #[tokio::test]
    async fn a_streamed_body_is_held_to_its_declared_length() {
        for (pieces, declared) in [(vec![&b"abc"[..]], 5), (vec![&b"abc"[..], b"defg"], 5)] {
            let (addr, _seen) = scripted(vec![]).await;
            let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
            let mut body = RequestBody::Stream {
                body: axum::body::Body::new(Pieces::of(&pieces)),
                length: Some(declared),
            };
            let err = conn
                .send(&parts(Method::POST, "/"), &mut body, None)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::RequestBody(_)), "{err}");
        }
    }

    /// A server for one connection: it reads the first request, then hands the connection
    /// to `answer`.
    async fn one_connection<F, Fut>(answer: F) -> std::net::SocketAddr
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            answer(s).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_head_that_trickles_in_byte_by_byte_is_read() {
        let addr = one_connection(|mut s| async move {
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok" {
                s.write_all(&[*byte]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Hold the connection open until the client is done.
            let _ = s.read(&mut [0u8; 1]).await;
        })
        .await;
        let (mut conn, answer) = tokio::time::timeout(Duration::from_secs(10), get(addr))
            .await
            .expect("the head was never parsed");
        let head = answer.unwrap();
        assert_eq!(head.headers["x-a"], "1");
        assert_eq!(body(&mut conn, &head).await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        let (addr, _seen) = scripted(vec![Step::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )])
        .await;
        let (mut conn, answer) = get(addr).await;
        let head = answer.unwrap();
        assert_eq!(body(&mut conn, &head).await.unwrap(), b"ok");
        // The runtime sees the server's FIN while it waits; a connection that never notices
        // stays reusable and fails the deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while conn.is_reusable() {
            assert!(
                std::time::Instant::now() < deadline,
                "a connection the server closed still looks reusable after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_instead_of_answering_is_an_error() {
        let (addr, _seen) = scripted(vec![Step::Close]).await;
        let err = get(addr).await.1.unwrap_err();
        assert!(matches!(err, Error::ClosedBeforeHead), "{err}");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_an_end() {
        let (addr, _seen) = scripted(vec![Step::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
        )])
        .await;
        let (mut conn, answer) = get(addr).await;
        let head = answer.unwrap();
        let err = body(&mut conn, &head).await.unwrap_err();
        assert!(matches!(err, Error::Truncated), "{err}");
    }

    #[tokio::test]
    async fn an_endless_head_is_refused() {
        let addr = one_connection(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Filler: ").await;
            // One field value that never ends, far past the limit.
            for _ in 0..200 {
                if s.write_all(&[b'a'; 1024]).await.is_err() {
                    break;
                }
            }
        })
        .await;
        let err = get(addr).await.1.unwrap_err();
        assert!(matches!(err, Error::HeadTooLarge), "{err}");
    }
}
