//! The gRPC service `tdx_agent.v1.Attestation`, on the same listener as HTTPS.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::state::AppState;
use crate::proto;
use crate::proto::attestation_server::Attestation;
use tdx_core::verify::{Collateral, Expectations, Policy};

pub struct AttestationService {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl Attestation for AttestationService {
    async fn get_evidence(
        &self,
        request: Request<proto::GetEvidenceRequest>,
    ) -> Result<Response<proto::Evidence>, Status> {
        let nonce = request.into_inner().nonce;
        let served = self.state.served();
        let event_log = served.event_log.clone();
        let mut out = proto::Evidence {
            certificate: served.cert.cert_der.to_vec(),
            certificate_quote: served.quote.clone(),
            collateral_json: served.collateral_json.clone(),
            event_log,
            challenge_quote: Vec::new(),
            proof: None,
            audit_chain_head: Vec::new(),
            gpu_evidence_json: served
                .gpu
                .as_ref()
                .map(|g| g.evidence_json.to_string())
                .unwrap_or_default(),
            gpu_collateral_json: served
                .gpu
                .as_ref()
                .map(|g| g.collateral_json.to_string())
                .unwrap_or_default(),
            challenge_gpu_evidence_json: String::new(),
        };
        if !nonce.is_empty() {
            let (r, _) = super::http::run_challenge(&self.state, nonce).await?;
            out.challenge_quote = r.quote.to_vec();
            out.audit_chain_head = r.audit_head.to_vec();
            out.challenge_gpu_evidence_json = r
                .gpu_evidence
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.proof = Some(proto::MerkleProof {
                leaf_index: r.proof.leaf_index,
                tree_size: r.proof.tree_size,
                audit_path: r.proof.audit_path.iter().map(|h| h.to_vec()).collect(),
            });
        }
        Ok(Response::new(out))
    }

    async fn get_measurements(
        &self,
        _request: Request<proto::GetMeasurementsRequest>,
    ) -> Result<Response<proto::Measurements>, Status> {
        // The registers as of the served quote: reading live ones may cost a quote on kernels
        // without the sysfs files, and this call must stay cheap.
        let served = self.state.served();
        let (_, body) = tdx_core::quote::parse_head_only(&served.quote)
            .map_err(|e| ApiError::Internal(format!("served quote: {e}")))?;
        Ok(Response::new(proto::Measurements {
            mrtd: body.mrtd.to_vec(),
            rtmr: body.rtmr.iter().map(|r| r.to_vec()).collect(),
            mrconfigid: body.mrconfigid.to_vec(),
            mrowner: body.mrowner.to_vec(),
            mrownerconfig: body.mrownerconfig.to_vec(),
            tee: match self.state.tee.kind() {
                tdx_tee::TeeKind::Configfs => "configfs".into(),
                tdx_tee::TeeKind::Simulated => "simulated".into(),
            },
        }))
    }

    async fn get_event_log(
        &self,
        _request: Request<proto::GetEventLogRequest>,
    ) -> Result<Response<proto::EventLog>, Status> {
        // The live log, without its lock: a re-issue holds that across its quote.
        Ok(Response::new(proto::EventLog {
            jsonl: self.state.rtmr3_log_text.jsonl().to_string(),
        }))
    }

    async fn verify(
        &self,
        request: Request<proto::VerifyRequest>,
    ) -> Result<Response<proto::VerifyResponse>, Status> {
        let req = request.into_inner();
        let collateral = if req.collateral_json.is_empty() {
            self.state.served().collateral.clone()
        } else {
            Collateral::from_bundle_json(&req.collateral_json, "request collateral_json")
                .and_then(Collateral::prepare)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
        };
        let policy = if req.policy_toml.is_empty() {
            Policy::default()
        } else {
            Policy::from_toml(&req.policy_toml, "request policy_toml")
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
        };
        let now = if req.at == 0 {
            tdx_core::verify::time::now_unix()
        } else {
            req.at
        };
        let verifier = self.state.verifier.clone();
        let quote = req.quote;
        // About a millisecond of signature checks: keep it off the async workers.
        let report = tokio::task::spawn_blocking(move || {
            verifier.appraise(&quote, &collateral, now, &policy, &Expectations::default())
        })
        .await
        .map_err(|e| {
            // A panic's text is for the operator, not the (unauthenticated) caller.
            tracing::error!(error = %e, "appraising a quote for Verify failed");
            ApiError::Internal("appraising the quote failed; see the agent's log".into())
        })?;
        self.state.metrics.count(
            &self.state.metrics.verifications,
            if report.accepted() {
                "accepted"
            } else {
                "rejected"
            },
        );
        Ok(Response::new(proto::VerifyResponse {
            accepted: report.accepted(),
            report_json: report.to_json(),
        }))
    }
}
