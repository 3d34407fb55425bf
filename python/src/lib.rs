//! `tdx_agent._native`: the Python binding of the verifier core (tdx-core) and the client
//! (tdx-client). Verdicts are reached by the same code as the CLI's; blocking calls release
//! the GIL, and network work runs on one small tokio runtime owned by the module.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use pyo3::exceptions::{
    PyConnectionError, PyException, PyOSError, PyRuntimeError, PyTimeoutError, PyTypeError,
    PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tdx_client::connect::{ConnectOptions, Deadlines, ForwardError, Forwarder, Pinning};
use tdx_client::{Client, ClientError, FailedCheck, Target};
use tdx_core::verify::{self, Collateral, Expectations, Verifier};

// The module named is the one users import them from, so the exceptions pickle (multiprocessing).
pyo3::create_exception!(
    tdx_agent,
    VerificationError,
    PyException,
    "The server or the evidence failed a check: `check`, `expected` and `found` name it. \
     Nothing of the request was sent."
);
pyo3::create_exception!(
    tdx_agent,
    RequestFailedError,
    PyConnectionError,
    "The request went out over the verified connection, which failed before the answer \
     ended: the server may have acted on it, so retry only what is safe to repeat."
);
pyo3::create_exception!(
    tdx_agent,
    ConnectTimeoutError,
    PyTimeoutError,
    "No verified connection (connect, handshake, certificate policy, challenge) within the \
     connect timeout: nothing of the request was sent."
);
pyo3::create_exception!(
    tdx_agent,
    ReadTimeoutError,
    PyTimeoutError,
    "The answer's head, or the next chunk of its body, did not come within the read timeout \
     (the request was sent)."
);

/// How often a blocking call wakes to let Python run its signal handlers (Ctrl-C).
const SIGNAL_TICK: Duration = Duration::from_millis(100);

/// Run `fut` on the module's runtime with the GIL released, waking every [`SIGNAL_TICK`] to
/// let Python handle signals: Ctrl-C raises KeyboardInterrupt at once and drops `fut`, which
/// cancels it (a connection attempt, a request, a read).
fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    let mut fut = std::pin::pin!(fut);
    loop {
        let done = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(SIGNAL_TICK, fut.as_mut()).await.ok() })
        });
        if let Some(out) = done {
            return Ok(out);
        }
        py.check_signals()?;
    }
}

/// A timeout argument in seconds: None waits as long as the connection's own limits allow;
/// anything else must be a finite number of seconds, zero or more.
fn seconds(name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    value
        .map(|v| {
            Duration::try_from_secs_f64(v).map_err(|_| {
                PyValueError::new_err(format!(
                    "{name}: {v} is not a number of seconds (finite, 0 or more)"
                ))
            })
        })
        .transpose()
}

/// The module's runtime: two workers are plenty for a client, and a process that never
/// makes a network call never starts it.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tdx-agent")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| PyRuntimeError::new_err(format!("tdx_agent: cannot start its runtime: {e}")))
}

fn verification_error(py: Python<'_>, message: String, check: &FailedCheck) -> PyErr {
    let err = VerificationError::new_err(message);
    let value = err.value(py);
    // Setting attributes on a fresh exception instance cannot fail short of memory exhaustion;
    // the message names the check either way.
    let _ = value.setattr("check", check.name.clone());
    let _ = value.setattr("expected", check.expected.clone());
    let _ = value.setattr("found", check.found.clone());
    err
}

/// An appraisal policy (docs/formats.md "Policy"). `Policy()` pins nothing: any genuine TD on
/// an accepted platform passes.
#[pyclass(frozen, module = "tdx_agent")]
#[derive(Clone)]
pub struct Policy {
    inner: verify::Policy,
    source: String,
}

#[pymethods]
impl Policy {
    #[new]
    fn new() -> Self {
        Policy {
            inner: verify::Policy::default(),
            source: "the default policy".into(),
        }
    }

    /// Parse a policy from TOML text; unknown keys and bad values raise ValueError naming them.
    #[staticmethod]
    fn from_toml(text: &str) -> PyResult<Self> {
        let inner = verify::Policy::from_toml(text, "policy")
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Policy {
            inner,
            source: "TOML text".into(),
        })
    }

    /// Read and parse a policy file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let read = py.detach(|| std::fs::read_to_string(&path));
        let text =
            read.map_err(|e| PyOSError::new_err(format!("policy {}: {e}", path.display())))?;
        let source = path.display().to_string();
        let inner = verify::Policy::from_toml(&text, &source)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Policy { inner, source })
    }

    /// Whether the policy pins any measurement (MRTD, RTMRs, owner registers, events).
    #[getter]
    fn pins_anything(&self) -> bool {
        self.inner.pins_anything()
    }

    /// The image registers (of MRTD, RTMR0-2) the policy leaves unpinned: the transport
    /// forwards only under a policy where this is empty, unless `insecure_no_policy=True`.
    #[getter]
    fn unpinned_image_registers(&self) -> Vec<&'static str> {
        self.inner.measurements.unpinned_image_registers()
    }

    fn __repr__(&self) -> String {
        format!("<tdx_agent.Policy from {}>", self.source)
    }
}

/// One check of a report: what was expected and what was found.
#[pyclass(frozen, get_all, module = "tdx_agent")]
#[derive(Clone)]
pub struct Check {
    name: String,
    ok: bool,
    expected: String,
    found: String,
}

#[pymethods]
impl Check {
    fn __repr__(&self) -> String {
        format!(
            "<Check {:?} {}: expected {:?}, found {:?}>",
            self.name,
            if self.ok { "passed" } else { "FAILED" },
            self.expected,
            self.found
        )
    }
}

/// An appraisal report (docs/formats.md "Report"). Read-only: only the verifier makes one.
#[pyclass(frozen, module = "tdx_agent")]
pub struct Report {
    inner: verify::Report,
}

#[pymethods]
impl Report {
    /// "accepted" or "rejected".
    #[getter]
    fn verdict(&self) -> &'static str {
        match self.inner.verdict() {
            verify::Verdict::Accepted => "accepted",
            verify::Verdict::Rejected => "rejected",
        }
    }

    #[getter]
    fn accepted(&self) -> bool {
        self.inner.accepted()
    }

    /// Every check that ran, in order.
    #[getter]
    fn checks(&self) -> Vec<Check> {
        self.inner
            .checks()
            .iter()
            .map(|c| Check {
                name: c.name.clone(),
                ok: c.ok,
                expected: c.expected.clone(),
                found: c.found.clone(),
            })
            .collect()
    }

    /// Checks that did not run because an earlier one failed.
    #[getter]
    fn not_evaluated(&self) -> Vec<String> {
        self.inner.not_evaluated().to_vec()
    }

    /// The quote's registers and attributes, lowercase hex (`mrtd`, `rtmr0`..`rtmr3`, ...),
    /// or None when the quote could not be parsed.
    #[getter]
    fn measurements<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(m) = self.inner.measurements() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        for (k, v) in [
            ("mrtd", &m.mrtd),
            ("rtmr0", &m.rtmr0),
            ("rtmr1", &m.rtmr1),
            ("rtmr2", &m.rtmr2),
            ("rtmr3", &m.rtmr3),
            ("mrconfigid", &m.mrconfigid),
            ("mrowner", &m.mrowner),
            ("mrownerconfig", &m.mrownerconfig),
            ("mrseam", &m.mrseam),
            ("report_data", &m.report_data),
            ("td_attributes", &m.td_attributes),
            ("xfam", &m.xfam),
            ("tee_tcb_svn", &m.tee_tcb_svn),
            ("mrservicetd", &m.mrservicetd),
        ] {
            d.set_item(k, v)?;
        }
        Ok(Some(d))
    }

    #[getter]
    fn tcb_status(&self) -> Option<String> {
        self.inner.tcb_status().map(str::to_string)
    }

    #[getter]
    fn advisory_ids(&self) -> Vec<String> {
        self.inner.advisory_ids().to_vec()
    }

    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.warnings().to_vec()
    }

    #[getter]
    fn verified_at(&self) -> String {
        self.inner.verified_at().to_string()
    }

    /// The report as the CLI's `--json` prints it.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// One line: accepted with its TCB status, or the first failing check.
    fn summary(&self) -> String {
        self.inner.summary()
    }

    fn __str__(&self) -> String {
        self.inner.render_text()
    }

    fn __repr__(&self) -> String {
        format!("<tdx_agent.Report {}>", self.inner.summary())
    }

    /// A report is neither true nor false: `if report:` would pass a rejected server.
    fn __bool__(&self) -> PyResult<bool> {
        Err(PyTypeError::new_err(
            "a Report has no truth value: test report.accepted",
        ))
    }
}

fn verifier_for(insecure_root: Option<Vec<u8>>) -> Verifier {
    match insecure_root {
        Some(der) => Verifier::with_insecure_root(der),
        None => Verifier::production(),
    }
}

/// Appraise a quote (binary, or hex text) against a collateral bundle (docs/formats.md) at
/// `at` (Unix seconds; now when None), as `tdx-agent verify` does. A rejected quote is a
/// report with `accepted == False`; an unreadable bundle raises ValueError.
#[pyfunction]
#[pyo3(signature = (quote, collateral, *, policy = None, at = None, insecure_root = None))]
fn verify_quote(
    py: Python<'_>,
    quote: Vec<u8>,
    collateral: Vec<u8>,
    policy: Option<PyRef<'_, Policy>>,
    at: Option<i64>,
    insecure_root: Option<Vec<u8>>,
) -> PyResult<Report> {
    let policy = policy.map(|p| p.inner.clone()).unwrap_or_default();
    let result = py.detach(move || -> Result<verify::Report, String> {
        let text = String::from_utf8(collateral)
            .map_err(|_| "collateral bundle: not UTF-8 text".to_string())?;
        let bundle = Collateral::from_bundle_json(&text, "collateral bundle")
            .and_then(Collateral::prepare)
            .map_err(|e| e.to_string())?;
        let quote = tdx_core::quote::decode_file(quote);
        let now = at.unwrap_or_else(verify::time::now_unix);
        Ok(verifier_for(insecure_root).appraise(
            &quote,
            &bundle,
            now,
            &policy,
            &Expectations::default(),
        ))
    });
    result
        .map(|inner| Report { inner })
        .map_err(PyValueError::new_err)
}

fn client_for(
    policy: &Policy,
    insecure_root: Option<Vec<u8>>,
    insecure_gpu_roots: Option<Vec<u8>>,
) -> PyResult<Client> {
    let client = Client::new(verifier_for(insecure_root), policy.inner.clone())
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    match insecure_gpu_roots {
        None => Ok(client),
        Some(pem) => tdx_core::gpu::GpuRoots::insecure_from_pem(&pem)
            .map(|roots| client.with_insecure_gpu_roots(roots))
            .map_err(|e| PyValueError::new_err(format!("insecure_gpu_roots: {e}"))),
    }
}

fn target_for(url: &str) -> PyResult<Target> {
    Target::parse(url).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Verify a running agent over RA-TLS, and with `nonce` a fresh challenge, as `tdx-agent
/// attest` does. A server the policy refuses gives a rejected report; one that cannot be
/// reached raises ConnectionError.
#[pyfunction]
#[pyo3(signature = (url, *, policy, nonce = true, insecure_root = None, insecure_gpu_roots = None))]
fn attest(
    py: Python<'_>,
    url: &str,
    policy: PyRef<'_, Policy>,
    nonce: bool,
    insecure_root: Option<Vec<u8>>,
    insecure_gpu_roots: Option<Vec<u8>>,
) -> PyResult<Report> {
    let target = target_for(url)?;
    let client = client_for(&policy, insecure_root, insecure_gpu_roots)?;
    match wait(py, tdx_client::attest::attest(&client, &target, nonce))? {
        Ok(inner) => Ok(Report { inner }),
        Err(ClientError::Rejected(report)) => Ok(Report { inner: *report }),
        Err(e) => match e.failed_check() {
            Some(check) => Err(verification_error(py, e.to_string(), &check)),
            None => Err(PyConnectionError::new_err(e.to_string())),
        },
    }
}

/// Header (name, value) pairs as httpx takes them.
type RawHeaders = Vec<(Py<PyBytes>, Py<PyBytes>)>;

/// The verified connection behind the httpx transports: `connect`'s forwarding, in process.
#[pyclass(frozen, module = "tdx_agent")]
pub struct Transport {
    forwarder: Forwarder,
}

/// A streamed response body; `read()` returns the next chunk, or None at the end. `close()`
/// may come from another thread while a `read()` waits: that read returns None.
#[pyclass(frozen, module = "tdx_agent")]
pub struct ResponseBody {
    body: tokio::sync::Mutex<Option<hyper::body::Incoming>>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl ResponseBody {
    fn new(body: hyper::body::Incoming) -> Self {
        ResponseBody {
            body: tokio::sync::Mutex::new(Some(body)),
            closed: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// Why a read got no chunk.
enum ReadFailure {
    Broken(String),
    Timeout(Duration),
}

#[pymethods]
impl Transport {
    #[new]
    #[pyo3(signature = (url, *, policy, insecure_root = None, insecure_gpu_roots = None, rechallenge_secs = 300, max_request_bytes = 32 << 20, insecure_no_policy = false))]
    fn new(
        url: &str,
        policy: PyRef<'_, Policy>,
        insecure_root: Option<Vec<u8>>,
        insecure_gpu_roots: Option<Vec<u8>>,
        rechallenge_secs: u64,
        max_request_bytes: u64,
        insecure_no_policy: bool,
    ) -> PyResult<Self> {
        // As for `tdx-agent connect`: requests go only where a measurement pin says, unless
        // the caller says in so many words that any genuine TD will do.
        Pinning::of(
            &policy.inner,
            &format!("policy ({})", policy.source),
            insecure_no_policy,
            "insecure_no_policy=True",
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let target = target_for(url)?;
        if target.path != "/" {
            return Err(PyValueError::new_err(format!(
                "{url}: give the server's origin https://HOST:PORT without a path; request \
                 paths (e.g. /v1/chat/completions) come from each request"
            )));
        }
        let client = client_for(&policy, insecure_root, insecure_gpu_roots)?;
        let options = ConnectOptions::new(rechallenge_secs, max_request_bytes)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Transport {
            forwarder: Forwarder::new(client, target, options),
        })
    }

    /// The verified server's host (without IPv6 brackets) and port.
    #[getter]
    fn host(&self) -> String {
        self.forwarder.target().host.clone()
    }

    #[getter]
    fn port(&self) -> u16 {
        self.forwarder.target().port
    }

    /// Verify the server now (certificate policy and a fresh challenge), as a request would.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        wait(py, self.forwarder.verify())?.map_err(|e| forward_error(py, e))
    }

    /// Send one request; returns (status, headers, body). Raises VerificationError or
    /// ConnectTimeoutError (nothing was sent), ConnectionError (nothing was sent),
    /// RequestFailedError or ReadTimeoutError (it was), or ValueError. `connect_timeout`
    /// bounds getting a verified connection, `read_timeout` the wait for the answer's head.
    #[pyo3(signature = (method, path, headers, body, *, connect_timeout = None, read_timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        method: &str,
        path: &str,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
        connect_timeout: Option<f64>,
        read_timeout: Option<f64>,
    ) -> PyResult<(u16, RawHeaders, ResponseBody)> {
        let deadlines = Deadlines {
            connect: seconds("connect_timeout", connect_timeout)?,
            answer: seconds("read_timeout", read_timeout)?,
        };
        let method = hyper::Method::from_bytes(method.as_bytes())
            .map_err(|e| PyValueError::new_err(format!("method {method:?}: {e}")))?;
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(&name).map_err(|e| {
                PyValueError::new_err(format!("header {:?}: {e}", String::from_utf8_lossy(&name)))
            })?;
            let value = HeaderValue::from_bytes(&value)
                .map_err(|e| PyValueError::new_err(format!("header {name}: {e}")))?;
            map.append(name, value);
        }
        let body = Bytes::from(body);
        let response = wait(
            py,
            self.forwarder
                .send_within(method, path, map, body, deadlines),
        )?
        .map_err(|e| forward_error(py, e))?;
        let (parts, body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    PyBytes::new(py, k.as_str().as_bytes()).unbind(),
                    PyBytes::new(py, v.as_bytes()).unbind(),
                )
            })
            .collect();
        Ok((parts.status.as_u16(), headers, ResponseBody::new(body)))
    }
}

fn forward_error(py: Python<'_>, e: ForwardError) -> PyErr {
    match &e {
        ForwardError::Attestation { check, .. } => verification_error(py, e.to_string(), check),
        ForwardError::Unavailable { .. } => PyConnectionError::new_err(e.to_string()),
        ForwardError::Failed { .. } => RequestFailedError::new_err(e.to_string()),
        ForwardError::ConnectTimeout { .. } => ConnectTimeoutError::new_err(e.to_string()),
        ForwardError::AnswerTimeout { .. } => ReadTimeoutError::new_err(e.to_string()),
        ForwardError::TooLarge { .. } | ForwardError::Invalid(_) => {
            PyValueError::new_err(e.to_string())
        }
    }
}

#[pymethods]
impl ResponseBody {
    /// The next chunk of the body as it arrives (the GIL is released while waiting), or None
    /// once it ended or was closed. A connection that fails mid-body raises
    /// RequestFailedError; no chunk within `timeout` seconds raises ReadTimeoutError.
    #[pyo3(signature = (timeout = None))]
    fn read(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyBytes>>> {
        let limit = seconds("timeout", timeout)?;
        let mut closed = self.closed.subscribe();
        let next = async {
            let mut body = self.body.lock().await;
            loop {
                let Some(incoming) = body.as_mut() else {
                    return Ok(None);
                };
                let frame = tokio::select! {
                    frame = incoming.frame() => frame,
                    _ = closed.wait_for(|c| *c) => None,
                };
                match frame {
                    None => {
                        *body = None;
                        return Ok(None);
                    }
                    Some(Err(e)) => {
                        *body = None;
                        return Err(ReadFailure::Broken(e.to_string()));
                    }
                    Some(Ok(frame)) => {
                        // Trailers carry nothing an OpenAI client reads.
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        };
        let next = async {
            match limit {
                None => next.await,
                Some(d) => tokio::time::timeout(d, next)
                    .await
                    .unwrap_or(Err(ReadFailure::Timeout(d))),
            }
        };
        match wait(py, next)? {
            Ok(chunk) => Ok(chunk.map(|data| PyBytes::new(py, &data).unbind())),
            Err(ReadFailure::Broken(e)) => Err(RequestFailedError::new_err(format!(
                "the response body failed: {e}"
            ))),
            Err(ReadFailure::Timeout(d)) => Err(ReadTimeoutError::new_err(format!(
                "no part of the response body within {:.3} s",
                d.as_secs_f64()
            ))),
        }
    }

    /// Stop reading: the stream is reset, so the server stops generating.
    fn close(&self) {
        self.closed.send_replace(true);
        // A read in progress holds the body and drops it itself when it sees `closed`.
        if let Ok(mut body) = self.body.try_lock() {
            *body = None;
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Policy>()?;
    m.add_class::<Check>()?;
    m.add_class::<Report>()?;
    m.add_class::<Transport>()?;
    m.add_class::<ResponseBody>()?;
    m.add_function(wrap_pyfunction!(verify_quote, m)?)?;
    m.add_function(wrap_pyfunction!(attest, m)?)?;
    m.add("VerificationError", m.py().get_type::<VerificationError>())?;
    m.add(
        "RequestFailedError",
        m.py().get_type::<RequestFailedError>(),
    )?;
    m.add(
        "ConnectTimeoutError",
        m.py().get_type::<ConnectTimeoutError>(),
    )?;
    m.add("ReadTimeoutError", m.py().get_type::<ReadTimeoutError>())?;
    Ok(())
}
