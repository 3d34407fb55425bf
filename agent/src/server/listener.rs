//! The TLS listener: accept, handshake inside the connection's own task, serve HTTP/1.1 and
//! HTTP/2 (gRPC) from one axum router, with bounded connections and header timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

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

/// Serve `router` on `listener` until `shutdown` turns true, then drain for the grace period.
/// When `measured` changes (RTMR3 moved and a new certificate carries it), established
/// connections are asked to close once their in-flight requests finish, so clients
/// re-handshake and see the new measurements instead of riding on evidence that is stale.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    limits: ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
    measured: watch::Receiver<u64>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    loop {
        // Wait for a connection slot first, so excess clients queue in the kernel backlog
        // instead of costing us memory.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
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
        let acceptor = acceptor.clone();
        let router = router.clone();
        let limits = limits.clone();
        let mut drain = drain_rx.clone();
        let mut measured = measured.clone();
        measured.borrow_and_update();
        tokio::spawn(async move {
            let _permit = permit;
            connection(
                stream,
                peer,
                acceptor,
                router,
                &limits,
                &mut drain,
                &mut measured,
            )
            .await;
        });
    }
    // Stop accepting; tell live connections to finish their in-flight requests.
    drop(listener);
    let _ = drain_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.shutdown_grace, permits.acquire_many(all)).await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: axum::Router,
    limits: &ListenerLimits,
    drain: &mut watch::Receiver<bool>,
    measured: &mut watch::Receiver<u64>,
) {
    let _ = stream.set_nodelay(true);
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
    // A client that completes the handshake and then says nothing must not hold a slot:
    // hyper's header timeout starts only once bytes arrive (and HTTP/2 has none), so the
    // first bytes must come within the same limit.
    let mut io = tokio::io::BufReader::new(tls);
    match tokio::time::timeout(limits.header_read_timeout, io.fill_buf()).await {
        Ok(Ok(first)) if !first.is_empty() => {}
        Ok(Ok(_)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, "no request within the header timeout");
            return;
        }
    }
    let service = TowerToHyperService::new(router);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = drain.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        Ok(()) = measured.changed() => {
            tracing::debug!(%peer, "measurements changed: closing the connection after its requests");
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
