"""Verify Intel TDX servers running tdx-agent, in process, and talk to their models only
over verified connections.

The verdicts come from tdx-agent's own verifier core (Rust), exactly as the ``tdx-agent``
CLI reaches them: ``verify_quote`` appraises a quote offline, ``attest`` verifies a running
agent, and ``httpx_client`` / ``httpx_async_client`` give the OpenAI SDK (or any httpx
user) a client whose every connection passed the policy and a fresh challenge first.
See docs/python.md.
"""

from __future__ import annotations

import pkgutil as _pkgutil

# The agent's gRPC API is the protobuf package tdx_agent.v1: stubs a user generates from
# proto/ land in a directory tdx_agent/v1/ elsewhere on sys.path. Extending the package path
# lets `import tdx_agent.v1` find them beside this package instead of failing.
__path__ = _pkgutil.extend_path(__path__, __name__)

import datetime as _dt  # noqa: E402
import os as _os
from typing import Optional, Union

from ._native import (
    Check,
    ConnectTimeoutError,
    Policy,
    ReadTimeoutError,
    Report,
    RequestFailedError,
    VerificationError,
)
from ._native import attest as _attest
from ._native import verify_quote as _verify_quote
from ._transport import _root_bytes, httpx_async_client, httpx_client

__all__ = [
    "Check",
    "ConnectTimeoutError",
    "Policy",
    "ReadTimeoutError",
    "Report",
    "RequestFailedError",
    "VerificationError",
    "attest",
    "httpx_async_client",
    "httpx_client",
    "verify_quote",
]

RootArg = Union[bytes, str, "_os.PathLike[str]", None]


def _unix(at: Union[int, _dt.datetime, None]) -> Optional[int]:
    if at is None:
        return None
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None:
            raise ValueError("at: give an aware datetime (with tzinfo), or Unix seconds")
        return int(at.timestamp())
    if isinstance(at, bool) or not isinstance(at, int):
        raise TypeError("at: Unix seconds (int), an aware datetime, or None")
    return at


def verify_quote(
    quote: bytes,
    collateral: bytes,
    *,
    policy: Optional[Policy] = None,
    at: Union[int, _dt.datetime, None] = None,
    insecure_root: RootArg = None,
) -> Report:
    """Appraise a TD quote offline, as ``tdx-agent verify`` does.

    ``quote`` is the quote (binary, or hex text); ``collateral`` the collateral bundle JSON
    (docs/formats.md). ``at`` is the verification time (Unix seconds or an aware datetime;
    now by default). ``insecure_root`` replaces Intel's production root (DER bytes, or a
    path): only for the simulated TD and test PKIs.

    A quote that fails a check gives a report with ``accepted == False``; a bundle that
    cannot be read raises ValueError.
    """
    return _verify_quote(
        bytes(quote),
        bytes(collateral),
        policy=policy,
        at=_unix(at),
        insecure_root=_root_bytes(insecure_root),
    )


def attest(
    url: str,
    *,
    policy: Policy,
    nonce: bool = True,
    insecure_root: RootArg = None,
    insecure_gpu_roots: RootArg = None,
) -> Report:
    """Verify a running agent at ``url`` (``https://HOST:PORT``) over RA-TLS, as
    ``tdx-agent attest`` does: its certificate against ``policy`` and, with ``nonce``, a
    fresh challenge proving the TD is live now.

    A server the policy refuses gives a report with ``accepted == False`` (test
    ``report.accepted``: a report has no truth value). A certificate the RA-TLS verifier
    refuses before any quote is appraised, or a challenge answer that cannot be checked,
    raises VerificationError naming the check; a server that cannot be reached raises
    ConnectionError. Blocks with the GIL released; Ctrl-C interrupts it.

    When the policy's ``[gpu] count`` requires GPUs, they are checked too (docs/gpu.md);
    ``insecure_gpu_roots`` (PEM bytes, or a path: a device root then a RIM root) replaces
    NVIDIA's roots, only for the simulated GPUs.
    """
    return _attest(
        url,
        policy=policy,
        nonce=nonce,
        insecure_root=_root_bytes(insecure_root),
        insecure_gpu_roots=_root_bytes(insecure_gpu_roots),
    )

