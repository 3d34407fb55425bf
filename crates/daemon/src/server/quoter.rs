//! The challenge quoter: REPORTDATA = Merkle root || audit chain head, the quote, and its
//! audit record, in that order, so no challenge quote is handed out unlogged.

use std::sync::Arc;
use std::time::Instant;

use super::metrics::Metrics;
use crate::audit::{AuditEvent, AuditLog, QuotePurpose};
use crate::batcher::{BoxFuture, ChallengeQuoter, IssuedQuote};
use tdx_tee::TeeHandle;

pub struct Quoter {
    pub tee: TeeHandle,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
}

impl ChallengeQuoter for Quoter {
    fn quote_for_root(&self, root: [u8; 32]) -> BoxFuture<'static, Result<IssuedQuote, String>> {
        let tee = self.tee.clone();
        let audit = self.audit.clone();
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let head = audit.head();
            let mut report_data = [0u8; 64];
            report_data[..32].copy_from_slice(&root);
            report_data[32..].copy_from_slice(&head);
            let started = Instant::now();
            let quote = match tee.quote(report_data).await {
                Ok(q) => {
                    metrics.count_quote("challenge", true, started.elapsed().as_secs_f64());
                    q
                }
                Err(e) => {
                    metrics.count_quote("challenge", false, 0.0);
                    return Err(format!("quote: {e}"));
                }
            };
            audit
                .append(AuditEvent::quote_issued(
                    QuotePurpose::Challenge,
                    &report_data,
                    None,
                ))
                .await
                .map_err(|e| format!("{e}; refusing to issue evidence unlogged"))?;
            Ok(IssuedQuote {
                quote,
                report_data,
                audit_head: head,
            })
        })
    }
}
