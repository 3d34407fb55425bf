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

use axum::body::Body;
use axum::response::Response;
use hyper::body::Incoming;
use tower::ServiceExt as _;

use super::state::AppState;

/// The path prefix of the model routes.
pub const MODEL_PREFIX: &str = "/v1/";

#[derive(Clone)]
pub struct Service {
    state: Arc<AppState>,
    router: axum::Router,
}

impl Service {
    pub fn new(state: Arc<AppState>, router: axum::Router) -> Self {
        Service { state, router }
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
            Box::pin(self.router.clone().oneshot(req.map(Body::new)))
        }
    }
}
