"""Fixtures for the Python package's tests: a real `tdx-agent serve` on the simulated TD,
measuring a small model directory and fronting a stand-in OpenAI server (this file), so the
official `openai` SDK runs unmodified through the in-process verified transport.

TDX_AGENT_BIN names the binary (scripts/test.sh sets it; default target/debug/tdx-agent).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

import tdx_agent

REPO = pathlib.Path(__file__).resolve().parents[2]


def agent_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    path = os.environ.get("TDX_AGENT_BIN", os.path.join(target, "debug", "tdx-agent"))
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is missing: cargo build (scripts/test.sh does), or set TDX_AGENT_BIN")
    return path


def run_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([agent_bin(), *args], capture_output=True, text=True, timeout=120)


def start_serve(args: list[str], log: pathlib.Path) -> subprocess.Popen:
    """`tdx-agent ARGS` with stdout piped (for the listening line, its only stdout) and stderr
    to `log`: a pipe nobody reads fills at 64 KiB of log lines and then blocks the agent."""
    with open(log, "wb") as stderr:
        return subprocess.Popen([agent_bin(), *args], stdout=subprocess.PIPE, stderr=stderr, text=True)


def log_tail(log: pathlib.Path, lines: int = 40) -> str:
    """The end of a log written by `start_serve`, for a failure message."""
    try:
        text = log.read_text(errors="replace")
    except OSError as e:
        return f"({log}: {e})"
    return f"--- last {lines} lines of {log}\n" + "\n".join(text.splitlines()[-lines:])


class _Upstream(ThreadingHTTPServer):
    # The barrier route holds many requests open at once: socketserver's default listen
    # backlog (5) would leave the agent's extra connections waiting on SYN retries.
    request_queue_size = 128


class StandIn(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible model server: models, chat (plain and SSE), completions."""

    protocol_version = "HTTP/1.1"
    # Set at the end of the session: the stalling routes wait on it (at most a minute).
    release = threading.Event()
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the agent's delayed ACK hold each answer ~40 ms.
    disable_nagle_algorithm = True
    requests_seen = 0

    def log_message(self, *args: object) -> None:  # keep pytest's output readable
        pass

    def _json(self, status: int, value: object) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # `/v1/barrier/N`: answered once N such requests are in flight at once (504 if they never
    # are within 20 s), to show a client carries that many concurrently.
    barriers: dict = {}
    barriers_lock = threading.Lock()

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {"ok": True})
        elif self.path.startswith("/v1/barrier/"):
            n = int(self.path.rsplit("/", 1)[1])
            with StandIn.barriers_lock:
                barrier = StandIn.barriers.setdefault(n, threading.Barrier(n, timeout=20))
            try:
                barrier.wait()
                self._json(200, {"released": n})
            except threading.BrokenBarrierError:
                self._json(504, {"error": {"message": f"{n} requests were never in flight at once"}})
        elif self.path == "/v1/models":
            StandIn.requests_seen += 1
            self._json(200, {"object": "list", "data": [{"id": "stand-in", "object": "model", "created": 0, "owned_by": "tests"}]})
        else:
            self._json(404, {"error": {"message": self.path, "type": "not_found"}})

    def do_POST(self) -> None:
        StandIn.requests_seen += 1
        n = int(self.headers.get("content-length", "0"))
        req = json.loads(self.rfile.read(n) or b"{}")
        words = ["The", " model", " answers", " in", " pieces", "."]
        if self.path == "/v1/chat/completions" and req.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i, w in enumerate(words):
                chunk = {
                    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "stand-in",
                    "choices": [{"index": 0, "delta": {"content": w} if i else {"role": "assistant", "content": w}, "finish_reason": None}],
                }
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                time.sleep(0.02)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        elif self.path == "/v1/chat/completions":
            self._json(200, {
                "id": "chatcmpl-2", "object": "chat.completion", "created": 0, "model": "stand-in",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
            })
        elif self.path == "/v1/stall":
            # Never answers (until the session ends): the client's read timeout must fire.
            self.release.wait(60)
        elif self.path == "/v1/stall-body":
            # The head and one chunk, then nothing: the read timeout applies per chunk.
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self._chunk(b"data: first\n\n")
            self.release.wait(60)
        elif self.path == "/v1/completions":
            self._json(200, {
                "id": "cmpl-3", "object": "text_completion", "created": 0, "model": "stand-in",
                "choices": [{"index": 0, "text": "".join(words), "finish_reason": "stop", "logprobs": None}],
            })
        else:
            self._json(404, {"error": {"message": self.path, "type": "not_found"}})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class Agent:
    """`serve` on the simulated TD in front of the stand-in, and what tests need of it."""

    def __init__(self, tmp: pathlib.Path, *serve_args: str) -> None:
        self.sim_dir = tmp / "sim"
        r = run_agent("sim", "pki", "--sim-dir", str(self.sim_dir))
        assert r.returncode == 0, r.stderr
        self.root = str(self.sim_dir / "root.der")
        model = tmp / "model"
        model.mkdir()
        (model / "config.json").write_text('{"model_type": "stand-in"}\n')
        (model / "weights.bin").write_bytes(bytes(range(256)) * 64)
        m = run_agent("measure-model", str(model), "--json")
        assert m.returncode == 0, m.stderr
        self.manifest_sha256 = json.loads(m.stdout)["manifest_sha256"]
        # A handler class per agent, so stopping one releases only its own stalled requests.
        self.handler = type("StandIn", (StandIn,), {"release": threading.Event()})
        self.upstream = _Upstream(("127.0.0.1", 0), self.handler)
        threading.Thread(target=self.upstream.serve_forever, daemon=True).start()
        up = f"http://127.0.0.1:{self.upstream.server_address[1]}"
        self.log = tmp / "serve.log"
        self.proc = start_serve(
            ["serve", "--tee", "sim", "--sim-dir", str(self.sim_dir), "--listen", "127.0.0.1:0",
             "--upstream", up, "--model-dir", str(model), *serve_args],
            self.log,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("tdx-agent listening on "):
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise RuntimeError(f"serve did not start: {line!r}\n{log_tail(self.log)}")
        self.addr = line.split()[-1]
        self.url = f"https://{self.addr}"
        self.tmp = tmp
        self._probe = tdx_agent.httpx_client(self.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=self.root)
        deadline = time.monotonic() + 60
        while self._probe.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, self._probe.get("/readyz").text + "\n" + log_tail(self.log)
            time.sleep(0.1)

    def policy_file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def image_pins(self) -> str:
        """The `[measurements]` table pinning this TD's image (MRTD, RTMR0-2), which the
        transport requires before it forwards (`tdx-agent measurements --toml`)."""
        r = run_agent("measurements", "--tee", "sim", "--sim-dir", str(self.sim_dir), "--toml")
        assert r.returncode == 0, r.stderr
        return r.stdout

    def model_policy(self, manifest_sha256: str) -> tdx_agent.Policy:
        return tdx_agent.Policy.from_toml(
            self.image_pins() + f'[[rtmr3_events.pin]]\ntype = "model"\nallowed = [{{ manifest_sha256 = "{manifest_sha256}" }}]\n'
            '[[rtmr3_events.pin]]\ntype = "agent-config"\n'
        )

    def model_requests(self) -> float:
        """tdx_agent_model_requests_total: requests the front door passed to the model server."""
        text = self._probe.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tdx_agent_model_requests_total")
        )

    def stop(self) -> None:
        self.handler.release.set()
        self._probe.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.upstream.shutdown()


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("agent"))
    try:
        yield a
    finally:
        a.stop()
