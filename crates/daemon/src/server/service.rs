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
            let idle = self.body_idle;
            let req = req.map(|b| Body::new(IdleBody::new(b, idle)));
            Box::pin(self.router.clone().oneshot(req))
        }
    }
}
