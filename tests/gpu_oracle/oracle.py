#!/usr/bin/env python3
"""Test oracle: NVIDIA's own GPU verifier (nv-local-gpu-verifier 2.7.3 from PyPI), run
in-process and offline on given evidence files, check by check.

This is NOT our verifier. It exists so that the Rust GPU verifier can be compared, check by
check, with what NVIDIA's code decides on the same bytes (tests/vectors/nvidia/README.md,
"How the oracle was run (offline)", describes the method; this file is that method).

Usage:  python oracle.py jobs.json  > results.json      (python = scripts/nvidia-oracle-env.sh)

jobs.json is a JSON list of jobs (see tests/gpu_oracle/README.md for the exact shapes):
  {"id", "arch": "hopper"|"blackwell", "report", "cert_chain", "nonce", "driver_rim", "vbios_rim",
   "ocsp": {"mode": "stub-good"} | {"mode": "stapled", "responses": [paths]},
   "verify_at": RFC 3339 UTC, "device_root_pem": path|null, "rim_root_pem": path|null}
stdout: a JSON list, one result per job, in order. NVIDIA's own log lines go into each result's
"log", never to stdout/stderr.

Every patch below is in-process (site-packages is never edited) and says why it exists.
"""

# --- Patch 0: no network, before anything else is imported. -----------------------------------
# The oracle must be offline and deterministic: NVIDIA's code would otherwise download RIMs from
# rim.attestation.nvidia.com and ask ocsp.ndis.nvidia.com. Any attempt now fails loudly instead.
import socket


def _network_disabled(*_args, **_kwargs):
    raise OSError("network access is disabled in the GPU oracle (offline run)")


socket.socket.connect = _network_disabled
socket.socket.connect_ex = _network_disabled
socket.create_connection = _network_disabled
socket.getaddrinfo = _network_disabled

import base64  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore")  # NVIDIA's deprecation warning, cryptography's UTC warnings


def _import_nvidia():
    # verifier.config, on import, deletes and re-creates ./verifier.log in the current directory
    # (a DEBUG file log). Import it from a scratch directory so no caller's tree is touched.
    cwd = os.getcwd()
    scratch = tempfile.mkdtemp(prefix="nvoracle-")
    os.chdir(scratch)
    try:
        import verifier.config  # noqa: F401
        import verifier.cc_admin  # noqa: F401
    finally:
        os.chdir(cwd)
    return scratch


_SCRATCH = _import_nvidia()

import jwt  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.x509 import ocsp  # noqa: E402
from OpenSSL import crypto  # noqa: E402

import verifier  # noqa: E402
from verifier import cc_admin  # noqa: E402
from verifier.attestation import AttestationReport  # noqa: E402
from verifier.cc_admin_utils import CcAdminUtils  # noqa: E402
from verifier.config import (  # noqa: E402
    GPU_ARCHITECTURE_MAP,
    BaseSettings,
    BlackwellSettings,
    HopperSettings,
    event_log,
    info_log,
)
from verifier.exceptions import RIMFetchError  # noqa: E402
from verifier.nvml import NvmlHandler  # noqa: E402
from verifier.nvml.gpu_cert_chains import GpuCertificateChains  # noqa: E402
from verifier.nvml.test_handle import TestHandle  # noqa: E402
from verifier.rim import RIM  # noqa: E402
from verifier.utils import format_vbios_version  # noqa: E402
from verifier.verifier import Verifier  # noqa: E402

# --- Logging: capture NVIDIA's log instead of printing it. -----------------------------------
# info_log prints to stdout (it would corrupt our JSON); event_log is a DEBUG file log in the
# scratch directory (slow, and nobody reads it). Behaviour is unchanged: only handlers move.
for _h in list(event_log.handlers):
    event_log.removeHandler(_h)
    _h.close()
event_log.addHandler(logging.NullHandler())
event_log.propagate = False
for _h in list(info_log.handlers):
    info_log.removeHandler(_h)
info_log.propagate = False
try:
    os.remove(os.path.join(_SCRATCH, "verifier.log"))
    os.rmdir(_SCRATCH)
except OSError:
    pass


class _Capture(logging.Handler):
    """Collects info_log records of the current phase (attest, or one independent check)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def take(self):
        recs, self.records = self.records, []
        return recs


_CAPTURE = _Capture()
info_log.addHandler(_CAPTURE)


def _msg(record):
    try:
        return record.getMessage()
    except Exception:  # NVIDIA has a few malformed log calls (extra args); keep the text
        return str(record.msg)


def _lines(records):
    # one entry per line of each message, stripped (NVIDIA indents with tabs and wraps some
    # messages over several lines)
    return [line.strip() for r in records for line in _msg(r).split("\n") if line.strip()]


# --- Patch 1: the verification time. ----------------------------------------------------------
# NVIDIA checks certificate validity only through OpenSSL: its own chain checks
# (CcAdminUtils.verify_certificate_chain: device chain, RIM signing chain, OCSP responder chain)
# and signxml's check of the RIM's X509Data chain both build a crypto.X509StoreContext over an
# X509Store, and OpenSSL reads the wall clock there. Setting the store's time when each context
# is created makes every one of them see verify_at. Nothing else in NVIDIA's code reads the clock
# for validity: the notAfter read in verify_certificate_chain only feeds the reported "earliest
# expiration" string, OCSP thisUpdate/nextUpdate are never looked at, and ClaimsUtils'
# datetime.utcnow() only stamps the JWT's nbf/exp/iat (dropped from our output).
_VERIFY_AT = None
_orig_store_ctx_init = crypto.X509StoreContext.__init__


def _store_ctx_init(self, store, certificate, chain=None):
    if _VERIFY_AT is not None:
        store.set_time(_VERIFY_AT)
    _orig_store_ctx_init(self, store, certificate, chain)


crypto.X509StoreContext.__init__ = _store_ctx_init

# --- Patch 2: pinned roots. -------------------------------------------------------------------
# NVIDIA loads verifier_device_root.pem through BaseSettings.DEVICE_ROOT_CERT (read by
# GpuCertificateChains.__init__, which drops the GPU's own last certificate and appends it) and
# verifier_RIM_root.pem through BaseSettings.RIM_ROOT_CERT (RIM.verify appends it to the RIM's
# chain; RIM.verify_signature gives it to signxml as ca_pem_file). Both are class attributes with
# absolute paths; for evidence signed by a simulated PKI they point at the job's files instead.
# (signxml also gets ca_path=ROOT_CERT_DIR, NVIDIA's certs folder; it has no OpenSSL hash links,
# so it adds no trust and is left alone.)
PINNED_DEVICE_ROOT = BaseSettings.DEVICE_ROOT_CERT
PINNED_RIM_ROOT = BaseSettings.RIM_ROOT_CERT

# --- Patch 3: no NVML. ------------------------------------------------------------------------
# attest()'s failure path asks NVML whether the GPU is in CC DevTools mode (even in user mode);
# there is no GPU here. The evidence is treated as from a production (non-DevTools) GPU.
NvmlHandler.is_cc_dev_mode = staticmethod(lambda: False)


# --- Patch 4: RIM downloads fail. -------------------------------------------------------------
# With no RIM supplied, attest() downloads it; offline that is an error, which attest() turns
# into RIMFetchError("Unable to fetch driver RIM from RIM service: <id>").
def _fetch_rim_file_offline(file_id):
    raise RIMFetchError(f"offline oracle: RIM {file_id} not supplied")


CcAdminUtils.fetch_rim_file = staticmethod(_fetch_rim_file_offline)

# --- Patch 5: OCSP. ---------------------------------------------------------------------------
# "stub-good": the whole revocation check is replaced by a stub that says "good" (revocation
# is not checked). "stapled": NVIDIA's own ocsp_certificate_chain_validation runs unchanged and
# only the network send is replaced by a lookup of a stapled response by certificate serial.
_ORIG_OCSP_VALIDATION = CcAdminUtils.ocsp_certificate_chain_validation
_ORIG_SEND_OCSP = CcAdminUtils.send_ocsp_request


def _ocsp_stub_good(cert_chain, settings, mode):
    return True, "", "good", None


class _Stapled:
    def __init__(self, paths):
        self.responses = []  # (name, OCSPResponse)
        for p in paths:
            self.responses.append((os.path.basename(p), _load_ocsp_response(p)))
        self.lookups = []

    def send(self, data):
        req = ocsp.load_der_ocsp_request(data)
        found = [(n, r) for n, r in self.responses
                 if r.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
                 and r.serial_number == req.serial_number]
        if len(found) > 1:  # same serial from two issuers: use the issuer key hash too
            found = [(n, r) for n, r in found if r.issuer_key_hash == req.issuer_key_hash] or found
        entry = {"serial": format(req.serial_number, "x"), "response": None}
        self.lookups.append(entry)
        if not found:
            # what NVIDIA's send_ocsp_request raises when the network call fails
            raise Exception("OCSP request failed") from LookupError(
                f"no stapled OCSP response for serial {req.serial_number:x}")
        name, resp = found[0]
        entry.update(_describe_ocsp(name, resp))
        return resp


def _load_ocsp_response(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return ocsp.load_der_ocsp_response(raw)
    except ValueError:  # the vectors keep them base64 (go-nvattest-tools' .dat files)
        return ocsp.load_der_ocsp_response(base64.b64decode(raw))


def _describe_ocsp(name, resp):
    d = {"response": name}
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        d["response_status"] = resp.response_status.name
        return d
    d["cert_status"] = resp.certificate_status.name.lower()
    d["revocation_reason"] = resp.revocation_reason.name if resp.revocation_reason else None
    d["this_update"] = resp.this_update.isoformat()
    d["next_update"] = resp.next_update.isoformat() if resp.next_update else None
    try:
        d["responder"] = resp.certificates[0].subject.get_attributes_for_oid(
            x509.oid.NameOID.COMMON_NAME)[0].value
        d["responder_not_after"] = resp.certificates[0].not_valid_after.isoformat()
    except Exception:
        d["responder"] = None
    return d


# --- Per-job reset of NVIDIA's global state. ---------------------------------------------------
# NVIDIA keeps state in class attributes (BaseSettings.CURRENT_OPAQUE_DATA_VERSION, set by the
# report parser; CLAIMS_VERSION, OCSP_NONCE_DISABLED, allow_hold_cert, DRIVER_RIM_PATH, ...), in
# the per-architecture settings *instances* of GPU_ARCHITECTURE_MAP, and in cc_admin's module
# lists (hwmodel, oemid, ueid, warnings). A CLI run starts fresh; one process running many jobs
# restores all of it before each job (and before each independent check).
_SETTINGS_CLASSES = (BaseSettings, HopperSettings, BlackwellSettings)
_CLASS_SNAPSHOT = {cls: dict(vars(cls)) for cls in _SETTINGS_CLASSES}
_ARCH = {"hopper": (9, HopperSettings), "blackwell": (10, BlackwellSettings)}


def _reset_globals(device_root, rim_root):
    for cls, snap in _CLASS_SNAPSHOT.items():
        for k in list(vars(cls)):
            if k not in snap:
                delattr(cls, k)
        for k, v in snap.items():
            if vars(cls).get(k, None) is not v:
                setattr(cls, k, v)
    BaseSettings.DEVICE_ROOT_CERT = os.path.abspath(device_root) if device_root else PINNED_DEVICE_ROOT
    BaseSettings.RIM_ROOT_CERT = os.path.abspath(rim_root) if rim_root else PINNED_RIM_ROOT
    # The options attest() is given (and sets on BaseSettings itself) hold for the independent
    # checks too: OCSP requests without a nonce (stapled responses cannot echo one), no
    # certificate_hold allowance, claims 3.0.
    BaseSettings.OCSP_NONCE_DISABLED = True
    BaseSettings.allow_hold_cert = False
    BaseSettings.CLAIMS_VERSION = "3.0"
    GPU_ARCHITECTURE_MAP[9] = HopperSettings()
    GPU_ARCHITECTURE_MAP[10] = BlackwellSettings()
    for lst in (cc_admin.hwmodel, cc_admin.oemid, cc_admin.ueid,
                cc_admin.gpu_driver_attestation_warning_list, cc_admin.gpu_vbios_attestation_warning_list):
        lst.clear()
    info_log.setLevel(logging.INFO)
    _CAPTURE.take()


# --- Evidence in place of NVML. ------------------------------------------------------------
class _PemHandle(TestHandle):
    """NVIDIA's GpuCertificateChains takes the chain from a TestHandle verbatim (PEM bytes as
    NVML returns them), drops the last certificate and appends the pinned device root."""


def _report_versions(report_obj):
    """The driver/VBIOS versions exactly as NVIDIA's verify_attestation_report reads them."""
    od = report_obj.get_response_message().get_opaque_data()
    drv = od.get_data("OPAQUE_FIELD_ID_DRIVER_VERSION").decode()
    if drv and drv[-1] == "\0":
        drv = drv[:-1]
    vb = od.get_data("OPAQUE_FIELD_ID_VBIOS_VERSION")
    vbios = format_vbios_version(vb) if vb else ""
    return drv, vbios


class OfflineEvidence:
    """Stands in for NvmlHandler: what NVML would have returned for this GPU. The "NVML" driver
    and VBIOS versions are taken from the report itself (so those two checks pass by
    construction); the VBIOS version is upper-cased as NVML gives it (attest lower-cases it)."""

    def __init__(self, arch_value, report_bytes, chain_pem, settings):
        self.GPUArchitecture = arch_value
        self.UUID = "GPU-00000000-0000-0000-0000-000000000000"
        self.AttestationReport = report_bytes
        BaseSettings.CURRENT_OPAQUE_DATA_VERSION = 0
        try:
            drv, vbios = _report_versions(AttestationReport(report_bytes, settings))
        except Exception:
            drv, vbios = "", ""
        BaseSettings.CURRENT_OPAQUE_DATA_VERSION = 0
        self.DriverVersion = drv
        self.VbiosVersion = vbios.upper()
        self.CertificateChains = GpuCertificateChains(_PemHandle(chain_pem))

    def get_gpu_architecture(self):
        return self.GPUArchitecture

    def get_uuid(self):
        return self.UUID

    def get_driver_version(self):
        return self.DriverVersion

    def get_vbios_version(self):
        return self.VbiosVersion

    def get_attestation_report(self):
        return self.AttestationReport

    def get_attestation_cert_chain(self):
        return self.CertificateChains.GpuAttestationCertificateChain


# check_status()'s conjunction, in its order, to name the first failing step when attest()
# returns False without raising (e.g. measurements that do not match).
_STATUS_ORDER = [
    ("gpu arch", lambda s: s.check_if_gpu_arch_is_correct()),
    ("device cert chain", lambda s: s.check_if_gpu_attestation_report_cert_chain_validated()),
    ("report parsed", lambda s: s.check_if_attestation_report_parsed_successfully()),
    ("nonce", lambda s: s.check_if_nonce_are_matching()),
    ("device cert status", lambda s: s.check_gpu_attestation_report_cert_status() == "valid"),
    ("device cert ocsp", lambda s: s.check_gpu_attestation_report_cert_ocsp_status() == "good"),
    ("report driver version", lambda s: s.check_if_attestation_report_driver_version_matches()),
    ("report vbios version", lambda s: s.check_if_attestation_report_vbios_version_matches()),
    ("report signature", lambda s: s.check_if_attestation_report_signature_verified()),
    ("driver RIM fetched", lambda s: s.check_if_driver_rim_fetched()),
    ("driver RIM schema", lambda s: s.check_if_gpu_driver_rim_schema_validated()),
    ("driver RIM cert chain", lambda s: s.check_if_gpu_driver_rim_cert_chain_validated()),
    ("driver RIM cert status", lambda s: s.check_gpu_driver_rim_cert_status() == "valid"),
    ("driver RIM cert ocsp", lambda s: s.check_gpu_driver_rim_cert_ocsp_status() == "good"),
    ("driver RIM signature", lambda s: s.check_if_gpu_driver_rim_signature_verified()),
    ("driver RIM version", lambda s: s.check_if_gpu_driver_rim_version_matched()),
    ("driver RIM measurements", lambda s: s.check_rim_driver_measurements_availability()),
    ("vbios RIM fetched", lambda s: s.check_if_vbios_rim_fetched()),
    ("vbios RIM schema", lambda s: s.check_if_gpu_vbios_rim_schema_validated()),
    ("vbios RIM signature", lambda s: s.check_if_gpu_vbios_rim_signature_verified()),
    ("vbios RIM version", lambda s: s.check_if_gpu_vbios_rim_version_matched()),
    ("vbios RIM cert chain", lambda s: s.check_if_gpu_vbios_rim_cert_chain_validated()),
    ("vbios RIM cert status", lambda s: s.check_gpu_vbios_rim_cert_status() == "valid"),
    ("vbios RIM cert ocsp", lambda s: s.check_gpu_vbios_rim_cert_ocsp_status() == "good"),
    ("vbios RIM measurements", lambda s: s.check_rim_vbios_measurements_availability()),
    ("measurement index conflict", lambda s: s.check_if_no_driver_vbios_measurement_index_conflict()),
    ("measurements", lambda s: s.check_if_measurements_are_matching() == "success"),
]


def _err(e):
    return f"{type(e).__name__}: {str(e).strip()}"


def _decode_gpu_claims(jwt_claims):
    try:
        token = jwt_claims[1]["GPU-0"]
        claims = jwt.decode(token, "secret", algorithms=["HS256"],
                            options={"verify_signature": False, "verify_exp": False,
                                     "verify_nbf": False, "verify_iat": False})
        for k in ("nbf", "exp", "iat", "jti"):  # wall clock / random: not part of the verdict
            claims.pop(k, None)
        return claims
    except Exception:
        return None


def _run_attest(job, report_bytes, chain_pem, stapled):
    arch_value, settings_cls = _ARCH[job["arch"]]
    settings_cls.DRIVER_RIM_PATH = job.get("driver_rim") or ""
    args = {
        "verbose": False, "test_no_gpu": False, "user_mode": True, "allow_hold_cert": False,
        "service_key": None, "nonce": job["nonce"], "rim_root_cert": None, "rim_service_url": None,
        "ocsp_url": None, "ocsp_nonce_disabled": True, "claims_version": "3.0",
        # cc_admin reads the driver RIM from settings.DRIVER_RIM_PATH; this only says "given"
        "driver_rim": job.get("driver_rim") or None,
        "vbios_rim": job.get("vbios_rim") or None,
    }
    settings = GPU_ARCHITECTURE_MAP[arch_value]
    out = {"overall": False, "stopped_at": None, "claims": None}
    try:
        evidence = OfflineEvidence(arch_value, report_bytes, chain_pem, settings)
        overall, jwt_claims = cc_admin.attest(args, job["nonce"], [evidence])
        out["overall"] = bool(overall)
        out["claims"] = _decode_gpu_claims(jwt_claims)
    except Exception as e:  # attest() itself raised (bad nonce string, bad chain PEM, ...)
        out["stopped_at"] = f"oracle: attest raised {_err(e)}"
    records = _CAPTURE.take()
    out["log"] = _lines(records)
    if not out["overall"] and out["stopped_at"] is None:
        # attest() logs the exception that ended it with info_log.error(error): the last
        # exception object logged is where NVIDIA stopped.
        excs = [r.msg for r in records if isinstance(r.msg, BaseException)]
        if excs:
            out["stopped_at"] = str(excs[-1]).strip()
        else:
            failing = [name for name, pred in _STATUS_ORDER if not pred(settings)]
            out["stopped_at"] = f"check_status: {failing[0]}" if failing else "check_status"
    if stapled is not None:
        out["ocsp_lookups"] = stapled.lookups
        stapled.lookups = []
    return out


def _rim_check(name, path, version, settings_cls):
    s = settings_cls()
    BaseSettings.CURRENT_OPAQUE_DATA_VERSION = 0
    d = {"colloquial_version": None, "exception": None}
    rim = None
    try:
        rim = RIM(rim_name=name, settings=s, rim_path=path)
        d["colloquial_version"] = rim.colloquialVersion.lower()
        rim.verify(version=version, settings=s)
    except Exception as e:
        d["exception"] = _err(e)
    p = "gpu_driver_rim_" if name == "driver" else "gpu_vbios_rim_"
    d.update({
        "schema_valid": getattr(s, p + "schema_validated"),
        "version_match": getattr(s, p + "version_matched"),
        "cert_chain_valid": getattr(s, p + "cert_chain_validated"),
        "cert_status": getattr(s, p + "cert_status"),
        "cert_earliest_not_after": getattr(s, p + "cert_expiration_date"),
        "ocsp_status": getattr(s, p + "cert_ocsp_status"),
        "revocation_reason": getattr(s, p + "cert_revocation_reason"),
        "signature_valid": getattr(s, p + "signature_verified"),
    })
    d["active_indexes"] = (sorted(i for i, m in rim.get_measurements().items() if m.is_active())
                           if rim is not None and getattr(rim, "measurements_obj", None) else None)
    d["log"] = _lines(_CAPTURE.take())
    return d, rim


def run_rim(kind, path, verify_at, version=None, rim_root_pem=None):
    """A RIM alone (no evidence): NVIDIA's RIM(...).verify with OCSP stubbed "good", at verify_at.
    version defaults to the RIM's own colloquialVersion (so the version check passes)."""
    global _VERIFY_AT
    t0 = time.perf_counter()
    _reset_globals(None, rim_root_pem)
    CcAdminUtils.ocsp_certificate_chain_validation = staticmethod(_ocsp_stub_good)
    _VERIFY_AT = _parse_time(verify_at) if verify_at else None
    if version is None:
        try:
            version = RIM(rim_name=kind, settings=HopperSettings(), rim_path=path).colloquialVersion.lower()
        except Exception:
            version = ""
        _CAPTURE.take()
    try:
        d, _ = _rim_check(kind, path, version, HopperSettings)
    finally:
        _VERIFY_AT = None
    d["seconds"] = round(time.perf_counter() - t0, 6)
    return d


_MISMATCH_LINE = re.compile(r"^(\d+) \[(Driver|Firmware)\]$")


def _independent(job, report_bytes, chain_pem, stapled):
    """Each check alone, with fresh settings, as NVIDIA's functions compute it."""
    arch_value, settings_cls = _ARCH[job["arch"]]
    c = {}
    s = settings_cls()
    BaseSettings.CURRENT_OPAQUE_DATA_VERSION = 0
    report = None
    try:
        report = AttestationReport(report_bytes, s)
        c["report_parsed"] = True
    except Exception as e:
        c["report_parsed"] = False
        c["report_error"] = _err(e)

    def fresh_chain():
        return GpuCertificateChains(_PemHandle(chain_pem)).GpuAttestationCertificateChain

    chain = None
    try:
        chain = fresh_chain()
    except Exception as e:
        c["chain_error"] = _err(e)

    # device chain (leaf .. Identity + pinned root), no OCSP
    if chain is not None:
        try:
            ok, expired, earliest = CcAdminUtils.verify_certificate_chain(
                list(chain), s, BaseSettings.Certificate_Chain_Verification_Mode.GPU_ATTESTATION)
            c["device_chain_valid"] = bool(ok)
            c["device_chain_expired"] = bool(expired)
            c["device_chain_earliest_not_after"] = earliest
        except Exception as e:
            c["device_chain_valid"] = False
            c["device_chain_error"] = _err(e)
    else:
        c["device_chain_valid"] = False

    # FWID: leaf certificate vs opaque field 20 (skipped by NVIDIA when the field is absent)
    if report is not None and chain is not None:
        report_fwid = report.get_response_message().get_opaque_data().get_data("OPAQUE_FIELD_ID_FWID").hex()
        cert_fwid = CcAdminUtils.extract_fwid(chain[0], s)
        c["report_fwid"], c["cert_fwid"] = report_fwid, cert_fwid
        c["fwid_match"] = "n/a" if report_fwid == "" else (cert_fwid == report_fwid)
    else:
        c["fwid_match"] = False

    # request nonce, report versions, report signature
    if report is not None:
        rn = report.get_request_message().get_nonce()
        c["report_nonce"] = rn.hex()
        try:
            c["nonce_match"] = rn == bytes.fromhex(job["nonce"])
        except ValueError:
            c["nonce_match"] = False
        try:
            drv, vbios = _report_versions(report)
        except Exception:
            drv, vbios = "", ""
        c["report_driver_version"] = drv
        c["report_vbios_version"] = vbios.lower()
        c["signature_valid"] = bool(chain is not None and report.verify_signature(
            chain[0].to_cryptography(), s.signature_length, s.HashFunction))
    else:
        c["nonce_match"] = False
        c["report_driver_version"] = c["report_vbios_version"] = ""
        c["signature_valid"] = False
    _CAPTURE.take()

    # device chain revocation alone (stapled mode only; stub-good is not a check)
    if stapled is not None and chain is not None and c["device_chain_valid"]:
        try:
            ok, _w, st, reason = CcAdminUtils.ocsp_certificate_chain_validation(
                fresh_chain(), settings_cls(), BaseSettings.Certificate_Chain_Verification_Mode.GPU_ATTESTATION)
            dev = {"ok": bool(ok), "ocsp_status": st, "revocation_reason": reason}
        except Exception as e:
            dev = {"ok": False, "error": _err(e)}
        dev["log"] = _lines(_CAPTURE.take())
        dev["certificates"], stapled.lookups = stapled.lookups, []
        c["_ocsp_device"] = dev

    # RIMs: schema, version, signing chain (+ its revocation), XML signature
    rims = {}
    for name, key, version in (("driver", "driver_rim", c["report_driver_version"]),
                               ("vbios", "vbios_rim", c["report_vbios_version"])):
        path = job.get(key)
        if not path:
            c[key] = "not supplied"
            continue
        c[key], rims[name] = _rim_check(name, path, version, settings_cls)
        if stapled is not None:
            c[key]["ocsp_certificates"], stapled.lookups = stapled.lookups, []

    # measurement comparison (needs both RIMs and the report; independent of every signature)
    c["measurements_match"] = None
    c["mismatched_indexes"] = None
    if report is not None and rims.get("driver") is not None and rims.get("vbios") is not None:
        ms = settings_cls()
        try:
            v = Verifier(report, rims["driver"], rims["vbios"], settings=ms)
            c["golden_active_indexes"] = sorted(v.golden_measurements)
            c["msr35_checked"] = bool(v.is_msr_35_valid and 35 in v.golden_measurements)
            result = v.verify(ms)
            lines = _lines(_CAPTURE.take())
            c["measurements_match"] = bool(result)
            c["mismatched_indexes"] = [[int(m.group(1)), m.group(2)]
                                       for m in map(_MISMATCH_LINE.match, lines) if m]
        except Exception as e:
            _CAPTURE.take()
            c["measurements_match"] = False
            c["measurements_error"] = _err(e)
            c["index_conflict"] = ms.no_driver_vbios_measurement_index_conflict is False
    return c


def _parse_time(s):
    t = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).replace(tzinfo=None)


def run_job(job):
    """One job -> one result dict (see README). Never raises for bad evidence."""
    global _VERIFY_AT
    t0 = time.perf_counter()
    _reset_globals(job.get("device_root_pem"), job.get("rim_root_pem"))
    _VERIFY_AT = _parse_time(job["verify_at"]) if job.get("verify_at") else None
    ocsp_cfg = job.get("ocsp") or {"mode": "stub-good"}
    stapled = None
    if ocsp_cfg["mode"] == "stub-good":
        CcAdminUtils.ocsp_certificate_chain_validation = staticmethod(_ocsp_stub_good)
        CcAdminUtils.send_ocsp_request = staticmethod(_ORIG_SEND_OCSP)
    elif ocsp_cfg["mode"] == "stapled":
        stapled = _Stapled(ocsp_cfg.get("responses") or [])
        CcAdminUtils.ocsp_certificate_chain_validation = staticmethod(_ORIG_OCSP_VALIDATION)
        CcAdminUtils.send_ocsp_request = staticmethod(stapled.send)
    else:
        raise ValueError(f"unknown ocsp mode {ocsp_cfg['mode']!r}")

    with open(job["report"], "rb") as f:
        report_bytes = f.read()
    with open(job["cert_chain"], "rb") as f:
        chain_pem = f.read()

    t_attest = time.perf_counter()
    att = _run_attest(job, report_bytes, chain_pem, stapled)
    # NVIDIA's attest() alone, for the bench (seconds also covers the checks run one by one).
    attest_seconds = round(time.perf_counter() - t_attest, 6)
    _reset_globals(job.get("device_root_pem"), job.get("rim_root_pem"))
    checks = _independent(job, report_bytes, chain_pem, stapled)

    if stapled is None:
        ocsp_out = {"mode": "stub-good"}
    else:
        ocsp_out = {
            "mode": "stapled",
            "attest_lookups": att.pop("ocsp_lookups"),
            "device": checks.pop("_ocsp_device", None),
        }
        for key in ("driver_rim", "vbios_rim"):
            r = checks.get(key)
            if isinstance(r, dict):
                certs = r["ocsp_certificates"]
                if not certs:  # not reached (schema or signing chain failed first)
                    ok = None
                else:  # no status: NVIDIA's check raised (e.g. no stapled response)
                    ok = (r["ocsp_status"] is not None
                          and not (r["exception"] or "").startswith("RIMCertChainOCSPVerificationError"))
                ocsp_out[key] = {"ok": ok, "ocsp_status": r["ocsp_status"], "revocation_reason": r["revocation_reason"],
                                 "certificates": r.pop("ocsp_certificates")}
            else:
                ocsp_out[key] = None
    checks["ocsp"] = ocsp_out
    _VERIFY_AT = None
    return {
        "id": job.get("id"),
        "overall": att["overall"],
        "stopped_at": att["stopped_at"],
        "checks": checks,
        "claims": att["claims"],
        "log": att["log"],
        "seconds": round(time.perf_counter() - t0, 6),
        "attest_seconds": attest_seconds,
    }


def run_jobs(jobs):
    out = []
    for job in jobs:
        try:
            out.append(run_job(job))
        except Exception as e:  # an oracle bug or unreadable input file: say so, keep going
            out.append({"id": job.get("id"), "oracle_error": _err(e)})
    return out


def main(argv):
    if len(argv) != 2:
        print("usage: oracle.py jobs.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        jobs = json.load(f)
    if isinstance(jobs, dict):
        jobs = [jobs]
    json.dump(run_jobs(jobs), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
