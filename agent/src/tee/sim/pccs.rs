//! A simulated PCCS: the PCCS v4 collateral API served from a [`SimPki`], fresh per request.

use std::sync::Arc;

use super::SimPki;

pub fn router(pki: Arc<SimPki>) -> axum::Router {
    let _ = pki;
    axum::Router::new()
}
