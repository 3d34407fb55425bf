"""The real DCAP vectors (tests/vectors/README.md) give the same verdicts and check names from
Python as from `tdx-agent verify`: both go through the same verifier core."""

from __future__ import annotations

import json

import pytest

import tdx_agent
from conftest import REPO, run_agent

PHALA_AT, OUTDATED_AT, GOOGLE_AT = 1751328000, 1772000000, 1688173200

# (quote, collateral, time, expected verdict, the failing check) as in tests/cli_verify.rs.
ROWS = [
    ("phala-dcap-qvl/tdx_quote", "phala-dcap-qvl/tdx_quote_collateral.json", PHALA_AT, "accepted", None),
    ("phala-dcap-qvl/tdx_quote_outdated", "phala-dcap-qvl/tdx_quote_outdated_collateral.json", OUTDATED_AT, "rejected", "TCB level"),
    ("phala-dcap-qvl/tdx-quote.hex", "phala-dcap-qvl/tdx_quote_collateral.json", PHALA_AT, "rejected", "TCB level"),
    ("phala-dcap-qvl/quote-from-tappd.hex", "phala-dcap-qvl/tdx_quote_collateral.json", PHALA_AT, "rejected", "TCB level"),
    ("phala-dcap-qvl/sgx_quote", "phala-dcap-qvl/sgx_quote_collateral.json", PHALA_AT, "rejected", "quote structure"),
    ("google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat", "google-go-tdx-guest/tdx_prod_quote_SPR_E4_collateral.json", GOOGLE_AT, "rejected", "TCB level"),
    ("google-go-tdx-guest/quote_v5_sample.dat", "phala-dcap-qvl/tdx_quote_outdated_collateral.json", OUTDATED_AT, "accepted", None),
    ("coco-trustee/tdx_quote_4.dat", "google-go-tdx-guest/tdx_prod_quote_SPR_E4_collateral.json", GOOGLE_AT, "rejected", "TD attribute DEBUG"),
    ("coco-trustee/tdx_quote_5.dat", "phala-dcap-qvl/tdx_quote_outdated_collateral.json", OUTDATED_AT, "rejected", "TCB level"),
    ("intel-qvl-sample-tdx/quote.dat", "phala-dcap-qvl/tdx_quote_collateral.json", PHALA_AT, "rejected", None),
]


def vector(rel: str) -> str:
    return str(REPO / "tests" / "vectors" / rel)


@pytest.mark.parametrize("quote,collateral,at,verdict,failing", ROWS, ids=[r[0] for r in ROWS])
def test_same_verdict_and_checks_as_the_cli(quote, collateral, at, verdict, failing):
    with open(vector(quote), "rb") as f:
        q = f.read()
    with open(vector(collateral), "rb") as f:
        c = f.read()
    report = tdx_agent.verify_quote(q, c, at=at)
    cli = run_agent("verify", vector(quote), "--collateral", vector(collateral), "--at", str(at), "--json")
    assert cli.returncode == (0 if verdict == "accepted" else 1), cli.stderr
    expected = json.loads(cli.stdout)

    assert report.verdict == verdict == expected["verdict"]
    assert report.accepted == (verdict == "accepted")
    assert [(c.name, c.ok, c.expected, c.found) for c in report.checks] == [
        (c["name"], c["ok"], c["expected"], c["found"]) for c in expected["checks"]
    ]
    failed = [c.name for c in report.checks if not c.ok]
    if failing is not None:
        assert failed == [failing]
    assert report.tcb_status == expected["tcb_status"]
    assert report.advisory_ids == expected["advisory_ids"]
    assert report.measurements == expected["measurements"]
    # The whole document, field for field, is the CLI's.
    assert json.loads(report.to_json()) == expected


def test_time_as_datetime_and_root_as_path():
    import datetime

    with open(vector("phala-dcap-qvl/tdx_quote"), "rb") as f:
        q = f.read()
    with open(vector("phala-dcap-qvl/tdx_quote_collateral.json"), "rb") as f:
        c = f.read()
    at = datetime.datetime.fromtimestamp(PHALA_AT, tz=datetime.timezone.utc)
    assert tdx_agent.verify_quote(q, c, at=at).accepted
    # Intel's root passed explicitly as a path is the production root: same verdict.
    assert tdx_agent.verify_quote(q, c, at=PHALA_AT, insecure_root=vector("phala-dcap-qvl/TrustedRootCA.der")).accepted
    # Another root: the embedded root check fails.
    other = tdx_agent.verify_quote(q, c, at=PHALA_AT, insecure_root=b"\x30\x00")
    assert not other.accepted
    assert [x.name for x in other.checks if not x.ok] == ["embedded root certificate"]
    with pytest.raises(ValueError, match="aware"):
        tdx_agent.verify_quote(q, c, at=datetime.datetime(2025, 7, 1))


def test_a_pin_names_the_register_and_bad_input_raises():
    with open(vector("phala-dcap-qvl/tdx_quote"), "rb") as f:
        q = f.read()
    with open(vector("phala-dcap-qvl/tdx_quote_collateral.json"), "rb") as f:
        c = f.read()
    zeros = tdx_agent.Policy.from_toml('[measurements]\nmrtd = ["' + "00" * 48 + '"]\n')
    r = tdx_agent.verify_quote(q, c, at=PHALA_AT, policy=zeros)
    assert not r.accepted
    assert [x.name for x in r.checks if not x.ok] == ["MRTD"]
    with pytest.raises(ValueError, match="collateral bundle"):
        tdx_agent.verify_quote(q, b"{}", at=PHALA_AT)
    with pytest.raises(ValueError, match="nonsense"):
        tdx_agent.Policy.from_toml("nonsense = 1\n")
    # Garbage as a quote is a rejection naming the structure, never a crash.
    g = tdx_agent.verify_quote(b"\x04\x00" + b"\xff" * 50, c, at=PHALA_AT)
    assert not g.accepted and g.checks[0].name == "quote structure"
