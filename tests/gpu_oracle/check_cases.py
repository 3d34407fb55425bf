#!/usr/bin/env python3
"""Runs the oracle (oracle.py, NVIDIA's verifier in-process and offline) on every case of
tests/vectors/nvidia/cases.json and compares its result with the case's "expect", field by
field. Prints a table; exits 1 on any disagreement.

Usage:  "$(scripts/nvidia-oracle-env.sh)" tests/gpu_oracle/check_cases.py [-v] [--json out.json]

Besides cases.json's "expect", it also compares NVIDIA's attest() log with the "attest_log" of
the case's expected-<case>.json and, for stapled-OCSP cases, the sequence of stapled responses
looked up (the "ocsp" line of that file); then the RIM-only expected files (every RIM alone).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.normpath(os.path.join(HERE, "..", "vectors", "nvidia"))
sys.path.insert(0, HERE)

import oracle  # noqa: E402  (imports NVIDIA's verifier, with the oracle's patches)

FIELDS = ["nvidia_attest_overall", "nvidia_attest_stopped_at", "device_chain_valid", "fwid_match",
          "nonce_match", "signature_valid", "report_driver_version", "report_vbios_version",
          "driver_rim", "vbios_rim", "measurements_match", "mismatched_indexes", "ocsp"]
RIM_KEYS = ["schema_valid", "version_match", "cert_chain_valid", "cert_status", "signature_valid",
            "colloquial_version"]
SHORT = {"nvidia_attest_overall": "overall", "nvidia_attest_stopped_at": "stop",
         "device_chain_valid": "chain", "fwid_match": "fwid", "nonce_match": "nonce",
         "signature_valid": "sig", "report_driver_version": "drv", "report_vbios_version": "vbios",
         "driver_rim": "dRIM", "vbios_rim": "vRIM", "measurements_match": "msr",
         "mismatched_indexes": "idx", "ocsp": "ocsp", "log": "log", "ocsp_seq": "oseq"}


RIM_ONLY = ["nvidia-nvtrust/vbios-rims/expected-at-2024-06-01.json",
            "nvidia-nvtrust/vbios-rims/expected-at-2026-12-04.json",
            "nvidia-attestation-sdk/rims/expected-at-2026-01-01.json",
            "nvidia-attestation-sdk/rims/expected-at-2027-01-01.json"]


def job_for(case):
    ocsp_cfg = {"mode": "stub-good"}
    if case.get("ocsp_dir"):
        d = case["ocsp_dir"]
        ocsp_cfg = {"mode": "stapled",
                    "responses": [os.path.join(d, n) for n in sorted(os.listdir(d))]}
    return {
        "id": case["case"], "arch": case["arch"], "report": case["report"],
        "cert_chain": case["cert_chain"], "nonce": case["nonce"],
        "driver_rim": case.get("driver_rim"), "vbios_rim": case.get("vbios_rim"),
        "ocsp": ocsp_cfg, "verify_at": case["verify_at"],
        "device_root_pem": None, "rim_root_pem": None,
    }


def actual_value(field, res):
    c = res["checks"]
    if field == "nvidia_attest_overall":
        return res["overall"]
    if field == "nvidia_attest_stopped_at":
        return res["stopped_at"]
    if field == "ocsp":
        # cases.json words the mode: "not checked" (stub-good) or stapled responses
        return "not checked" if c["ocsp"]["mode"] == "stub-good" else "stapled responses checked by NVIDIA code"
    if field in ("driver_rim", "vbios_rim"):
        v = c[field]
        return v if isinstance(v, str) else {k: v[k] for k in RIM_KEYS}
    return c[field]


def normalise(field, v):
    # cases.json spells the skipped FWID comparison out; the oracle says "n/a"
    if field == "fwid_match" and isinstance(v, str) and v.startswith("n/a"):
        return "n/a"
    if field in ("driver_rim", "vbios_rim") and isinstance(v, dict):
        return {k: v.get(k) for k in RIM_KEYS}
    return v


def main(argv):
    verbose = "-v" in argv
    out_json = argv[argv.index("--json") + 1] if "--json" in argv else None
    os.chdir(VECTORS)  # cases.json paths are relative to it (and so are the paths in NVIDIA's log)
    with open("cases.json") as f:
        cases = json.load(f)
    jobs = [job_for(c) for c in cases]
    results = oracle.run_jobs(jobs)

    cols = FIELDS + ["log", "ocsp_seq"]
    header = "case".ljust(78) + " " + " ".join(SHORT[c].ljust(5) for c in cols) + "  secs"
    print(header)
    print("-" * len(header))
    disagreements = []
    for case, res in zip(cases, results):
        cells = []
        if "oracle_error" in res:
            disagreements.append((case["case"], "oracle_error", None, res["oracle_error"]))
            print(case["case"].ljust(78), "ORACLE ERROR:", res["oracle_error"])
            continue
        for field in FIELDS:
            exp = normalise(field, case["expect"].get(field))
            act = normalise(field, actual_value(field, res))
            if exp == act:
                cells.append("ok")
            else:
                cells.append("DIFF")
                disagreements.append((case["case"], field, exp, act))
        # NVIDIA's own log and, when stapled, the OCSP lookup sequence, from expected-<case>.json
        with open(case["case"]) as f:
            full = json.load(f)
        if full.get("attest_log") == res["log"]:
            cells.append("ok")
        else:
            cells.append("DIFF")
            disagreements.append((case["case"], "log", full.get("attest_log"), res["log"]))
        if case.get("ocsp_dir"):
            o = res["checks"]["ocsp"]
            seq = [x["response"] for x in o["attest_lookups"]]
            for k in ("driver_rim", "vbios_rim"):
                if o.get(k):
                    seq += [x["response"] for x in o[k]["certificates"]]
            seq_s = "[" + ", ".join(repr("stapled " + str(n)) for n in seq) + "]"
            if full.get("ocsp", "").endswith(seq_s):
                cells.append("ok")
            else:
                cells.append("DIFF")
                disagreements.append((case["case"], "ocsp_seq", full.get("ocsp"), seq_s))
        else:
            cells.append("-")
        print(case["case"].ljust(78) + " " + " ".join(x.ljust(5) for x in cells) + f"  {res['seconds']:.3f}")

    # RIM-only expected files (not in cases.json): every RIM alone, NVIDIA's RIM class, OCSP
    # stubbed, at the file's verify_at
    rim_keys = {"colloquial_version": "colloquial_version", "active_indexes": "active_indexes",
                "exception": "exception", "schema_validated": "schema_valid",
                "cert_chain_validated": "cert_chain_valid", "cert_status": "cert_status",
                "cert_expiration_date": "cert_earliest_not_after", "signature_verified": "signature_valid"}
    print()
    for exp_file in RIM_ONLY:
        with open(exp_file) as f:
            full = json.load(f)
        folder = os.path.dirname(exp_file)
        n_ok = 0
        for name, exp in sorted(full["results"].items()):
            act = oracle.run_rim(full["rim_kind"], os.path.join(folder, name), full["verify_at"])
            diffs = [(k, exp.get(k), act.get(v)) for k, v in rim_keys.items() if exp.get(k) != act.get(v)]
            if diffs:
                for k, e, a in diffs:
                    disagreements.append((f"{exp_file} :: {name}", k, e, a))
            else:
                n_ok += 1
        print(f"{exp_file.ljust(78)} RIM-only: {n_ok}/{len(full['results'])} agree on "
              + ", ".join(rim_keys))

    total = sum(r.get("seconds", 0) for r in results)
    print(f"\n{len(cases)} cases, {len(disagreements)} disagreement(s); oracle time {total:.2f}s "
          f"({total / max(len(cases), 1):.3f}s per job)")
    for case, field, exp, act in disagreements:
        print(f"\nDISAGREE {case} :: {field}\n  expected: {json.dumps(exp)}\n  oracle:   {json.dumps(act)}")
    if verbose:
        print(json.dumps(results, indent=1))
    if out_json:
        with open(out_json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
