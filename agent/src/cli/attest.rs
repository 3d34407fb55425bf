//! `tdx-agent attest`: connect to an agent over RA-TLS, verify its evidence against a policy,
//! optionally prove it is live with a fresh challenge, and print the report.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full, Limited};
use sha2::{Digest as _, Sha256};

use super::{CliResult, Failure, read_file};
use crate::ratls::{CollateralSource, RaTlsVerifier, client_config};
use crate::server::http::{CHALLENGE, ChallengeResponseJson, EvidenceJson, WELL_KNOWN};
use crate::verify::report::Check;
use crate::verify::{Collateral, Expectations, Report, Verdict, Verifier};

#[derive(Debug, Args)]
pub struct AttestArgs {
    /// The agent, e.g. https://10.0.0.5:8443.
    pub url: String,
    /// Appraisal policy (TOML). Without one, no measurement is pinned: any genuine TD passes.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Trust this root CA (DER) instead of Intel's production root (simulated TD, test PKIs).
    #[arg(long, value_name = "DER")]
    pub insecure_root: Option<PathBuf>,
    /// Also run a fresh challenge: a new quote over a random nonce proves the TD is live now.
    #[arg(long)]
    pub nonce: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub const NO_POLICY_WARNING: &str = "no --policy given: no measurement was pinned, so any genuine TD on an accepted platform passes";

pub async fn run(a: AttestArgs) -> CliResult {
    let uri: hyper::Uri = a
        .url
        .parse()
        .map_err(|e| Failure::Error(format!("{}: {e}", a.url)))?;
    if uri.scheme_str() != Some("https") {
        return Err(Failure::Error(format!(
            "{}: expected https://HOST:PORT",
            a.url
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| Failure::Error(format!("{}: no host", a.url)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let policy = super::verify::load_policy(a.policy.as_ref()).await?;
    let verifier = match &a.insecure_root {
        Some(p) => Verifier::with_insecure_root(read_file(p, "--insecure-root").await?),
        None => Verifier::production(),
    };

    let ratls = Arc::new(
        RaTlsVerifier::new(verifier.clone(), policy.clone(), CollateralSource::Stapled)
            .map_err(Failure::error)?,
    );
    let slot = ratls.report_slot();
    let tls =
        client_config(Arc::clone(&ratls), vec![b"http/1.1".to_vec()]).map_err(Failure::error)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Failure::Error(format!("{host}: {e}")))?;

    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Failure::Error(format!("{host}:{port}: connection timed out")))?
    .map_err(|e| Failure::Error(format!("{host}:{port}: {e}")))?;
    let stream = match connector.connect(server_name, tcp).await {
        Ok(s) => s,
        Err(e) => {
            let report = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return match report {
                // The evidence was appraised and refused: that is a verdict, not an I/O error.
                Some(mut r) if !r.accepted() => {
                    finish(&mut r, &a);
                    Err(Failure::Rejected(r.summary()))
                }
                _ => Err(Failure::Error(format!(
                    "TLS handshake with {host}:{port}: {e}"
                ))),
            };
        }
    };
    let peer_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| Failure::Error("the server sent no certificate".into()))?;
    let now = crate::verify::time::now_unix();
    let mut report = ratls
        .report_for(&peer_cert, now)
        .map(|r| (*r).clone())
        .or_else(|| slot.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .ok_or_else(|| Failure::Error("the RA-TLS verifier produced no report".into()))?;

    if a.nonce {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| Failure::Error(format!("HTTP over RA-TLS: {e}")))?;
        tokio::spawn(conn);
        let evidence: EvidenceJson = request(&mut sender, &host, "GET", WELL_KNOWN, None).await?;
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let body = serde_json::json!({"nonce": crate::encoding::b64(&nonce)}).to_string();
        let challenge: ChallengeResponseJson =
            request(&mut sender, &host, "POST", CHALLENGE, Some(body)).await?;
        let spki = spki_sha256(&peer_cert)?;
        check_challenge(
            &mut report,
            &verifier,
            &policy,
            &evidence,
            &challenge,
            &nonce,
            &spki,
            now,
        );
    }
    finish(&mut report, &a);
    if report.accepted() {
        Ok(())
    } else {
        Err(Failure::Rejected(report.summary()))
    }
}

fn finish(report: &mut Report, a: &AttestArgs) {
    if a.policy.is_none() {
        // The report already carries the appraisal's own "pins no measurement" warning.
        eprintln!("tdx-agent: warning: {NO_POLICY_WARNING}");
    }
    super::verify::print_report(report, a.json);
}

async fn request<T: serde::de::DeserializeOwned>(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<T, Failure> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(Failure::error)?;
    // An HTTP/1 connection takes one request at a time: wait until the previous one is done.
    sender
        .ready()
        .await
        .map_err(|e| Failure::Error(format!("{method} {path}: connection: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failure::Error(format!("{method} {path}: {e}")))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), 4 << 20)
        .collect()
        .await
        .map_err(|e| Failure::Error(format!("{method} {path}: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(Failure::Error(format!(
            "{method} {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Rejected(format!("{method} {path}: malformed response: {e}")))
}

fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], Failure> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| Failure::Rejected(format!("server certificate: {e}")))?;
    Ok(Sha256::digest(cert.public_key().raw).into())
}

/// Add the fresh-challenge checks to `report`: the challenge quote verifies, commits to our
/// nonce and the key we are talking to, and comes from the same TD as the certificate.
#[allow(clippy::too_many_arguments)]
fn check_challenge(
    report: &mut Report,
    verifier: &Verifier,
    policy: &crate::verify::Policy,
    evidence: &EvidenceJson,
    challenge: &ChallengeResponseJson,
    nonce: &[u8],
    spki: &[u8; 32],
    now: i64,
) {
    let mut push = |name: &str, ok: bool, expected: String, found: String| {
        report.checks.push(Check {
            name: name.to_string(),
            ok,
            expected,
            found,
        });
        if !ok {
            report.verdict = Verdict::Rejected;
        }
    };
    let quote = match crate::encoding::from_b64(&challenge.quote) {
        Ok(q) => q,
        Err(e) => {
            push("challenge quote", false, "base64".into(), e.to_string());
            return;
        }
    };
    let report_data = match crate::encoding::hex_array::<64>(&challenge.report_data) {
        Ok(r) => r,
        Err(e) => {
            push("challenge proof", false, "64 bytes of REPORTDATA".into(), e);
            return;
        }
    };
    push(
        "challenge key",
        crate::encoding::hex(spki) == challenge.spki_sha256,
        format!(
            "the key of this connection (spki sha256 {})",
            crate::encoding::hex(spki)
        ),
        challenge.spki_sha256.clone(),
    );
    let proof = crate::challenge::merkle::Proof::try_from(challenge.proof.clone());
    match proof.map_err(|e| e.to_string()).and_then(|p| {
        crate::challenge::verify_challenge(nonce, spki, &report_data, &p).map_err(|e| e.to_string())
    }) {
        Ok(()) => push(
            "challenge proof",
            true,
            "our nonce in the Merkle tree under REPORTDATA[0..32]".into(),
            "included".into(),
        ),
        Err(e) => push(
            "challenge proof",
            false,
            "our nonce in the Merkle tree under REPORTDATA[0..32]".into(),
            e,
        ),
    }
    let collateral =
        match Collateral::from_bundle_json(&evidence.collateral.to_string(), "agent evidence")
            .and_then(Collateral::prepare)
        {
            Ok(c) => c,
            Err(e) => {
                push(
                    "challenge quote",
                    false,
                    "verifiable collateral".into(),
                    e.to_string(),
                );
                return;
            }
        };
    let fresh = verifier.appraise(
        &quote,
        &collateral,
        now,
        policy,
        &Expectations {
            report_data: Some(report_data),
        },
    );
    push(
        "challenge quote",
        fresh.accepted(),
        "a quote that passes every check".into(),
        fresh.summary(),
    );
    let same_td = report
        .measurements
        .as_ref()
        .zip(fresh.measurements.as_ref())
        .map(|(a, b)| {
            // RTMR3 too: the certificate's events were appraised for its RTMR3 only.
            a.mrtd == b.mrtd
                && a.rtmr0 == b.rtmr0
                && a.rtmr1 == b.rtmr1
                && a.rtmr2 == b.rtmr2
                && a.rtmr3 == b.rtmr3
        });
    push(
        "challenge from the same TD",
        same_td == Some(true),
        "MRTD and RTMR0-3 equal to the certificate's quote".into(),
        match same_td {
            Some(true) => "equal".into(),
            Some(false) => "different".into(),
            None => "unknown".into(),
        },
    );
}
