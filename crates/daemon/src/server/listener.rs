//! The TLS listener: accept, hand the connection to a connection thread (`shards`), which
//! does the handshake and serves HTTP/1.1 and HTTP/2 (gRPC) from one service, with bounded
//! connections and header timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::service::Service;
use super::shards::{Shards, Threads};
use tdx_net::head_timer::{Activity, HeadTimer, Timed, Watched, finish};

/// Knobs of the listener.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Time for the TLS handshake and for request headers to arrive.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// How long in-flight connections may finish after shutdown begins.
    pub shutdown_grace: Duration,
}

/// A TLS server config with the ring provider, ALPN h2 + http/1.1, and the given resolver.
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// One listening socket per connection thread on `addr`, bound with `SO_REUSEPORT` so the
/// kernel hands each new connection to one socket and wakes one thread. (With one socket
/// watched by every thread's epoll, each connection woke them all and all but one found
/// nothing to accept: server CPU per handshake grew with the thread count, docs/benchmarks.md.)
///
/// `SO_REUSEPORT` would also let a second agent started by mistake on the same port share it
/// silently; a plain bind first, closed at once, keeps "address in use" an error.
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut bound = addr;
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let s = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&bound.into())?;
        s.listen(1024)?;
        let l = std::net::TcpListener::from(s);
        // Port 0: the first socket picks the port, the others join it.
        bound = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Serve `service` until `shutdown` turns true, then drain for the grace period. Each
/// connection thread accepts from its own listening socket (`listeners`, one per thread, see
/// [`bind`]), so a connection is handled where it was accepted, with no hand-over unless the
/// threads' loads drift apart (`Threads::place`).
/// When `measured` changes (RTMR3 moved and a new certificate carries it), established
/// connections are asked to close once their in-flight requests finish, so clients
/// re-handshake and see the new measurements instead of riding on evidence that is stale.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    shards: Shards,
    tls: Arc<rustls::ServerConfig>,
    service: Service,
    limits: ListenerLimits,
    shutdown: watch::Receiver<bool>,
    measured: watch::Receiver<u64>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    let ctx = Arc::new(Accept {
        acceptor: TlsAcceptor::from(tls),
        service,
        limits: limits.clone(),
        permits: Arc::clone(&permits),
        drain: drain_rx,
        measured,
    });
    let threads = Arc::clone(shards.threads());
    let loops: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .filter_map(|(i, listener)| {
            let run = accept_loop(
                i,
                listener,
                Arc::clone(&ctx),
                Arc::clone(&threads),
                shutdown.clone(),
            );
            threads.handle(i).map(|h| h.spawn(run))
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
    // Accepting has stopped; tell live connections to finish their in-flight requests.
    let _ = drain_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.shutdown_grace, permits.acquire_many(all)).await;
    // Whatever is still open after the grace period is dropped with its thread.
    drop(shards);
}

/// What every accepted connection needs.
struct Accept {
    acceptor: TlsAcceptor,
    service: Service,
    limits: ListenerLimits,
    /// Shared by all threads: `max_connections` in all.
    permits: Arc<Semaphore>,
    drain: watch::Receiver<bool>,
    measured: watch::Receiver<u64>,
}

/// One connection thread's accept loop; its connections run on that thread.
async fn accept_loop(
    thread: usize,
    listener: std::net::TcpListener,
    ctx: Arc<Accept>,
    threads: Arc<Threads>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(thread, error = %e, "connection thread cannot watch the listening socket: it takes no connections");
            return;
        }
    };
    loop {
        // Wait for a connection slot first, so excess clients queue in the kernel backlog
        // instead of costing us memory.
        let permit = tokio::select! {
            p = Arc::clone(&ctx.permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let target = threads.place(thread);
        let live = threads.hold(target);
        let ctx = Arc::clone(&ctx);
        let run = move |stream| async move {
            let _held = (permit, live);
            let mut drain = ctx.drain.clone();
            let mut measured = ctx.measured.clone();
            measured.borrow_and_update();
            connection(
                stream,
                peer,
                ctx.acceptor.clone(),
                ctx.service.clone(),
                &ctx.limits,
                &mut drain,
                &mut measured,
            )
            .await;
        };
        match threads.handle(target) {
            Some(other) if target != thread => {
                // The socket moves to the other thread's reactor.
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                other.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => run(stream).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "cannot hand the connection over")
                        }
                    }
                });
            }
            _ => {
                tokio::spawn(run(stream));
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    service: Service,
    limits: &ListenerLimits,
    drain: &mut watch::Receiver<bool>,
    measured: &mut watch::Receiver<u64>,
) {
    let _ = stream.set_nodelay(true);
    service.metrics().requests.count_connection();
    // Writes are watched as the kernel takes them, below TLS, so a slow reader still taking
    // the end of a response is not mistaken for an idle connection (`head_timer`).
    let activity = Activity::new();
    let stream = Watched::new(stream, Arc::clone(&activity));
    let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    // HTTP/2 over TLS is negotiated with ALPN "h2" (RFC 9113 §3.2); everything else is
    // HTTP/1.1. Deciding here, rather than sniffing the first bytes for the HTTP/2 preface,
    // keeps a buffering layer off every read of every HTTP/1.1 connection.
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        // HTTP/2 has no header timeout, and hyper's keep-alive pings start only once its
        // handshake is done and then keep an idle client (whose library answers them) forever:
        // the same timer ends a connection that has no request in flight for the timeout,
        // from the TLS handshake on (so a preface that never comes, or never finishes, too),
        // with a GOAWAY.
        let timer = HeadTimer::new(Arc::clone(&activity), limits.header_read_timeout)
            .ignoring_idle_writes();
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
            .serve_connection(TokioIo::new(tls), Timed::new(service, activity));
        drive(
            conn,
            |c| c.graceful_shutdown(),
            Some(timer),
            Idle::GoAway,
            peer,
            drain,
            measured,
        )
        .await;
    } else {
        // The header timeout runs from here and again from the end of each response, so a
        // silent, idle or trickling client is let go after it; `head_timer` says why it is
        // not hyper's.
        let timer = HeadTimer::new(Arc::clone(&activity), limits.header_read_timeout);
        let conn = http1::Builder::new()
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(tls), Timed::new(service, activity));
        drive(
            conn,
            |c| c.graceful_shutdown(),
            Some(timer),
            Idle::Close,
            peer,
            drain,
            measured,
        )
        .await;
    }
}

/// What the head timer's expiry does to a connection.
enum Idle {
    /// HTTP/1.1: nothing is in flight and the client is mid-head or silent: close at once.
    Close,
    /// HTTP/2: say GOAWAY (a stream the client opened meanwhile is still answered), then
    /// close once it has had nothing in flight for the timeout again (the last bytes leave).
    GoAway,
}

/// Serve `conn` to its end, or ask it to finish its in-flight requests and close when the
/// agent drains or its measurements change.
async fn drive<C>(
    conn: C,
    graceful: impl FnOnce(Pin<&mut C>),
    mut head_timer: Option<HeadTimer>,
    idle: Idle,
    peer: SocketAddr,
    drain: &mut watch::Receiver<bool>,
    measured: &mut watch::Receiver<u64>,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    enum Event {
        Ended(Result<(), hyper::Error>),
        HeadTimeout,
        Drain,
        Measured,
    }
    tokio::pin!(conn);
    // The two watches are shared by every connection, and polling one takes its lock: they
    // are polled only when they woke the task, not on each of a busy connection's wake-ups.
    let signal = Arc::new(Signal::default());
    let signal_waker = Waker::from(Arc::clone(&signal));
    let mut drained = std::pin::pin!(drain.changed());
    let mut remeasured = std::pin::pin!(measured.changed());
    let mut remeasured_live = true;
    let event = std::future::poll_fn(|cx| {
        signal.follow(cx.waker());
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Event::Ended(result));
        }
        if let Some(timer) = head_timer.as_mut()
            && timer.poll_expired(cx).is_ready()
        {
            return Poll::Ready(Event::HeadTimeout);
        }
        if signal.fired.swap(false, Ordering::AcqRel) {
            let mut scx = Context::from_waker(&signal_waker);
            if drained.as_mut().poll(&mut scx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if remeasured_live {
                match remeasured.as_mut().poll(&mut scx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Event::Measured),
                    // The agent is stopping; the drain says so.
                    Poll::Ready(Err(_)) => remeasured_live = false,
                    Poll::Pending => {}
                }
            }
        }
        Poll::Pending
    })
    .await;
    // `None`: the header timeout ended the connection, before or after it was asked to close.
    let ended = match (event, idle) {
        (Event::Ended(result), _) => Some(result),
        (Event::HeadTimeout, Idle::Close) => None,
        (Event::HeadTimeout, Idle::GoAway) => {
            tracing::debug!(%peer, "HTTP/2: no request in flight within the header timeout: GOAWAY");
            graceful(conn.as_mut());
            // The grace runs from now and, like the timeout itself, never cuts a request in
            // flight (one the client opened just before the GOAWAY may stream for minutes).
            let mut timer = head_timer;
            if let Some(t) = timer.as_mut() {
                t.restart();
            }
            finish(conn, timer).await
        }
        (Event::Drain, _) => {
            graceful(conn.as_mut());
            finish(conn, head_timer).await
        }
        (Event::Measured, _) => {
            tracing::debug!(%peer, "measurements changed: closing the connection after its requests");
            graceful(conn.as_mut());
            finish(conn, head_timer).await
        }
    };
    match ended {
        None => {
            tracing::debug!(%peer, "no complete request head within the header timeout: closing")
        }
        Some(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        Some(Ok(())) => {}
    }
}

/// The waker the drain and measurement watches get: it notes that one of them fired, then
/// wakes the connection's task.
struct Signal {
    /// Starts set, so the first poll registers with both watches.
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Default for Signal {
    fn default() -> Self {
        Signal {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }
}

impl Signal {
    /// Wake `task` when a watch fires (it is the same waker on every poll but the first).
    fn follow(&self, task: &Waker) {
        let mut current = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !current.as_ref().is_some_and(|w| w.will_wake(task)) {
            *current = Some(task.clone());
        }
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}
