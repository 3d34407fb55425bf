//! Kept-alive HTTP/1.1 connections to the one upstream.
//!
//! hyper-util's general-purpose pooled client spawns a task for every request whose response
//! is still streaming, only to put the connection back once it ends, races a fresh connect
//! against each checkout and keys its idle lists by scheme and authority behind a lock. The
//! front door has one upstream and needs none of that, and on its hot path that machinery cost
//! a measurable share of the CPU per request (docs/benchmarks.md). Here a connection goes back
//! on an idle stack when the response body it carried has ended, and a request takes the most
//! recently used one (the warmest), or connects.
//!
//! A response body dropped before its end (the client went away) does not go back: hyper then
//! closes that connection, which is what cancels the generation on the model server.
//!
//! Each connection thread (`server::shards`) has its own idle stack, and everything else (the
//! health probe) one more: an upstream connection is driven by a task on the thread that
//! opened it, so handing it to a request on another thread would send every byte of that
//! request across threads and back.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::Body as _;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// Why a request did not get a response head from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {authority}: no connection within {after:?}")]
    ConnectTimeout { authority: String, after: Duration },
    #[error("HTTP/1.1 with {authority}")]
    Handshake {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error("request to {authority}")]
    Send {
        authority: String,
        #[source]
        source: hyper::Error,
    },
}

impl PoolError {
    /// No connection could be made: the upstream is down (not a failed request on a live one).
    pub fn is_connect(&self) -> bool {
        !matches!(self, PoolError::Send { .. })
    }
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

pub struct Pool {
    authority: String,
    connect_timeout: Duration,
    /// A connection idle for longer is closed instead of reused.
    idle_timeout: Duration,
    /// More idle connections than requests that may run at once would never all be used
    /// (per thread).
    max_idle: usize,
    /// One stack per connection thread, then one for every other thread. Oldest first:
    /// connections are pushed and taken at the end.
    idle: Box<[Mutex<Vec<Idle>>]>,
}

impl Pool {
    pub fn new(
        authority: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
        connection_threads: usize,
    ) -> Arc<Self> {
        Arc::new(Pool {
            authority,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: (0..=connection_threads)
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        })
    }

    /// The idle stack of the caller's thread.
    fn slot(&self) -> usize {
        let other = self.idle.len() - 1;
        crate::server::shards::current().map_or(other, |i| i.min(other))
    }

    fn idle(&self, slot: usize) -> MutexGuard<'_, Vec<Idle>> {
        // The lock is held for a push or a pop only, never across a panic that could leave the
        // stack half-changed: a poisoned one is still consistent. A connection thread's stack
        // is only taken by that thread; the last one by the main runtime's health probes.
        self.idle[slot].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send `req` (origin-form target, Host set by the caller) and return the response with
    /// a body that puts the connection back when it ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: hyper::Request<Body>,
    ) -> Result<hyper::Response<PooledBody>, PoolError> {
        let slot = self.slot();
        loop {
            let (mut sender, reused) = match self.take(slot) {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            // A kept connection may still be finishing the end of its last response, or the
            // upstream may just have closed it.
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(self.send_error(e));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let back = Some((sender, Arc::clone(self), slot));
                    return Ok(resp.map(|inner| PooledBody { inner, back }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send again, on another connection (the
                    // upstream closed this kept-alive one as we took it).
                    Some(r) if reused => req = r,
                    _ => return Err(self.send_error(e.into_error())),
                },
            }
        }
    }

    fn send_error(&self, source: hyper::Error) -> PoolError {
        PoolError::Send {
            authority: self.authority.clone(),
            source,
        }
    }

    /// The most recently used idle connection that is still open and not idle for too long.
    fn take(&self, slot: usize) -> Option<SendRequest<Body>> {
        let mut idle = self.idle(slot);
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < self.idle_timeout {
                return Some(i.sender);
            }
        }
        None
    }

    fn put(&self, slot: usize, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle(slot);
        // Drop those idle for too long (at the front, the oldest); their tasks then end.
        let fresh = idle
            .iter()
            .position(|i| now.duration_since(i.since) < self.idle_timeout)
            .unwrap_or(idle.len());
        idle.drain(..fresh);
        if idle.len() < self.max_idle {
            idle.push(Idle { sender, since: now });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, PoolError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| PoolError::ConnectTimeout {
            authority: self.authority.clone(),
            after: self.connect_timeout,
        })?
        .map_err(|source| PoolError::Connect {
            authority: self.authority.clone(),
            source,
        })?;
        // Small requests and SSE events must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| PoolError::Handshake {
                authority: self.authority.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A response body from the upstream; its connection goes back to the pool once it has ended.
pub struct PooledBody {
    inner: Incoming,
    /// The connection, and the pool and idle stack it goes back to.
    back: Option<(SendRequest<Body>, Arc<Pool>, usize)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool, slot)) = self.back.take() {
            pool.put(slot, sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            // A broken body leaves its connection unusable.
            Some(Err(_)) => this.back = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // hyper stops polling a body whose declared length has arrived, so "ended" is
        // is_end_stream, not only a None seen.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
