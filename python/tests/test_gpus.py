"""GPUs attested with the TD, checked in process (docs/gpu.md): `serve` on the simulated TD
with two simulated GPUs; `attest` and the httpx client with a policy requiring them accept
it only against the simulated GPU roots, and refuse a policy requiring more GPUs."""

from __future__ import annotations

import pathlib
import time

import httpx
import pytest

import tdx_agent
from conftest import log_tail, run_agent, start_serve


@pytest.fixture(scope="module")
def gpu_agent(tmp_path_factory: pytest.TempPathFactory):
    tmp: pathlib.Path = tmp_path_factory.mktemp("gpus")
    sim = tmp / "sim"
    r = run_agent("sim", "pki", "--sim-dir", str(sim), "--gpus", "2")
    assert r.returncode == 0, r.stderr
    log = tmp / "serve.log"
    proc = start_serve(
        ["serve", "--tee", "sim", "--sim-dir", str(sim), "--listen", "127.0.0.1:0", "--gpus", "2"], log
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("tdx-agent listening on "):
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"serve did not start: {line!r}\n{log_tail(log)}")
    url = f"https://{line.split()[-1]}"
    root = str(sim / "root.der")
    probe = tdx_agent.httpx_client(url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=root)
    deadline = time.monotonic() + 60
    while probe.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, probe.get("/readyz").text + "\n" + log_tail(log)
        time.sleep(0.1)
    probe.close()
    try:
        yield url, root, str(sim / "gpu-roots.pem")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def gpus(count: int) -> tdx_agent.Policy:
    return tdx_agent.Policy.from_toml(f"[gpu]\ncount = {count}\n")


def test_attest_checks_every_gpu(gpu_agent):
    url, root, gpu_roots = gpu_agent
    report = tdx_agent.attest(url, policy=gpus(2), insecure_root=root, insecure_gpu_roots=gpu_roots)
    assert report.accepted, report.summary()
    names = {c.name for c in report.checks if c.ok}
    for i in (0, 1):
        assert f"gpu[{i}] measurements" in names
        assert f"gpu[{i}] CC state" in names
    more = tdx_agent.attest(url, policy=gpus(3), insecure_root=root, insecure_gpu_roots=gpu_roots)
    assert not more.accepted
    assert [c.name for c in more.checks if not c.ok] == ["GPU count"]
    nvidia = tdx_agent.attest(url, policy=gpus(2), insecure_root=root)
    assert not nvidia.accepted
    assert "gpu[0] device chain" in [c.name for c in nvidia.checks if not c.ok]


def test_the_httpx_client_refuses_a_server_without_the_required_gpus(gpu_agent):
    url, root, gpu_roots = gpu_agent
    ok = tdx_agent.httpx_client(url, policy=gpus(2), insecure_no_policy=True, insecure_root=root, insecure_gpu_roots=gpu_roots)
    assert ok.get("/readyz").status_code == 200
    ok.close()
    refused = tdx_agent.httpx_client(url, policy=gpus(3), insecure_no_policy=True, insecure_root=root, insecure_gpu_roots=gpu_roots)
    with pytest.raises(tdx_agent.VerificationError) as e:
        refused.get("/readyz")
    assert e.value.check == "GPU count"
    refused.close()
