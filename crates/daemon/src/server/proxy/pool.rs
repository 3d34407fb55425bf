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
//! A response body dropped before its end (the client went away) does not go back: dropping it
//! closes that connection, which is what cancels the generation on the model server.
//!
//! Each connection thread (`server::shards`) has its own idle stack, and everything else (the
//! health probe) one more: a socket is registered with the runtime of the thread that opened
//! it, so a request on another thread would have its every wake-up cross threads.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::h1::{self, Conn, Reader, RequestBody};

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
    #[error("request to {authority}")]
    Exchange {
        authority: String,
        #[source]
        source: h1::Error,
    },
}

impl PoolError {
    /// No connection could be made: the upstream is down (not a failed request on a live one).
    pub fn is_connect(&self) -> bool {
        !matches!(self, PoolError::Exchange { .. })
    }

    /// The upstream stopped taking the request, or took it all and sent no response head,
    /// for the timeout [`Pool::send_within`] was given.
    pub fn upstream_timeout(&self) -> Option<Duration> {
        match self {
            PoolError::Exchange {
                source: h1::Error::HeaderTimeout(t) | h1::Error::WriteStalled(t),
                ..
            } => Some(*t),
            _ => None,
        }
    }

    /// The client's request body failed (too large, stalled, cut): the client's fault.
    pub fn request_body(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Exchange {
                source: h1::Error::RequestBody(e),
                ..
            } => Some(e.as_ref()),
            _ => None,
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

pub struct Pool {
    authority: String,
    connect_timeout: Duration,
    /// One stack per connection thread, then one for every other thread.
    stacks: Box<[Arc<Stack>]>,
}

/// One thread's idle connections, oldest first: connections are pushed and taken at the end.
/// Each is its own allocation on its own cache lines, and a response body holds the stack its
/// connection goes back to (not the pool): a request touches no line another thread writes,
/// not even a reference count.
#[repr(align(128))]
struct Stack {
    idle: Mutex<Vec<Idle>>,
    /// A connection idle for longer is closed instead of reused.
    idle_timeout: Duration,
    /// More idle connections than requests that may run at once would never all be used.
    max_idle: usize,
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
            stacks: (0..=connection_threads)
                .map(|_| {
                    Arc::new(Stack {
                        idle: Mutex::new(Vec::new()),
                        idle_timeout,
                        max_idle,
                    })
                })
                .collect(),
        })
    }

    /// The idle stack of the caller's thread.
    fn stack(&self) -> &Arc<Stack> {
        // `new` makes one more stack than connection threads, so the slot is in bounds.
        &self.stacks[crate::server::shards::slot(self.stacks.len())]
    }

    /// Send `req` (origin-form target, Host set by the caller) and return the response with
    /// a body that puts the connection back when it ends.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        self.send_within(req, None).await
    }

    /// [`Pool::send`], failing when the upstream takes none of the request, or sends no
    /// response head once it has all of it, for `upstream_timeout` (the client's own pace
    /// of upload does not count).
    pub async fn send_within(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        upstream_timeout: Option<Duration>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let stack = self.stack();
        let (parts, mut body) = req.into_parts();
        loop {
            let (mut conn, reused) = match stack.take() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            match conn.send(&parts, &mut body, upstream_timeout).await {
                Ok(head) => {
                    let body = PooledBody::new(conn, &head, Arc::clone(stack));
                    let mut resp = Response::new(body);
                    *resp.status_mut() = head.status;
                    *resp.headers_mut() = head.headers;
                    return Ok(resp);
                }
                // The upstream closed this kept-alive connection as we took it, and nothing
                // reached it: send the same bytes on another.
                Err(e) if reused && e.unsent() && body.is_full() => continue,
                Err(source) => {
                    return Err(PoolError::Exchange {
                        authority: self.authority.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Close every idle connection kept past the idle timeout, on every thread's stack:
    /// `put` and `take` only look at the stack of the thread they run on, so a burst that
    /// never comes back would leave its connections (and descriptors) open. How many closed.
    pub fn close_expired(&self) -> usize {
        let now = Instant::now();
        self.stacks
            .iter()
            .map(|s| s.drain_expired(&mut s.lock(), now))
            .sum()
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
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
        Ok(Conn::new(tcp))
    }
}

impl Stack {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        // The lock is held for a push or a pop only, never across a panic that could leave the
        // stack half-changed: a poisoned one is still consistent. A connection thread's stack
        // is only taken by that thread; the last one by the main runtime's health probes.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open and not idle for too long.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(mut i) = idle.pop() {
            if i.since.elapsed() < self.idle_timeout && i.conn.is_reusable() {
                return Some(i.conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = self.lock();
        self.drain_expired(&mut idle, now);
        if idle.len() < self.max_idle {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Close those of `idle` kept past the timeout (at the front: the stack is oldest first).
    fn drain_expired(&self, idle: &mut Vec<Idle>, now: Instant) -> usize {
        let fresh = idle
            .iter()
            .position(|i| now.duration_since(i.since) < self.idle_timeout)
            .unwrap_or(idle.len());
        idle.drain(..fresh);
        fresh
    }
}

/// A response body from the upstream; its connection goes back to the pool once the body has
/// ended, and is closed if the body is dropped before (the client went away).
pub struct PooledBody {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    reader: Reader,
    keep_alive: bool,
    /// The idle stack the connection goes back to.
    stack: Arc<Stack>,
}

impl PooledBody {
    fn new(conn: Conn, head: &h1::Head, stack: Arc<Stack>) -> Self {
        let mut body = PooledBody {
            conn: Some(conn),
            reader: Reader::new(head.framing),
            keep_alive: head.keep_alive,
            stack,
        };
        // No body at all (204, HEAD): nobody will poll for its end.
        if body.reader.is_done() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
        {
            self.stack.put(conn);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = h1::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h1::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(this.reader.poll_data(conn, cx)) {
            Ok(Some(data)) => {
                if this.reader.is_done() {
                    this.release();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.release();
                Poll::Ready(None)
            }
            Err(e) => {
                // A broken body leaves its connection unusable.
                tracing::debug!(error = %e, "upstream response body failed");
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.reader.size_hint()
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "pool_hyper_diff_tests.rs"]
mod hyper_diff_tests;
