//! One RA-TLS connection to an agent: TCP, a TLS handshake whose certificate the RA-TLS
//! verifier appraised against the policy, and HTTP/1.1 (`attest`) or HTTP/2 (`connect`, which
//! multiplexes every forwarded request over one connection) on top.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::{Client, ClientError, Timeouts};
use tdx_core::ratls::{RaTlsError, RaTlsVerifier, ring_provider};
use tdx_core::verify::Report;
use tdx_net::error_chain;

/// Errors a body may carry through the proxy; hyper wants them boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one request body type every connection sends, so a streamed proxy body and a small
/// JSON request can share a connection.
pub type ClientBody = BoxBody<Bytes, BoxError>;

/// The largest JSON answer read from an agent (evidence with collateral is ~100 KiB).
const MAX_JSON_RESPONSE: usize = 4 << 20;
/// HTTP/2 pings find a dead peer on an idle connection; the timeout is for the ping's answer
/// only, so a slow but healthy stream is never cut.
const H2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A server named by an `https://HOST:PORT` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As the user gave it, for messages.
    pub url: String,
    /// Without IPv6 brackets, for connecting and for SNI.
    pub host: String,
    pub port: u16,
    /// `host:port` as in the URL, for `Host` and `:authority`.
    pub authority: String,
    /// The URL's path ("/" when none was given).
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |detail: &str| ClientError::Url {
            url: url.to_string(),
            detail: detail.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("expected https://HOST:PORT"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information in the URL is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match authority_port(authority.as_str()) {
            None => 443,
            // `port_u16` reads an empty or out-of-range port as no port at all: connecting
            // to 443 instead would reach a server the user did not name.
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(bad(&format!(
                        "port {p:?} is not a port number (1 to 65535)"
                    )));
                }
            },
        };
        Ok(Target {
            url: url.to_string(),
            host,
            port,
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string(),
        })
    }

    /// HOST:PORT for messages (brackets around IPv6 addresses).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The text after the port's colon in `authority` (`host:port`, `[v6]:port`), if it has one.
fn authority_port(authority: &str) -> Option<&str> {
    let after_host = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    after_host.find(':').map(|i| &after_host[i + 1..])
}

/// `https://AUTHORITY/PATH?QUERY`: HTTP/2 takes the server's name from the URI (`:authority`).
pub fn absolute_uri(authority: &str, path_and_query: &str) -> Result<Uri, hyper::http::Error> {
    Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
}

/// Which HTTP version to speak, offered (alone) in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Http2,
}

impl Alpn {
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::Http1 => b"http/1.1",
            Alpn::Http2 => b"h2",
        }
    }
}

/// The request side of an HTTP connection over RA-TLS.
pub enum HttpSender {
    Http1(http1::SendRequest<ClientBody>),
    Http2(http2::SendRequest<ClientBody>),
}

impl std::fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpSender::Http1(_) => "HttpSender::Http1",
            HttpSender::Http2(_) => "HttpSender::Http2",
        })
    }
}

impl HttpSender {
    /// The connection is gone (closed by either side, GOAWAY included, or failed).
    pub fn is_closed(&self) -> bool {
        match self {
            HttpSender::Http1(s) => s.is_closed(),
            HttpSender::Http2(s) => s.is_closed(),
        }
    }

    /// Another handle on an HTTP/2 connection, for concurrent requests; `None` for HTTP/1.
    pub fn http2(&self) -> Option<http2::SendRequest<ClientBody>> {
        match self {
            HttpSender::Http1(_) => None,
            HttpSender::Http2(s) => Some(s.clone()),
        }
    }

    /// Send `req` once the connection can take it. `req` carries an origin-form path; the
    /// server's name goes where the protocol wants it (`Host` or `:authority`).
    pub async fn send(
        &mut self,
        authority: &str,
        mut req: Request<ClientBody>,
    ) -> Result<Response<hyper::body::Incoming>, ClientError> {
        let what = format!("{} {}", req.method(), req.uri());
        let http = |e: hyper::Error| ClientError::Http {
            what: what.clone(),
            detail: error_chain(&e),
        };
        match self {
            HttpSender::Http1(s) => {
                let host = hyper::header::HeaderValue::from_str(authority)
                    .map_err(|e| ClientError::Setup(format!("Host {authority:?}: {e}")))?;
                req.headers_mut().insert(hyper::header::HOST, host);
                // An HTTP/1 connection takes one request at a time: wait until the previous
                // one is done.
                s.ready().await.map_err(http)?;
                s.send_request(req).await.map_err(http)
            }
            HttpSender::Http2(s) => {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                *req.uri_mut() = absolute_uri(authority, &pq).map_err(|e| {
                    ClientError::Setup(format!("request URI for {authority}{pq}: {e}"))
                })?;
                s.ready().await.map_err(http)?;
                s.send_request(req).await.map_err(http)
            }
        }
    }
}

/// A verified connection: the certificate's appraisal (accepted) and the HTTP sender.
#[derive(Debug)]
pub struct Session {
    pub target: Target,
    /// The certificate the server presented (DER).
    pub peer_cert: Vec<u8>,
    /// SHA-256 of its SubjectPublicKeyInfo: the key a challenge must commit to.
    pub spki_sha256: [u8; 32],
    /// The accepted appraisal of the certificate's evidence (RA-TLS verifier, cached per
    /// certificate).
    pub report: Arc<Report>,
    pub sender: HttpSender,
    /// [`Timeouts::answer`], for [`Session::request`].
    answer_timeout: std::time::Duration,
    /// The task dispatching requests onto the connection: aborting it refuses every request
    /// still queued and every later one.
    connection: tokio::task::AbortHandle,
}

impl Session {
    /// Take no more requests on this connection (for a server that just failed a check):
    /// requests queued for it or sent after this are refused, never sent. Streams already in
    /// flight finish (hyper drives the HTTP/2 connection itself in a task of its own).
    pub fn abort(&self) {
        self.connection.abort();
    }

    /// Connect to `target`, verify its RA-TLS certificate with `client`'s verifier, and
    /// start HTTP (`alpn`) on the connection. A certificate the policy refuses fails with
    /// [`ClientError::Rejected`] carrying the whole report.
    pub async fn open(
        client: &Client,
        target: &Target,
        alpn: Alpn,
        timeouts: Timeouts,
    ) -> Result<Session, ClientError> {
        Self::open_recording(client, target, alpn, timeouts, false)
            .await
            .0
    }

    /// [`Session::open`], also returning the certificate the server presented, whatever
    /// became of it: an archive keeps the certificates of servers refused at the handshake
    /// so auditors can re-appraise the refusal.
    pub async fn open_keeping_certificate(
        client: &Client,
        target: &Target,
        alpn: Alpn,
        timeouts: Timeouts,
    ) -> (Result<Session, ClientError>, Option<Vec<u8>>) {
        Self::open_recording(client, target, alpn, timeouts, true).await
    }

    /// Copying the presented certificate costs a handshake its size in bytes: only callers
    /// that keep it ask.
    async fn open_recording(
        client: &Client,
        target: &Target,
        alpn: Alpn,
        timeouts: Timeouts,
        keep_presented: bool,
    ) -> (Result<Session, ClientError>, Option<Vec<u8>>) {
        let recorder = Arc::new(ConnectionVerifier {
            ratls: Arc::clone(client.ratls()),
            outcome: Mutex::new(None),
            presented: keep_presented.then(|| Mutex::new(None)),
        });
        let opened = Self::open_with(client, target, alpn, timeouts, &recorder).await;
        let presented = recorder
            .presented
            .as_ref()
            .and_then(|p| p.lock().unwrap_or_else(|p| p.into_inner()).take());
        (opened, presented)
    }

    async fn open_with(
        client: &Client,
        target: &Target,
        alpn: Alpn,
        timeouts: Timeouts,
        recorder: &Arc<ConnectionVerifier>,
    ) -> Result<Session, ClientError> {
        let addr = target.addr();
        let mut tls = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(recorder) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.id().to_vec()];
        // A resumed TLS session skips certificate verification; every connection must show
        // its certificate to the RA-TLS verifier (whose cache makes that cheap).
        tls.resumption = rustls::client::Resumption::disabled();
        let server_name =
            ServerName::try_from(target.host.clone()).map_err(|e| ClientError::Url {
                url: target.url.clone(),
                detail: format!("{}: {e}", target.host),
            })?;

        let tcp = tokio::time::timeout(
            timeouts.connect,
            tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| ClientError::Connect {
            addr: addr.clone(),
            detail: "connection timed out".into(),
        })?
        .map_err(|e| ClientError::Connect {
            addr: addr.clone(),
            detail: e.to_string(),
        })?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let handshake =
            tokio::time::timeout(timeouts.handshake, connector.connect(server_name, tcp)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(match recorder.take() {
                    // The evidence was appraised and refused: a verdict, not an I/O error.
                    Some(Appraisal::Rejected(report)) => ClientError::Rejected(report),
                    Some(Appraisal::Refused(detail)) => ClientError::Refused { addr, detail },
                    _ => ClientError::Handshake {
                        addr,
                        detail: error_chain(&e),
                    },
                });
            }
            Err(_) => {
                return Err(ClientError::Handshake {
                    addr,
                    detail: format!("no answer within {} s", timeouts.handshake.as_secs()),
                });
            }
        };
        let conn = stream.get_ref().1;
        if alpn == Alpn::Http2 && conn.alpn_protocol() != Some(alpn.id()) {
            return Err(ClientError::Handshake {
                addr,
                detail: "the server did not agree to HTTP/2 (ALPN h2)".into(),
            });
        }
        let peer_cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| ClientError::Handshake {
                addr: addr.clone(),
                detail: "the server sent no certificate".into(),
            })?;
        let report = match recorder.take() {
            Some(Appraisal::Accepted(r)) => r,
            // Unreachable with resumption off; the verifier's cache still knows the answer.
            _ => client
                .ratls()
                .report_for(&peer_cert, tdx_core::verify::time::now_unix())
                .ok_or_else(|| {
                    ClientError::Setup("the RA-TLS verifier produced no report".into())
                })?,
        };
        let spki_sha256 = spki_sha256(&peer_cert)?;

        let io = TokioIo::new(stream);
        let (sender, connection) = match alpn {
            Alpn::Http1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(|e| ClientError::Http {
                    what: "HTTP over RA-TLS".into(),
                    detail: error_chain(&e),
                })?;
                let task = tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %error_chain(&e), "HTTP/1.1 connection ended");
                    }
                });
                (HttpSender::Http1(sender), task.abort_handle())
            }
            Alpn::Http2 => {
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true);
                let (sender, conn) =
                    tokio::time::timeout(timeouts.handshake, builder.handshake(io))
                        .await
                        .map_err(|_| ClientError::Handshake {
                            addr: addr.clone(),
                            detail: "HTTP/2 handshake timed out".into(),
                        })?
                        .map_err(|e| ClientError::Http {
                            what: "HTTP/2 over RA-TLS".into(),
                            detail: error_chain(&e),
                        })?;
                let addr = addr.clone();
                let task = tokio::spawn(async move {
                    match conn.await {
                        Ok(()) => tracing::debug!(server = %addr, "HTTP/2 connection closed"),
                        Err(e) => {
                            tracing::debug!(server = %addr, error = %error_chain(&e), "HTTP/2 connection failed")
                        }
                    }
                });
                (HttpSender::Http2(sender), task.abort_handle())
            }
        };
        let mut session = Session {
            target: target.clone(),
            peer_cert,
            spki_sha256,
            report,
            sender,
            answer_timeout: timeouts.answer,
            connection,
        };
        // The GPUs the policy requires are part of the server's appraisal: no request
        // goes out on a session whose GPUs fail.
        super::gpus::check_session(client, &mut session).await?;
        Ok(session)
    }

    /// One request with a small body; the answer's status and body (at most 4 MiB).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let what = format!("{method} {path}");
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(
                Full::new(Bytes::from(body.unwrap_or_default()))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .map_err(|e| ClientError::Setup(format!("{what}: {e}")))?;
        let authority = self.target.authority.clone();
        let limit = self.answer_timeout;
        let answer = async {
            let resp = self.sender.send(&authority, req).await?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_JSON_RESPONSE)
                .collect()
                .await
                .map_err(|e| ClientError::Http {
                    what: what.clone(),
                    detail: error_chain(&*e),
                })?
                .to_bytes();
            Ok((status, bytes))
        };
        // A server that stops sending mid-answer (or never answers) must not hold the
        // caller forever.
        tokio::time::timeout(limit, answer)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Http {
                    what: what.clone(),
                    detail: format!("no complete answer within {} s", limit.as_secs()),
                })
            })
    }

    /// A request whose successful answer is JSON of type `T`.
    pub async fn request_json<T: serde::de::DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.request(method, path, body).await?;
        let what = format!("{method} {path}");
        if !status.is_success() {
            return Err(ClientError::Status {
                what,
                status: status.as_u16(),
                body: quoted_excerpt(&bytes),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Malformed {
            what,
            detail: e.to_string(),
        })
    }
}

/// The most of a server's error answer that an error message quotes.
const EXCERPT_CHARS: usize = 512;

/// A server's error answer as an error message may quote it: at most [`EXCERPT_CHARS`]
/// characters, control characters escaped. It ends up in logs, in 502 answers and in
/// `/healthz`, and the server chose every byte of it (up to the 4 MiB a small answer may be).
fn quoted_excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push_str("... (cut)");
    }
    out
}

fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], ClientError> {
    tdx_core::ratls::certificate_spki_sha256(cert_der).map_err(|e| ClientError::Malformed {
        what: "server certificate".into(),
        detail: e.to_string(),
    })
}

/// What the RA-TLS verifier said about this one connection's certificate.
#[derive(Clone, Debug)]
enum Appraisal {
    Accepted(Arc<Report>),
    Rejected(Box<Report>),
    /// Refused before any quote was appraised; the reason.
    Refused(String),
}

/// Wraps the shared [`RaTlsVerifier`] (and so its cache) for one connection, keeping that
/// connection's own verdict: the shared verifier's "last report" may belong to another
/// connection by the time a handshake fails.
#[derive(Debug)]
struct ConnectionVerifier {
    ratls: Arc<RaTlsVerifier>,
    outcome: Mutex<Option<Appraisal>>,
    /// The end-entity certificate the server presented (DER), accepted or not; kept only
    /// when the caller asked (`Some`).
    presented: Option<Mutex<Option<Vec<u8>>>>,
}

impl ConnectionVerifier {
    fn take(&self) -> Option<Appraisal> {
        // A poisoned lock still holds a whole value: it is only ever replaced.
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn record(&self, a: Appraisal) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(a);
    }
}

impl ServerCertVerifier for ConnectionVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        // The server's identity is its quote and our policy, not a DNS name.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(p) = &self.presented {
            *p.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.to_vec());
        }
        match self
            .ratls
            .verify_certificate(end_entity, tdx_core::ratls::verifier::unix_secs(now)?)
        {
            Ok(report) => {
                self.record(Appraisal::Accepted(report));
                Ok(ServerCertVerified::assertion())
            }
            Err(RaTlsError::QuoteRejected(report)) => {
                self.record(Appraisal::Rejected(report.clone()));
                Err(RaTlsError::QuoteRejected(report).into())
            }
            Err(e) => {
                self.record(Appraisal::Refused(e.to_string()));
                Err(e.into())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ratls.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ratls.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.ratls.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_quoted_short_and_without_control_characters() {
        assert_eq!(quoted_excerpt(b"not ready\n"), "not ready\\n");
        let long = vec![b'x'; 1 << 20];
        let q = quoted_excerpt(&long);
        assert_eq!(q.len(), EXCERPT_CHARS + "... (cut)".len());
        assert!(q.ends_with("... (cut)"));
        assert_eq!(quoted_excerpt(b"\x1b[31mred"), "\\u{1b}[31mred");
    }

    #[test]
    fn targets_parse_and_refuse_what_is_not_https() {
        let t = Target::parse("https://10.0.0.5:8443").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path.as_str()
            ),
            ("10.0.0.5", 8443, "10.0.0.5:8443", "/")
        );
        assert_eq!(t.addr(), "10.0.0.5:8443");
        let t = Target::parse("https://[::1]:9443/v1").unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("::1", "/v1"));
        assert_eq!(
            (t.addr().as_str(), t.authority.as_str()),
            ("[::1]:9443", "[::1]:9443")
        );
        assert_eq!(Target::parse("https://agent.example").unwrap().port, 443);
        for bad in [
            "http://h:1",
            "h:1",
            "https://",
            "https://u:p@h:1",
            "not a url",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        // A port that is there but not a port is refused, never read as the default 443.
        for (bad, port) in [
            ("https://agent:84430", "84430"),
            ("https://agent:", ""),
            ("https://agent:0", "0"),
            ("https://agent:+443", "+443"),
            ("https://[::1]:70000/v1", "70000"),
            ("https://[::1]:", ""),
        ] {
            match Target::parse(bad) {
                Err(ClientError::Url { url, detail }) => {
                    assert_eq!(url, bad);
                    assert!(
                        detail.contains(&format!("port {port:?}")),
                        "{bad}: {detail}"
                    );
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(Target::parse("https://[::1]").unwrap().port, 443);
        assert_eq!(Target::parse("https://agent:65535").unwrap().port, 65535);
    }

    #[tokio::test]
    async fn transport_errors_name_their_cause() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A "server" that takes the request and answers with a frame no HTTP/2 peer sends: a
        // SETTINGS frame of 5 bytes (a multiple of 6 is required). hyper's own message is
        // "http2 error"; that it was the peer's protocol error is in its source.
        let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut preface = [0u8; 24];
            server_io.read_exact(&mut preface).await?;
            loop {
                let mut head = [0u8; 9];
                server_io.read_exact(&mut head).await?;
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                server_io.read_exact(&mut payload).await?;
                // HEADERS: the request is on its way.
                if head[3] == 1 {
                    break;
                }
            }
            server_io
                .write_all(&[0, 0, 5, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5])
                .await?;
            // Held open: the client, not a hang-up, ends the connection.
            let mut rest = Vec::new();
            server_io.read_to_end(&mut rest).await.map(|_| ())
        });
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, ClientBody>(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/v1/models")
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap();
        let e = HttpSender::Http2(sender)
            .send("h:1", req)
            .await
            .expect_err("the connection failed");
        let ClientError::Http { detail, .. } = &e else {
            panic!("{e:?}");
        };
        assert!(
            detail.starts_with("http2 error: ") && detail.contains("protocol error"),
            "{detail}"
        );
    }

    #[test]
    fn absolute_uris_name_the_server() {
        let u = absolute_uri("h:8443", "/v1/models?x=1").unwrap();
        assert_eq!(u.to_string(), "https://h:8443/v1/models?x=1");
    }
}
