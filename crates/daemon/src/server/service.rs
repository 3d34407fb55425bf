//! What every connection serves: `/v1/` straight to the front door, everything else (evidence,
//! challenges, probes, metrics, gRPC) through the axum router.
//!
//! The model routes are the agent's hot path; routing them through axum cost a path match, a
//! percent-decoded capture and extractor plumbing on every request for a prefix test
//! (docs/benchmarks.md).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use hyper::body::Incoming;
use tdx_net::head_timer::DoneAtHead;
use tower::ServiceExt as _;

use super::proxy::body::IdleBody;
use super::state::AppState;

/// The path prefix of the model routes.
pub const MODEL_PREFIX: &str = "/v1/";

#[derive(Clone)]
pub struct Service {
    state: Arc<AppState>,
    router: axum::Router,
    /// How long a request body on the router's routes may move no byte. The connection's
    /// header timer stops while a request is in flight (a model may think for minutes), so
    /// without this a challenge whose body never comes would hold its connection forever;
    /// the model routes have the front door's own idle timeout.
    body_idle: Duration,
}

impl Service {
    pub fn new(state: Arc<AppState>, router: axum::Router) -> Self {
        let body_idle = Duration::from_secs(state.config.limits.header_read_timeout_secs);
        Service {
            state,
            router,
            body_idle,
        }
    }

    pub fn metrics(&self) -> &super::metrics::Metrics {
        &self.state.metrics
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: hyper::Request<Incoming>) -> Answer {
        self.state.metrics.requests.count_request();
        if req.uri().path().starts_with(MODEL_PREFIX) {
            let state = Arc::clone(&self.state);
            Box::pin(async move { Ok(super::proxy::handler(&state, req).await) })
        } else {
            // The router's bodies are small (64 KiB at most: a nonce, a gRPC request), so one
            // must also arrive whole within twice the header timeout: a trickle of a byte just
            // inside the idle timeout would otherwise hold the connection for days. (Twice, so
            // that a body that never comes is named by the idle limit it broke first.)
            let idle = self.body_idle;
            let total = idle.saturating_mul(2);
            let req = req.map(|b| Body::new(IdleBody::new(b, idle).within(total)));
            let answer = self.router.clone().oneshot(req);
            Box::pin(async move {
                let mut response = answer.await?;
                // Its answers are whole in memory, or streams that never end (gRPC health
                // `Watch`): neither may keep the connection once the head is out.
                response.extensions_mut().insert(DoneAtHead);
                Ok(response)
            })
        }
    }
}
