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
use pyo3::exceptions::{PyConnectionError, PyException, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use tdx_client::connect::{ConnectOptions, ForwardError, Forwarder};
use tdx_client::{Client, ClientError, FailedCheck, Target};
use tdx_core::verify::{self, Collateral, Expectations, Verifier};

pyo3::create_exception!(
    _native,
    VerificationError,
    PyException,
    "The server or the evidence failed a check: `check`, `expected` and `found` name it. \
     Nothing of the request was sent."
);

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
    let rt = runtime()?;
    let result = py.detach(|| rt.block_on(tdx_client::attest::attest(&client, &target, nonce)));
    match result {
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

/// A streamed response body; `read()` returns the next chunk, or None at the end.
#[pyclass(module = "tdx_agent")]
pub struct ResponseBody {
    body: Option<hyper::body::Incoming>,
}

#[pymethods]
impl Transport {
    #[new]
    #[pyo3(signature = (url, *, policy, insecure_root = None, insecure_gpu_roots = None, rechallenge_secs = 300, max_request_bytes = 32 << 20))]
    fn new(
        url: &str,
        policy: PyRef<'_, Policy>,
        insecure_root: Option<Vec<u8>>,
        insecure_gpu_roots: Option<Vec<u8>>,
        rechallenge_secs: u64,
        max_request_bytes: u64,
    ) -> PyResult<Self> {
        let target = target_for(url)?;
        if target.path != "/" {
            return Err(PyValueError::new_err(format!(
                "{url}: give the server's origin https://HOST:PORT without a path; request \
                 paths (e.g. /v1/chat/completions) come from each request"
            )));
        }
        let client = client_for(&policy, insecure_root, insecure_gpu_roots)?;
        let options = ConnectOptions {
            rechallenge: Duration::from_secs(rechallenge_secs),
            max_request_bytes,
        };
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
        let rt = runtime()?;
        let result = py.detach(|| rt.block_on(self.forwarder.verify()));
        result.map_err(|e| forward_error(py, e))
    }

    /// Send one request; returns (status, headers, body). Raises VerificationError (nothing
    /// was sent), ConnectionError or ValueError.
    fn send(
        &self,
        py: Python<'_>,
        method: &str,
        path: &str,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    ) -> PyResult<(u16, RawHeaders, ResponseBody)> {
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
        let rt = runtime()?;
        let body = Bytes::from(body);
        let result = py.detach(|| rt.block_on(self.forwarder.send(method, path, map, body)));
        let response = result.map_err(|e| forward_error(py, e))?;
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
        Ok((
            parts.status.as_u16(),
            headers,
            ResponseBody { body: Some(body) },
        ))
    }
}

fn forward_error(py: Python<'_>, e: ForwardError) -> PyErr {
    match &e {
        ForwardError::Attestation { check, .. } => verification_error(py, e.to_string(), check),
        ForwardError::Unavailable { .. } | ForwardError::Failed { .. } => {
            PyConnectionError::new_err(e.to_string())
        }
        ForwardError::TooLarge { .. } | ForwardError::Invalid(_) => {
            PyValueError::new_err(e.to_string())
        }
    }
}

#[pymethods]
impl ResponseBody {
    /// The next chunk of the body as it arrives (the GIL is released while waiting), or None
    /// once it ended. A connection that fails mid-body raises ConnectionError.
    fn read(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyBytes>>> {
        let rt = runtime()?;
        loop {
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            let frame = py.detach(|| rt.block_on(body.frame()));
            match frame {
                None => {
                    self.body = None;
                    return Ok(None);
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Err(PyConnectionError::new_err(format!(
                        "the response body failed: {e}"
                    )));
                }
                Some(Ok(frame)) => {
                    // Trailers carry nothing an OpenAI client reads.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(PyBytes::new(py, &data).unbind()));
                    }
                }
            }
        }
    }

    /// Stop reading: the stream is reset, so the server stops generating.
    fn close(&mut self) {
        self.body = None;
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
    Ok(())
}
