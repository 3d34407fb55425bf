"""Type stubs for tdx_agent._native, the Rust part of the package."""

import os
from typing import Dict, List, Optional, Tuple, Union

class VerificationError(Exception):
    """The server or evidence failed a check; nothing of the request was sent."""

    check: str
    expected: str
    found: str

class RequestFailedError(ConnectionError):
    """The request was sent and the connection failed before the answer ended."""

class ConnectTimeoutError(TimeoutError):
    """No verified connection within the connect timeout; nothing was sent."""

class ReadTimeoutError(TimeoutError):
    """The answer's head or the next chunk of its body did not come within the read timeout."""

class Policy:
    """An appraisal policy (docs/formats.md). ``Policy()`` pins nothing."""

    def __init__(self) -> None: ...
    @staticmethod
    def from_toml(text: str) -> "Policy":
        """Parse TOML; unknown keys and bad values raise ValueError naming them."""
    @staticmethod
    def from_file(path: Union[str, "os.PathLike[str]"]) -> "Policy":
        """Read and parse a policy file (OSError if unreadable, ValueError if invalid)."""
    @property
    def pins_anything(self) -> bool: ...
    @property
    def unpinned_image_registers(self) -> list[str]:
        """Which of MRTD, RTMR0-2 the policy leaves open; the transport needs none open."""

class Check:
    """One check of a report."""

    @property
    def name(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def expected(self) -> str: ...
    @property
    def found(self) -> str: ...

class Report:
    """An appraisal report; read-only, made only by the verifier."""

    @property
    def verdict(self) -> str:
        """``"accepted"`` or ``"rejected"``."""
    @property
    def accepted(self) -> bool: ...
    @property
    def checks(self) -> List[Check]: ...
    @property
    def not_evaluated(self) -> List[str]: ...
    @property
    def measurements(self) -> Optional[Dict[str, str]]:
        """``mrtd``, ``rtmr0``..``rtmr3``, ... in lowercase hex; None for an unreadable quote."""
    @property
    def tcb_status(self) -> Optional[str]: ...
    @property
    def advisory_ids(self) -> List[str]: ...
    @property
    def warnings(self) -> List[str]: ...
    @property
    def verified_at(self) -> str: ...
    def to_json(self) -> str:
        """The report as ``tdx-agent verify --json`` prints it."""
    def summary(self) -> str: ...
    def __bool__(self) -> bool:
        """Raises TypeError: test ``accepted``."""

class ResponseBody:
    def read(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """The next chunk as it arrives (GIL released), or None at the end or once closed."""
    def close(self) -> None: ...

class Transport:
    """The verified connection behind the httpx transports."""

    def __init__(
        self,
        url: str,
        *,
        policy: Policy,
        insecure_root: Optional[bytes] = None,
        insecure_gpu_roots: Optional[bytes] = None,
        rechallenge_secs: int = 300,
        max_request_bytes: int = 33554432,
        insecure_no_policy: bool = False,
    ) -> None: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    def verify(self) -> None: ...
    def send(
        self,
        method: str,
        path: str,
        headers: List[Tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: Optional[float] = None,
        read_timeout: Optional[float] = None,
    ) -> Tuple[int, List[Tuple[bytes, bytes]], ResponseBody]: ...

def verify_quote(
    quote: bytes,
    collateral: bytes,
    *,
    policy: Optional[Policy] = None,
    at: Optional[int] = None,
    insecure_root: Optional[bytes] = None,
) -> Report: ...
def attest(
    url: str,
    *,
    policy: Policy,
    nonce: bool = True,
    insecure_root: Optional[bytes] = None,
    insecure_gpu_roots: Optional[bytes] = None,
) -> Report: ...
