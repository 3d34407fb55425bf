"""httpx transports whose every request goes over tdx-agent's verified connection.

The connection is ``tdx-agent connect``'s, in process: one HTTP/2 RA-TLS connection whose
certificate passed the policy and whose TD answered a fresh challenge on that connection,
re-challenged once the last challenge is ``rechallenge_secs`` old. A failed check raises
``VerificationError`` before anything of the request is sent.
"""

from __future__ import annotations

import functools
import os
from typing import Any, AsyncIterator, Iterator, List, Optional, Tuple, Union

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
import httpx

from ._native import (
    ConnectTimeoutError,
    Policy,
    ReadTimeoutError,
    RequestFailedError,
    ResponseBody,
    Transport,
)

__all__ = ["httpx_client", "httpx_async_client"]

# Worker threads the async transports of one event loop may hold at once: as many as the
# agent lets one connection carry streams (256), so every request the connection can carry has
# its thread. anyio's shared default (40) would cap an application streaming many answers at
# once at 40, with the rest waiting for a thread rather than for the server. One limiter per
# event loop run (a RunVar): a limiter is bound to the loop it was made in.
_ASYNC_THREADS = 256
_THREADS: "RunVar[anyio.CapacityLimiter]" = RunVar("tdx_agent_threads")


def _threads() -> anyio.CapacityLimiter:
    try:
        return _THREADS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(_ASYNC_THREADS)
        _THREADS.set(limiter)
        return limiter

# The default largest request body forwarded, as `tdx-agent connect --max-request-bytes`.
MAX_REQUEST_BYTES = 32 << 20

# Options that would send requests somewhere other than the verified connection, or that
# mean nothing over it (its TLS is verified by attestation, not by a CA bundle).
_REFUSED_KWARGS = ("transport", "mounts", "proxy", "proxies", "verify", "cert", "http1", "http2", "app")


def _root_bytes(insecure_root: Union[bytes, str, "os.PathLike[str]", None]) -> Optional[bytes]:
    if insecure_root is None:
        return None
    if isinstance(insecure_root, (bytes, bytearray, memoryview)):
        return bytes(insecure_root)
    with open(os.fspath(insecure_root), "rb") as f:
        return f.read()


class _Verified:
    """What both transports share: the native connection and the origin check."""

    def __init__(self, native: Transport, url: str) -> None:
        self._native = native
        self._url = url.rstrip("/")

    def _path(self, request: httpx.Request) -> str:
        u = request.url
        # Host names compare without case (httpx lowercases them; the URL given may not be).
        same_host = u.host.lower() == self._native.host.lower()
        if u.scheme != "https" or not same_host or (u.port or 443) != self._native.port:
            # The verified connection only reaches the attested server.
            raise ValueError(
                f"{u.scheme}://{u.host}:{u.port or 443}: this client sends only to the verified "
                f"server {self._url}"
            )
        return u.raw_path.decode("ascii")

    def _send(self, request: httpx.Request, body: bytes) -> Tuple[int, List[Tuple[bytes, bytes]], ResponseBody]:
        timeout = _timeouts(request)
        try:
            status, headers, stream = self._native.send(
                request.method,
                self._path(request),
                list(request.headers.raw),
                body,
                connect_timeout=timeout.get("connect"),
                read_timeout=timeout.get("read"),
            )
        except ConnectTimeoutError as e:
            raise httpx.ConnectTimeout(str(e), request=request) from e
        except ReadTimeoutError as e:
            raise httpx.ReadTimeout(str(e), request=request) from e
        except RequestFailedError as e:
            # Sent, and the connection failed: not a connection that was never made.
            raise httpx.ReadError(str(e), request=request) from e
        except ConnectionError as e:
            # Nothing was sent: an httpx connection failure, which SDKs may retry.
            raise httpx.ConnectError(str(e), request=request) from e
        return status, headers, stream


def _timeouts(request: httpx.Request) -> dict:
    """The request's httpx timeouts (``{"connect": s, "read": s, ...}``, None = no limit)."""
    timeout = request.extensions.get("timeout")
    return timeout if isinstance(timeout, dict) else {}


def _read(body: ResponseBody, request: httpx.Request, read_timeout: Optional[float]) -> Optional[bytes]:
    try:
        return body.read(read_timeout)
    except ReadTimeoutError as e:
        raise httpx.ReadTimeout(str(e), request=request) from e
    except ConnectionError as e:
        raise httpx.ReadError(str(e), request=request) from e


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, body: ResponseBody, request: httpx.Request) -> None:
        self._body = body
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        read_timeout = _timeouts(self._request).get("read")
        while True:
            chunk = _read(self._body, self._request, read_timeout)
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        self._body.close()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, body: ResponseBody, request: httpx.Request) -> None:
        self._body = body
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read_timeout = _timeouts(self._request).get("read")
        while True:
            # Cancelling the task (asyncio.wait_for, an SDK's timeout) returns at once; the
            # abandoned read ends by itself at its timeout or when aclose() closes the body.
            chunk = await anyio.to_thread.run_sync(
                _read, self._body, self._request, read_timeout, abandon_on_cancel=True, limiter=_threads()
            )
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        self._body.close()


class VerifiedTransport(_Verified, httpx.BaseTransport):
    """A synchronous httpx transport over the verified connection."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        status, headers, stream = self._send(request, body)
        return httpx.Response(
            status,
            headers=headers,
            stream=_SyncBody(stream, request),
            request=request,
            extensions={"http_version": b"HTTP/2"},
        )


class AsyncVerifiedTransport(_Verified, httpx.AsyncBaseTransport):
    """An asyncio/trio httpx transport over the verified connection; the blocking native
    calls run in worker threads (up to 256 per event loop), with the GIL released while they
    wait."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        status, headers, stream = await anyio.to_thread.run_sync(
            functools.partial(self._send, request, body), abandon_on_cancel=True, limiter=_threads()
        )
        return httpx.Response(
            status,
            headers=headers,
            stream=_AsyncBody(stream, request),
            request=request,
            extensions={"http_version": b"HTTP/2"},
        )


def _transport(
    kind: type,
    url: str,
    policy: Policy,
    insecure_root: Any,
    rechallenge_secs: int,
    kwargs: dict,
    insecure_gpu_roots: Any = None,
    insecure_no_policy: bool = False,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> Any:
    for k in _REFUSED_KWARGS:
        if k in kwargs:
            raise TypeError(
                f"{k}= is not accepted: every request of this client goes over the verified "
                "RA-TLS connection to the attested server"
            )
    if not isinstance(policy, Policy):
        raise TypeError("policy: a tdx_agent.Policy (Policy.from_file or Policy.from_toml)")
    native = Transport(
        url,
        policy=policy,
        insecure_root=_root_bytes(insecure_root),
        insecure_gpu_roots=_root_bytes(insecure_gpu_roots),
        rechallenge_secs=rechallenge_secs,
        max_request_bytes=max_request_bytes,
        insecure_no_policy=insecure_no_policy,
    )
    return kind(native, url)


def httpx_client(
    url: str,
    *,
    policy: Policy,
    insecure_root: Union[bytes, str, "os.PathLike[str]", None] = None,
    insecure_gpu_roots: Union[bytes, str, "os.PathLike[str]", None] = None,
    rechallenge_secs: int = 300,
    insecure_no_policy: bool = False,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    **httpx_kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` for the agent at ``url`` (``https://HOST:PORT``) whose requests go
    only over a connection verified as ``tdx-agent connect`` verifies it.

    Use it as OpenAI's ``http_client``: ``openai.OpenAI(base_url=url + "/v1", api_key=...,
    http_client=tdx_agent.httpx_client(url, policy=policy))``. Other keyword arguments go to
    ``httpx.Client`` (``timeout``, ``headers``, ...), except those that would route around
    the verified connection (``transport``, ``mounts``, ``proxy``, ``verify``, ...).
    A policy that does not pin the TD image (MRTD and RTMR0-2) is refused (``ValueError``)
    unless ``insecure_no_policy=True`` says that any genuine TD may receive the requests.
    httpx's ``timeout`` applies: ``connect`` bounds getting a verified connection (connect,
    handshake, policy, challenge), ``read`` the wait for the answer's head and for each chunk
    of its body (``httpx.ConnectTimeout`` / ``httpx.ReadTimeout``). A request body over
    ``max_request_bytes`` (default 32 MiB, at least 1) raises ``ValueError`` before anything
    is sent.
    """
    transport = _transport(
        VerifiedTransport, url, policy, insecure_root, rechallenge_secs, httpx_kwargs, insecure_gpu_roots,
        insecure_no_policy, max_request_bytes,
    )
    return httpx.Client(base_url=url, transport=transport, **httpx_kwargs)


def httpx_async_client(
    url: str,
    *,
    policy: Policy,
    insecure_root: Union[bytes, str, "os.PathLike[str]", None] = None,
    insecure_gpu_roots: Union[bytes, str, "os.PathLike[str]", None] = None,
    rechallenge_secs: int = 300,
    insecure_no_policy: bool = False,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    **httpx_kwargs: Any,
) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` counterpart of :func:`httpx_client`, for
    ``openai.AsyncOpenAI(..., http_client=tdx_agent.httpx_async_client(url, policy=...))``."""
    transport = _transport(
        AsyncVerifiedTransport, url, policy, insecure_root, rechallenge_secs, httpx_kwargs, insecure_gpu_roots,
        insecure_no_policy, max_request_bytes,
    )
    return httpx.AsyncClient(base_url=url, transport=transport, **httpx_kwargs)
