//! The challenge quoter: REPORTDATA = Merkle root || audit chain head, the quote, and its
//! audit record, in that order, so no challenge quote is handed out unlogged. With GPUs, one
//! report per GPU over the batch's GPU nonce first, and REPORTDATA[0..32] commits to the root
//! and their digest (docs/formats.md §8).

use std::sync::Arc;
use std::time::Instant;

use super::metrics::Metrics;
use crate::audit::{AuditEvent, AuditLog, QuotePurpose};
use crate::batcher::{BatchGpus, BoxFuture, ChallengeQuoter, IssuedQuote, QuoteFailure};
use tdx_tee::TeeHandle;

pub struct Quoter {
    pub tee: TeeHandle,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub gpus: Option<Arc<super::gpus::GpuAttester>>,
}

impl ChallengeQuoter for Quoter {
    fn quote_for_root(
        &self,
        root: [u8; 32],
    ) -> BoxFuture<'static, Result<IssuedQuote, QuoteFailure>> {
        let tee = self.tee.clone();
        let audit = self.audit.clone();
        let metrics = Arc::clone(&self.metrics);
        let gpus = self.gpus.clone();
        Box::pin(async move {
            // Whatever the GPUs gave, good or not, is committed: clients judge it.
            let gpus = match gpus {
                Some(g) => {
                    let nonce = tdx_core::gpu::nonce_for_batch(&root);
                    let set = g.collect_evidence(nonce, &metrics).await;
                    Some(BatchGpus {
                        digest: set.digest(),
                        evidence_json: Arc::new(set.to_json_value()),
                    })
                }
                None => None,
            };
            let committed = match &gpus {
                Some(g) => tdx_core::challenge::gpu_bound_root(&root, &g.digest),
                None => root,
            };
            let head = audit.head();
            let mut report_data = [0u8; 64];
            report_data[..32].copy_from_slice(&committed);
            report_data[32..].copy_from_slice(&head);
            let started = Instant::now();
            let quote = match tee.quote(report_data).await {
                Ok(q) => {
                    metrics.count_quote("challenge", true, started.elapsed().as_secs_f64());
                    q
                }
                Err(e) => {
                    metrics.count_quote("challenge", false, 0.0);
                    return Err(QuoteFailure::Tee(format!("quote: {e}")));
                }
            };
            audit
                .append(AuditEvent::quote_issued(
                    QuotePurpose::Challenge,
                    &report_data,
                    None,
                ))
                .await
                .map_err(|e| {
                    QuoteFailure::Audit(format!("{e}; refusing to issue evidence unlogged"))
                })?;
            Ok(IssuedQuote {
                quote,
                report_data,
                audit_head: head,
                gpus,
            })
        })
    }
}
