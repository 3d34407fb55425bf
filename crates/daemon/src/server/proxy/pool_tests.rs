//! The pool's own tests: which connection a request takes, when one goes back, and when one
//! is closed instead.

use super::*;
use axum::http::StatusCode;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A server that answers every request on every connection with `answer`, numbering its
/// connections: each request's connection number comes out of the channel. `close_after`
/// hangs up after that many answers on a connection.
async fn server(
    answer: &'static [u8],
    close_after: Option<usize>,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((s, _)) = listener.accept().await {
            n += 1;
            tokio::spawn(connection(s, n, answer, close_after, tx.clone()));
        }
    });
    (addr, rx)
}

async fn connection(
    mut s: TcpStream,
    n: usize,
    answer: &'static [u8],
    close_after: Option<usize>,
    tx: mpsc::UnboundedSender<usize>,
) {
    let mut got = Vec::new();
    let mut answered = 0;
    loop {
        // Requests here are bodiless GETs: a head is a whole request.
        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            got.drain(..end + 4);
            let _ = tx.send(n);
            if s.write_all(answer).await.is_err() {
                return;
            }
            answered += 1;
            if close_after == Some(answered) {
                return;
            }
        }
        let mut b = [0u8; 1024];
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(k) => got.extend_from_slice(&b[..k]),
        }
    }
}

fn pool(addr: std::net::SocketAddr, idle_timeout: Duration, max_idle: usize) -> Arc<Pool> {
    Pool::new(
        addr.to_string(),
        Duration::from_secs(5),
        idle_timeout,
        max_idle,
        0,
    )
}

fn get() -> Request<RequestBody> {
    Request::get("/")
        .header("host", "upstream")
        .body(RequestBody::Full(Bytes::new()))
        .unwrap()
}

/// Send a GET and read its body to the end.
async fn roundtrip(pool: &Arc<Pool>) -> (StatusCode, Vec<u8>) {
    let resp = pool.send(get()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

fn idle_count(pool: &Pool) -> usize {
    pool.stack().lock().len()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[tokio::test]
async fn a_connection_goes_back_when_its_body_ends_and_is_taken_again() {
    let (addr, mut conns) = server(OK, None).await;
    let pool = pool(addr, Duration::from_secs(60), 4);
    for _ in 0..3 {
        assert_eq!(roundtrip(&pool).await, (StatusCode::OK, b"ok".to_vec()));
        assert_eq!(idle_count(&pool), 1);
    }
    // All three on the first connection.
    assert_eq!(
        [conns.recv().await, conns.recv().await, conns.recv().await],
        [Some(1); 3]
    );
}

#[tokio::test]
async fn the_most_recently_used_connection_is_taken_first() {
    let (addr, mut conns) = server(OK, None).await;
    let pool = pool(addr, Duration::from_secs(60), 4);
    // Two responses open at once need two connections.
    let a = pool.send(get()).await.unwrap();
    let b = pool.send(get()).await.unwrap();
    assert_eq!((conns.recv().await, conns.recv().await), (Some(1), Some(2)));
    b.into_body().collect().await.unwrap();
    a.into_body().collect().await.unwrap();
    assert_eq!(idle_count(&pool), 2);
    // Connection 1 went back last: it is the warmest.
    roundtrip(&pool).await;
    assert_eq!(conns.recv().await, Some(1));
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let (addr, mut conns) = server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
        None,
    )
    .await;
    let pool = pool(addr, Duration::from_secs(60), 4);
    let mut body = pool.send(get()).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"ok");
    drop(body);
    assert_eq!(idle_count(&pool), 0);
    assert_eq!(conns.recv().await, Some(1));
}

#[tokio::test]
async fn a_bodiless_response_gives_its_connection_back_at_once() {
    let (addr, _conns) = server(b"HTTP/1.1 204 No Content\r\n\r\n", None).await;
    let pool = pool(addr, Duration::from_secs(60), 4);
    let resp = pool.send(get()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Nobody polls the body: the connection is back already.
    assert_eq!(idle_count(&pool), 1);
}

#[tokio::test]
async fn connection_close_and_close_delimited_bodies_are_not_kept() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"[..],
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ] {
        let (addr, _conns) = server(answer, None).await;
        let pool = pool(addr, Duration::from_secs(60), 4);
        roundtrip(&pool).await;
        assert_eq!(idle_count(&pool), 0, "{}", String::from_utf8_lossy(answer));
    }
    let (addr, _conns) = server(b"HTTP/1.1 200 OK\r\n\r\nuntil close", Some(1)).await;
    let pool = pool(addr, Duration::from_secs(60), 4);
    assert_eq!(roundtrip(&pool).await.1, b"until close");
    assert_eq!(idle_count(&pool), 0);
}

#[tokio::test]
async fn bytes_left_after_a_content_length_body_prevent_reuse() {
    let (addr, mut conns) = server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra",
        None,
    )
    .await;
    let pool = pool(addr, Duration::from_secs(60), 4);
    assert_eq!(roundtrip(&pool).await.1, b"ok");
    // It went back (the body ended), but a connection holding bytes no request asked for
    // is never taken: the next request connects afresh and gets its own answer.
    assert_eq!(roundtrip(&pool).await.1, b"ok");
    assert_eq!((conns.recv().await, conns.recv().await), (Some(1), Some(2)));
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    let (addr, mut conns) = server(OK, Some(1)).await;
    let pool = pool(addr, Duration::from_secs(60), 4);
    roundtrip(&pool).await;
    assert_eq!(conns.recv().await, Some(1));
    // Wait for the runtime to see the server's FIN on the idle connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool
        .stack()
        .lock()
        .last_mut()
        .is_some_and(|i| i.conn.is_reusable())
    {
        assert!(std::time::Instant::now() < deadline, "the FIN never showed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(roundtrip(&pool).await, (StatusCode::OK, b"ok".to_vec()));
    assert_eq!(conns.recv().await, Some(2));
}

#[tokio::test]
async fn idle_connections_past_the_timeout_or_the_cap_are_closed() {
    let (addr, _conns) = server(OK, None).await;
    let pool = pool(addr, Duration::from_millis(50), 1);
    let a = pool.send(get()).await.unwrap();
    let b = pool.send(get()).await.unwrap();
    a.into_body().collect().await.unwrap();
    b.into_body().collect().await.unwrap();
    assert_eq!(idle_count(&pool), 1, "at most max_idle are kept");
    let since = pool.stack().lock()[0].since;
    while since.elapsed() < Duration::from_millis(50) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        pool.stack().take().is_none(),
        "a connection idle too long is not taken"
    );
    assert_eq!(idle_count(&pool), 0, "and it is closed");
}

/// `n` connections to a local listener, and the listener's ends of them.
async fn idle_connections(n: usize) -> (Vec<Conn>, Vec<tokio::net::TcpStream>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..n {
        ours.push(Conn::new(
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        ));
        theirs.push(listener.accept().await.unwrap().0);
    }
    (ours, theirs)
}

#[tokio::test]
async fn idle_connections_past_their_keepalive_are_closed_on_every_stack() {
    // Idle time zero: every kept connection is already past it.
    let pool = Pool::new(
        "127.0.0.1:1".into(),
        Duration::from_secs(1),
        Duration::ZERO,
        8,
        2,
    );
    let (ours, mut theirs) = idle_connections(3).await;
    for (slot, conn) in ours.into_iter().enumerate() {
        // Each on another thread's stack; `put` keeps the newest.
        pool.stacks[slot].lock().push(Idle {
            conn,
            since: Instant::now(),
        });
    }
    assert_eq!(pool.close_expired(), 3);
    assert_eq!(pool.close_expired(), 0);
    // The upstream sees each of them closed.
    for s in &mut theirs {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn idle_connections_within_their_keepalive_stay_for_reuse() {
    let pool = Pool::new(
        "127.0.0.1:1".into(),
        Duration::from_secs(1),
        Duration::from_secs(3600),
        8,
        1,
    );
    let (ours, _theirs) = idle_connections(2).await;
    for conn in ours {
        pool.stacks[0].put(conn);
    }
    assert_eq!(pool.close_expired(), 0);
    assert!(pool.stacks[0].take().is_some());
    assert!(pool.stacks[0].take().is_some());
    assert!(pool.stacks[0].take().is_none());
}
