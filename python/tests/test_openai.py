"""The official `openai` SDK, unmodified, through the in-process verified transport to
`serve` on the simulated TD: lists models, completes, streams in several chunks, sync and
async; a policy the server does not meet raises VerificationError before any byte of the
request reaches the model server."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

import tdx_agent
from conftest import REPO


def sdk(agent, policy, **kw) -> openai.OpenAI:
    http = tdx_agent.httpx_client(agent.url, policy=policy, insecure_root=agent.root, **kw)
    return openai.OpenAI(base_url=agent.url + "/v1", api_key="sk-test", http_client=http, max_retries=0)


def test_models_chat_stream_and_completion(agent):
    client = sdk(agent, agent.model_policy(agent.manifest_sha256))
    assert [m.id for m in client.models.list()] == ["stand-in"]
    chat = client.chat.completions.create(model="stand-in", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "The model answers in pieces."
    chunks = list(
        client.chat.completions.create(
            model="stand-in", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert len(chunks) > 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The model answers in pieces."
    done = client.completions.create(model="stand-in", prompt="hi")
    assert done.choices[0].text == "The model answers in pieces."


def test_the_async_client_carries_more_requests_at_once_than_anyios_default_threads(agent):
    # 60 requests the server answers only once all 60 are in flight: with anyio's shared
    # 40 worker threads, 20 would wait for a thread and the server would never see them.
    # The same client works again in a second event loop (its threads are per loop).
    n = 60
    http = tdx_agent.httpx_async_client(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root, timeout=60)

    async def burst():
        return await asyncio.gather(*(http.get(f"/v1/barrier/{n}") for _ in range(n)))

    for _ in range(2):
        answers = asyncio.run(burst())
        assert [r.status_code for r in answers] == [200] * n, answers[0].text
    asyncio.run(http.aclose())


def test_async_client_works_the_same(agent):
    async def main():
        http = tdx_agent.httpx_async_client(
            agent.url, policy=agent.model_policy(agent.manifest_sha256), insecure_root=agent.root
        )
        client = openai.AsyncOpenAI(base_url=agent.url + "/v1", api_key="sk-test", http_client=http, max_retries=0)
        models = [m.id async for m in client.models.list()]
        stream = await client.chat.completions.create(
            model="stand-in", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [c async for c in stream]
        done = await client.completions.create(model="stand-in", prompt="hi")
        await http.aclose()
        return models, chunks, done

    models, chunks, done = asyncio.run(main())
    assert models == ["stand-in"]
    assert len(chunks) > 1
    assert done.choices[0].text == "The model answers in pieces."


def test_another_model_pinned_raises_before_anything_reaches_the_model(agent):
    before = agent.model_requests()
    client = sdk(agent, agent.model_policy("00" * 32))
    with pytest.raises(tdx_agent.VerificationError) as e:
        client.chat.completions.create(model="stand-in", messages=[{"role": "user", "content": "secret"}])
    assert e.value.check == 'RTMR3 event "model"'
    assert 'RTMR3 event "model"' in str(e.value)
    assert agent.model_requests() == before, "a request reached the model server"

    async def main():
        http = tdx_agent.httpx_async_client(agent.url, policy=agent.model_policy("00" * 32), insecure_root=agent.root)
        c = openai.AsyncOpenAI(base_url=agent.url + "/v1", api_key="sk-test", http_client=http, max_retries=0)
        try:
            await c.models.list()
        finally:
            await http.aclose()

    with pytest.raises(tdx_agent.VerificationError):
        asyncio.run(main())
    assert agent.model_requests() == before, "a request reached the model server"


def test_an_mrtd_pin_of_zeros_names_mrtd(agent):
    # The image pinned as it is, but for MRTD.
    pins = agent.image_pins()
    mrtd = pins.split('mrtd = ["', 1)[1].split('"', 1)[0]
    zeros = tdx_agent.Policy.from_toml(pins.replace(mrtd, "00" * 48))
    before = agent.model_requests()
    with pytest.raises(tdx_agent.VerificationError) as e:
        sdk(agent, zeros).models.list()
    assert e.value.check == "MRTD"
    assert "MRTD" in str(e.value) and "00" * 48 in e.value.expected
    assert agent.model_requests() == before


def test_production_root_refuses_the_simulated_td(agent):
    before = agent.model_requests()
    http = tdx_agent.httpx_client(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True)
    with pytest.raises(tdx_agent.VerificationError) as e:
        http.get("/v1/models")
    # The chain verifies up to the simulated root, so the refusal is the root pin: Intel's
    # root expected, the simulated root (by its digest) found.
    assert e.value.check == "embedded root certificate"
    assert "pinned root" in e.value.expected
    sim_root = hashlib.sha256(Path(agent.root).read_bytes()).hexdigest()
    assert e.value.found == "sha256 " + sim_root
    assert agent.model_requests() == before


def test_requests_elsewhere_are_refused(agent):
    http = tdx_agent.httpx_client(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root)
    with pytest.raises(ValueError, match="only to the verified server"):
        http.get("https://example.invalid/v1/models")
    with pytest.raises(TypeError, match="transport"):
        tdx_agent.httpx_client(agent.url, policy=tdx_agent.Policy(), insecure_no_policy=True, transport=httpx.HTTPTransport())


def test_unreachable_server_is_a_connection_error(agent):
    http = tdx_agent.httpx_client("https://127.0.0.1:9", policy=tdx_agent.Policy(), insecure_no_policy=True, insecure_root=agent.root)
    with pytest.raises(httpx.ConnectError):
        http.get("/v1/models")


def test_attest_and_the_shell_command(agent):
    good = agent.model_policy(agent.manifest_sha256)
    r = tdx_agent.attest(agent.url, policy=good, insecure_root=agent.root)
    assert r.accepted, str(r)
    names = [c.name for c in r.checks]
    assert "challenge" in " ".join(names), names
    assert r.measurements and len(r.measurements["rtmr3"]) == 96
    bad = tdx_agent.attest(agent.url, policy=agent.model_policy("00" * 32), insecure_root=agent.root, nonce=False)
    assert not bad.accepted
    assert [c.name for c in bad.checks if not c.ok] == ['RTMR3 event "model"']

    policy = agent.policy_file(
        "good.toml",
        '[[rtmr3_events.pin]]\ntype = "model"\nallowed = [{ manifest_sha256 = "%s" }]\n'
        '[[rtmr3_events.pin]]\ntype = "agent-config"\n' % agent.manifest_sha256,
    )
    cmd = [sys.executable, "-m", "tdx_agent", "attest", agent.url, "--policy", policy, "--insecure-root", agent.root, "--json"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert '"verdict": "accepted"' in ok.stdout
    refused = agent.policy_file("bad.toml", '[measurements]\nmrtd = ["' + "00" * 48 + '"]\n')
    cmd[cmd.index(policy)] = refused
    no = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert no.returncode == 1, no.stderr
    assert "MRTD" in no.stderr
