"""What a hostile or stuck server, and a careless caller, meet: httpx's timeouts apply over the
verified connection, a stream can be closed from another thread while a read waits, reports
have no truth value, the exceptions pickle, host names compare without case."""

from __future__ import annotations

import pickle
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

import tdx_agent
from conftest import Agent
from tdx_agent._native import Transport


def client(agent, **kw) -> httpx.Client:
    return tdx_agent.httpx_client(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root, **kw)


def test_a_report_has_no_truth_value(agent):
    r = tdx_agent.attest(agent.url, policy=tdx_agent.Policy(), insecure_root=agent.root, nonce=False)
    assert r.accepted is True
    # `if report:` would pass a rejected server as readily: refused, pointing at .accepted.
    with pytest.raises(TypeError, match="accepted"):
        bool(r)


def test_the_exceptions_pickle_under_the_package_name():
    for cls in (
        tdx_agent.VerificationError,
        tdx_agent.RequestFailedError,
        tdx_agent.ConnectTimeoutError,
        tdx_agent.ReadTimeoutError,
    ):
        assert cls.__module__ == "tdx_agent"
        again = pickle.loads(pickle.dumps(cls("the reason")))
        assert type(again) is cls and str(again) == "the reason"
    assert issubclass(tdx_agent.RequestFailedError, ConnectionError)
    assert issubclass(tdx_agent.ReadTimeoutError, TimeoutError)


def test_a_model_that_never_answers_meets_the_read_timeout(agent):
    with client(agent, timeout=httpx.Timeout(30.0, read=0.5)) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/stall", json={})
        # The verified connection is still good for the next request.
        assert http.get("/v1/models").status_code == 200


def test_a_body_that_stops_meets_the_read_timeout_per_chunk(agent):
    with client(agent, timeout=httpx.Timeout(30.0, read=0.5)) as http:
        with http.stream("POST", "/v1/stall-body", json={}) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()
            assert next(chunks).startswith(b"data: first")
            with pytest.raises(httpx.ReadTimeout):
                next(chunks)


def test_a_server_that_never_handshakes_meets_the_connect_timeout(agent):
    # Accepts TCP and says nothing: the connection's own handshake limit is 10 s, and a
    # ConnectError after it would say "unavailable"; httpx's connect timeout must decide.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        http = tdx_agent.httpx_client(
            url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root, timeout=httpx.Timeout(30.0, connect=0.5)
        )
        with pytest.raises(httpx.ConnectTimeout):
            http.get("/v1/models")
    finally:
        silent.close()


def test_timeouts_must_be_seconds(agent):
    with open(agent.root, "rb") as f:
        t = Transport(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=f.read())
    for bad in (float("nan"), -1.0, float("inf"), 1e300):
        with pytest.raises(ValueError, match="read_timeout"):
            t.send("GET", "/v1/models", [], b"", read_timeout=bad)
        with pytest.raises(ValueError, match="connect_timeout"):
            t.send("GET", "/v1/models", [], b"", connect_timeout=bad)


def test_options_out_of_range_are_refused_naming_them(agent):
    with open(agent.root, "rb") as f:
        root = f.read()
    with pytest.raises(ValueError, match="rechallenge_secs 86401 is over 86400"):
        Transport(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=root, rechallenge_secs=86401)
    with pytest.raises(ValueError, match="max_request_bytes"):
        Transport(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=root, max_request_bytes=0)
    with pytest.raises(ValueError, match="rechallenge_secs"):
        tdx_agent.httpx_client(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root, rechallenge_secs=10**9)
    for make in (tdx_agent.httpx_client, tdx_agent.httpx_async_client):
        with pytest.raises(ValueError, match="max_request_bytes"):
            make(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root, max_request_bytes=0)
    # The bounds themselves are accepted.
    Transport(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=root, rechallenge_secs=86400)
    Transport(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=root, rechallenge_secs=0, max_request_bytes=1)


def test_a_stream_closes_from_another_thread_while_a_read_waits(agent):
    with open(agent.root, "rb") as f:
        t = Transport(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=f.read())
    status, _, body = t.send("POST", "/v1/stall-body", [(b"content-type", b"application/json")], b"{}")
    assert status == 200
    assert body.read().startswith(b"data: first")
    got = []
    reader = threading.Thread(target=lambda: got.append(body.read()))
    reader.start()
    # close() must not fail because a read holds the body; the waiting read then ends.
    deadline = time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        body.close()
        reader.join(0.05)
    assert not reader.is_alive(), "the waiting read did not end when the body was closed"
    assert got == [None]
    assert body.read() is None


def test_host_names_compare_without_case(agent):
    port = agent.addr.rsplit(":", 1)[1]
    url = f"https://LocalHost:{port}"
    with tdx_agent.httpx_client(url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root) as http:
        assert http.get("/v1/models").status_code == 200


# The child installs Python's own SIGINT handler: started from a shell's background job (as CI
# may be), it inherits SIGINT ignored and Python would then leave it so.
CTRL_C = """
import signal, socket, sys, tdx_agent
signal.signal(signal.SIGINT, signal.default_int_handler)
silent = socket.socket(); silent.bind(("127.0.0.1", 0)); silent.listen(8)
try:
    # Inside the try: a SIGINT that lands before attest() starts waiting is caught all the same.
    print("waiting", flush=True)
    tdx_agent.attest(f"https://127.0.0.1:{silent.getsockname()[1]}", policy=tdx_agent.Policy())
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
except Exception as e:
    print(type(e).__name__, e, flush=True)
"""


def test_ctrl_c_interrupts_a_call_that_waits():
    # attest() waits up to 30 s for a TLS handshake that never comes; Ctrl-C must not wait
    # for that (the deadline below is for a hung test, not a measurement).
    p = subprocess.Popen([sys.executable, "-u", "-c", CTRL_C], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "waiting"
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=25)
    finally:
        p.kill()
    assert out.strip() == "KeyboardInterrupt", out


def test_a_verification_longer_than_the_connect_timeout_still_completes(tmp_path):
    # Every challenge takes 1.5 s here (a slow quote), the client's connect timeout is 0.5 s:
    # the first requests time out, but the verification they started goes on without them
    # and a later request finds the connection verified. (Cancelled with each request, no
    # verification would ever complete.)
    slow = Agent(tmp_path, "--sim-quote-delay-ms", "1500")
    try:
        http = tdx_agent.httpx_client(
            slow.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=slow.root, timeout=httpx.Timeout(30.0, connect=0.5)
        )
        timed_out = 0
        deadline = time.monotonic() + 60
        while True:
            try:
                r = http.get("/v1/models")
                break
            except httpx.ConnectTimeout:
                timed_out += 1
                assert time.monotonic() < deadline, f"no request got through after {timed_out} connect timeouts"
        assert r.status_code == 200
        assert timed_out >= 1, "the verification was quicker than the connect timeout: the test proves nothing"
    finally:
        slow.stop()


def test_the_body_decides_its_length_not_the_callers_header(agent):
    # A Content-Length that disagrees with the body was an HTTP/2 protocol error after the
    # request had gone out; the length is now the body's own.
    with open(agent.root, "rb") as f:
        t = Transport(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=f.read())
    body = b'{"model": "stand-in", "messages": []}'
    status, _, stream = t.send(
        "POST", "/v1/chat/completions", [(b"content-type", b"application/json"), (b"content-length", b"999")], body
    )
    assert status == 200
    chunks = []
    while (chunk := stream.read()) is not None:
        chunks.append(chunk)
    assert b"chat.completion" in b"".join(chunks)


def test_a_policy_that_does_not_pin_the_image_is_refused_unless_said_so(agent):
    # As `tdx-agent connect`: requests go to any TD image only when the caller says so.
    with pytest.raises(ValueError, match="does not pin the TD image"):
        tdx_agent.httpx_client(agent.url, policy=tdx_agent.Policy(), insecure_root=agent.root)
    gpu_only = tdx_agent.Policy.from_toml("[gpu]\ncount = 0\n")
    assert not gpu_only.pins_anything
    with pytest.raises(ValueError, match="does not pin the TD image"):
        tdx_agent.httpx_async_client(agent.url, policy=gpu_only, insecure_root=agent.root)
    # Pinning the model (RTMR3 events) alone does not pin the image: any image can replay
    # the same events. The refusal names the registers left open.
    model_only = tdx_agent.Policy.from_toml(
        f'[[rtmr3_events.pin]]\ntype = "model"\nallowed = [{{ manifest_sha256 = "{agent.manifest_sha256}" }}]\n'
    )
    assert model_only.pins_anything
    assert model_only.unpinned_image_registers == ["MRTD", "RTMR0", "RTMR1", "RTMR2"]
    assert agent.model_policy(agent.manifest_sha256).unpinned_image_registers == []
    with pytest.raises(ValueError, match="MRTD, RTMR0, RTMR1, RTMR2 have no allowed value"):
        tdx_agent.httpx_client(agent.url, policy=model_only, insecure_root=agent.root)
    pinned = agent.model_policy(agent.manifest_sha256)
    with open(agent.root, "rb") as f:
        root = f.read()
    with pytest.raises(ValueError, match="pins the TD image"):
        Transport(agent.url, policy=pinned, insecure_no_policy=True, insecure_root=root)
    with tdx_agent.httpx_client(
        agent.url, policy=gpu_only, insecure_no_policy=True, insecure_root=agent.root
    ) as http:
        assert http.get("/readyz").status_code == 200


def test_the_httpx_client_takes_its_request_size_limit(agent):
    # Refused before anything is sent: the same client still carries a request within it.
    with client(agent, max_request_bytes=64) as http:
        with pytest.raises(ValueError, match="exceeds 64 bytes"):
            http.post("/attestation/v1/challenge", content=b"x" * 65)
        assert http.get("/livez").status_code == 200


def test_the_package_declares_the_anyio_its_async_transport_needs():
    # `to_thread.run_sync(abandon_on_cancel=)` appeared in anyio 4.1; httpx alone would let
    # an older anyio in, and every async request would then raise TypeError.
    import importlib.metadata

    from packaging.requirements import Requirement

    required = {
        r.name: r.specifier
        for r in map(Requirement, importlib.metadata.requires("tdx-agent") or [])
    }
    assert "anyio" in required, required
    assert not required["anyio"].contains("4.0.0")
    assert required["anyio"].contains("4.1.0")
