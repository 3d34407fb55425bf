//! `attest`: verify one server once. Open an RA-TLS connection whose certificate passes the
//! policy and, when asked, prove the TD is live now with a fresh challenge on it.

use std::time::Duration;

use tdx_core::verify::Report;

use crate::{Alpn, Client, ClientError, Session, Target, Timeouts, challenge};

/// A one-shot verification can afford to wait longer than a proxy in front of live traffic.
pub const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(30),
    handshake: Duration::from_secs(30),
    answer: Duration::from_secs(120),
};

/// The report on `target`: its certificate's appraisal, with the fresh challenge's checks
/// when `fresh` is set. A server the policy refuses is [`ClientError::Rejected`] with the
/// whole report.
pub async fn attest(client: &Client, target: &Target, fresh: bool) -> Result<Report, ClientError> {
    let mut session = Session::open(client, target, Alpn::Http1, TIMEOUTS).await?;
    if fresh {
        challenge::fresh(client, &mut session).await
    } else {
        Ok((*session.report).clone())
    }
}

/// One verification with everything it was made on: the certificate the server presented,
/// its evidence document, and the challenge and its nonce.
pub struct Attested {
    pub peer_cert: Vec<u8>,
    pub fresh: challenge::Fresh,
}

/// A verification that failed, with the certificate the server presented when it got that
/// far: a refusal at the handshake is evidence too.
#[derive(Debug)]
pub struct Unattested {
    pub error: ClientError,
    pub peer_cert: Option<Vec<u8>>,
}

/// [`attest`] with a fresh challenge, keeping the evidence (for an archive auditors re-check).
pub async fn attest_recorded(client: &Client, target: &Target) -> Result<Attested, Unattested> {
    let (opened, presented) =
        Session::open_keeping_certificate(client, target, Alpn::Http1, TIMEOUTS).await;
    let mut session = opened.map_err(|error| Unattested {
        error,
        peer_cert: presented,
    })?;
    match challenge::fresh_with_evidence(client, &mut session).await {
        Ok(fresh) => Ok(Attested {
            peer_cert: session.peer_cert.clone(),
            fresh,
        }),
        Err(error) => Err(Unattested {
            error,
            peer_cert: Some(session.peer_cert.clone()),
        }),
    }
}
