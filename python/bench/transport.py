"""Bench: what the in-process verified transport adds to a kept-alive request.

One run, same server (`serve` on the simulated TD fronting a stand-in model server, as in
python/tests), same request (GET /v1/models, the body the stand-in answers at once):
  plain   httpx.Client straight to serve (TLS, certificate not checked): the baseline;
  inproc  tdx_agent.httpx_client (the verified HTTP/2 RA-TLS connection, challenged once);
  connect httpx.Client to `tdx-agent connect`'s local endpoint (plain HTTP, then the same
          verified connection from another process).
Prints p50/p90/p99 per path and each path's extra p50 over plain. Target: inproc adds
under 1 ms at p50 (docs/python.md).

usage: python python/bench/transport.py [--requests N] [--rounds R]
(TDX_AGENT_BIN as for the tests; scripts/bench.sh runs it with the release build).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import tdx_agent  # noqa: E402
from conftest import Agent, agent_bin  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(client: httpx.Client, n: int) -> list:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get("/v1/models")
        r.read()
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return out


def pct(xs: list, p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    faulthandler.dump_traceback_later(int(os.environ.get("TDX_BENCH_DUMP_SECS", "0")) or 10**6)
    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent(pathlib.Path(tmp))
        port = free_port()
        connect = subprocess.Popen(
            [agent_bin(), "connect", agent.url, "--insecure-no-policy", "--insecure-root", agent.root,
             "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            assert connect.stdout is not None and "listening" in connect.stdout.readline()
            clients = {
                "plain": httpx.Client(base_url=agent.url, verify=False),
                "inproc": tdx_agent.httpx_client(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root),
                "connect": httpx.Client(base_url=f"http://127.0.0.1:{port}"),
            }
            samples = {k: [] for k in clients}
            for c in clients.values():  # connect, verify and challenge before timing
                timed(c, 50)
            for _ in range(a.rounds):  # rounds rotate the order, so no path always goes first
                for name, c in clients.items():
                    samples[name] += timed(c, a.requests)
            base = pct(samples["plain"], 0.5)
            print(f"GET /v1/models, {a.rounds} x {a.requests} kept-alive requests per path, {os.cpu_count()} CPUs")
            print(f"{'path':8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'extra p50 ms':>13} {'ratio p50':>10}")
            for name, xs in samples.items():
                p50 = pct(xs, 0.5)
                print(f"{name:8} {p50:8.3f} {pct(xs, 0.9):8.3f} {pct(xs, 0.99):8.3f} {p50 - base:13.3f} {p50 / base:10.3f}")
            extra = pct(samples["inproc"], 0.5) - base
            print(f"in-process transport adds {extra:.3f} ms at p50 (target < 1 ms): {'met' if extra < 1 else 'NOT met'}")
            for c in clients.values():
                c.close()
        finally:
            connect.terminate()
            connect.wait(timeout=10)
            agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
