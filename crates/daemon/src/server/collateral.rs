//! Where the agent gets collateral for its own quotes: a PCCS (with the on-disk cache), or,
//! for the simulated TD without a PCCS, the simulated PKI directly.

#[cfg(feature = "sim")]
use std::sync::{Arc, Mutex};

use tdx_core::verify::Collateral;
use tdx_net::pccs::{CollateralSource, Provenance};
#[cfg(feature = "sim")]
use tdx_sim::SimPki;

#[derive(Clone)]
pub enum CollateralProvider {
    Pccs(Box<CollateralSource>),
    #[cfg(feature = "sim")]
    /// Same PKI as the simulated TD's quotes. Generated when the last one nears its
    /// nextUpdate, like a PCCS refresh, so certificates are not re-issued on every check.
    Sim {
        pki: Arc<SimPki>,
        last: Arc<Mutex<Option<Collateral>>>,
    },
}

#[cfg(feature = "sim")]
impl CollateralProvider {
    pub fn sim(pki: Arc<SimPki>) -> Self {
        CollateralProvider::Sim {
            pki,
            last: Arc::new(Mutex::new(None)),
        }
    }
}

impl CollateralProvider {
    /// Collateral valid at `now` for `quote`'s platform, and where it came from.
    pub async fn for_quote(&self, quote: &[u8], now: i64) -> Result<(Collateral, String), String> {
        match self {
            CollateralProvider::Pccs(source) => {
                let (c, p) = source
                    .for_quote(quote, now)
                    .await
                    .map_err(|e| e.to_string())?;
                let how = match p {
                    Provenance::Fetched => "fetched from the PCCS".to_string(),
                    Provenance::Cached => "from the cache".to_string(),
                    Provenance::StaleFallback(why) => {
                        format!("from the cache (PCCS unreachable: {why})")
                    }
                };
                Ok((c, how))
            }
            #[cfg(feature = "sim")]
            CollateralProvider::Sim { pki, last } => {
                let cached = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(c) = cached.filter(|c| tdx_net::pccs::fresh(c, now)) {
                    return Ok((c, "from the simulated PKI (current)".to_string()));
                }
                let pki = Arc::clone(pki);
                let at = u64::try_from(now).unwrap_or(0);
                // Signing CRLs and JSON is CPU work: keep it off the async workers.
                let c = tokio::task::spawn_blocking(move || pki.collateral(at))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                Ok((c, "from the simulated PKI (new)".to_string()))
            }
        }
    }
}
