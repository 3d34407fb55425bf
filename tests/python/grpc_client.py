#!/usr/bin/env python3
"""A third-party gRPC client of tdx-agent: the official grpcio stack, not our Rust code.

Usage: grpc_client.py --addr HOST:PORT --mode evidence|event-log|health|bad|readyz [--proto-dir DIR]

Trust: RA-TLS. The serving certificate is self-signed with SAN "localhost"; the real trust is
the quote inside it. The client fetches the server's own certificate, trusts exactly that one
and overrides the TLS target name to "localhost".

Every mode prints one JSON object on stdout and exits 0 on success; on failure it prints a
message on stderr (and, where there is one, the JSON summary on stdout) and exits non-zero:
  1  a check failed
  3  the server could not be reached (nothing listening, handshake failed)
"""

import argparse
import json
import os
import secrets
import ssl
import sys
import tempfile
import urllib.error
import urllib.request

RA_TLS_EVIDENCE_OID = "2.23.133.5.4.9"
BUNDLE_FIELDS = {
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
}
SERVICE = "tdx_agent.v1.Attestation"
TIMEOUT = 20.0


class CheckFailed(Exception):
    pass


class Unreachable(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--addr must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def server_pem(addr):
    try:
        return ssl.get_server_certificate(split_addr(addr), timeout=5)
    except OSError as e:
        raise Unreachable(f"cannot fetch the server certificate from {addr}: {e}") from e


def channel(addr):
    import grpc

    pem = server_pem(addr).encode()
    creds = grpc.ssl_channel_credentials(root_certificates=pem)
    return grpc.secure_channel(
        addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def gen_stubs(proto_dir):
    """Compiles proto/tdx_agent/v1/attestation.proto with grpc_tools into a temp dir."""
    from grpc_tools import protoc
    import importlib.resources

    out = tempfile.mkdtemp(prefix="tdx-agent-py-stubs-")
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    rel = "tdx_agent/v1/attestation.proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_dir, rel),
        ]
    )
    if rc != 0:
        raise CheckFailed(f"grpc_tools.protoc failed on {rel} (exit {rc})")
    sys.path.insert(0, out)
    from tdx_agent.v1 import attestation_pb2, attestation_pb2_grpc

    return attestation_pb2, attestation_pb2_grpc


def mode_evidence(args):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pb, pb_grpc = gen_stubs(args.proto_dir)
    with channel(args.addr) as ch:
        stub = pb_grpc.AttestationStub(ch)
        nonce = secrets.token_bytes(32)
        ev = stub.GetEvidence(pb.GetEvidenceRequest(nonce=nonce), timeout=TIMEOUT)
        check(len(ev.certificate) > 0, "Evidence.certificate is empty")
        check(len(ev.certificate_quote) > 0, "Evidence.certificate_quote is empty")
        try:
            bundle = json.loads(ev.collateral_json)
        except ValueError as e:
            raise CheckFailed(f"Evidence.collateral_json is not JSON: {e}") from e
        check(isinstance(bundle, dict), "collateral_json is not a JSON object")
        missing = BUNDLE_FIELDS - set(bundle)
        check(not missing, f"collateral_json lacks {sorted(missing)}")
        check(len(ev.challenge_quote) > 0, "Evidence.challenge_quote is empty with a nonce")
        check(ev.HasField("proof"), "Evidence.proof is missing with a nonce")
        check(ev.proof.tree_size >= 1, f"proof.tree_size is {ev.proof.tree_size}")
        check(
            ev.proof.leaf_index < ev.proof.tree_size,
            f"proof.leaf_index {ev.proof.leaf_index} >= tree_size {ev.proof.tree_size}",
        )
        check(
            len(ev.audit_chain_head) == 32,
            f"audit_chain_head is {len(ev.audit_chain_head)} bytes, not 32",
        )

        cert = x509.load_der_x509_certificate(ev.certificate)
        oids = [e.oid.dotted_string for e in cert.extensions]
        check(
            RA_TLS_EVIDENCE_OID in oids,
            f"certificate lacks extension {RA_TLS_EVIDENCE_OID} (has {oids})",
        )
        # The certificate in the evidence is the one this connection is served with.
        served = x509.load_pem_x509_certificate(server_pem(args.addr).encode())
        same_cert = served.public_bytes(Encoding.DER) == ev.certificate

        m = stub.GetMeasurements(pb.GetMeasurementsRequest(), timeout=TIMEOUT)
        check(len(m.mrtd) == 48, f"mrtd is {len(m.mrtd)} bytes, not 48")
        check(len(m.rtmr) == 4, f"{len(m.rtmr)} RTMRs, not 4")
        check(all(len(r) == 48 for r in m.rtmr), "an RTMR is not 48 bytes")

        v = stub.Verify(
            pb.VerifyRequest(quote=ev.certificate_quote, collateral_json=ev.collateral_json),
            timeout=TIMEOUT,
        )
        try:
            report = json.loads(v.report_json)
        except ValueError as e:
            raise CheckFailed(f"VerifyResponse.report_json is not JSON: {e}") from e
        check(v.accepted, f"Verify rejected the agent's own certificate quote: {v.report_json}")

    summary = {
        "ok": True,
        "certificate_bytes": len(ev.certificate),
        "certificate_quote_bytes": len(ev.certificate_quote),
        "certificate_extensions": oids,
        "certificate_is_served_certificate": same_cert,
        "collateral_fields": sorted(bundle),
        "challenge_quote_bytes": len(ev.challenge_quote),
        "proof": {
            "leaf_index": ev.proof.leaf_index,
            "tree_size": ev.proof.tree_size,
            "audit_path_len": len(ev.proof.audit_path),
        },
        "audit_chain_head": ev.audit_chain_head.hex(),
        "measurements": {"tee": m.tee, "mrtd": m.mrtd.hex(), "rtmrs": len(m.rtmr)},
        "verify": {
            "accepted": v.accepted,
            "tcb_status": report.get("tcb_status") if isinstance(report, dict) else None,
        },
    }
    print(json.dumps(summary))
    return 0


def mode_event_log(args):
    pb, pb_grpc = gen_stubs(args.proto_dir)
    with channel(args.addr) as ch:
        stub = pb_grpc.AttestationStub(ch)
        log = stub.GetEventLog(pb.GetEventLogRequest(), timeout=TIMEOUT)
    print(json.dumps({"jsonl": log.jsonl}))
    return 0


def mode_health(args):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    statuses = {}
    with channel(args.addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", SERVICE):
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
                statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
            except grpc.RpcError as e:
                statuses[name] = f"RPC_ERROR:{e.code().name}"
    print(json.dumps({"statuses": statuses}))
    return 0 if all(s == "SERVING" for s in statuses.values()) else 1


def mode_bad(args):
    import grpc

    pb, pb_grpc = gen_stubs(args.proto_dir)
    with channel(args.addr) as ch:
        stub = pb_grpc.AttestationStub(ch)
        # A method the agent does not have: gRPC's own UNIMPLEMENTED, not an HTTP error page.
        nope = ch.unary_unary("/tdx_agent.v1.Attestation/NoSuchMethod")
        try:
            nope(b"", timeout=TIMEOUT)
            raise CheckFailed("an unknown method answered OK")
        except grpc.RpcError as e:
            unknown = e.code().name
        try:
            stub.GetEvidence(pb.GetEvidenceRequest(nonce=b"\x01" * 65), timeout=TIMEOUT)
        except grpc.RpcError as e:
            out = {"code": e.code().name, "details": e.details(), "unknown_method": unknown}
            print(json.dumps(out))
            check(
                e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                f"a 65-byte nonce gave {e.code().name}, not INVALID_ARGUMENT",
            )
            return 0
    print(json.dumps({"code": "OK", "unknown_method": unknown}))
    raise CheckFailed("GetEvidence accepted a 65-byte nonce")


def mode_readyz(args):
    """GET /readyz over the same listener (HTTPS), trusting the server's own certificate."""
    pem = server_pem(args.addr)
    ctx = ssl.create_default_context(cadata=pem)
    ctx.check_hostname = False  # the URL names an IP; the pinned certificate is the trust
    host, port = split_addr(args.addr)
    try:
        with urllib.request.urlopen(
            f"https://{host}:{port}/readyz", context=ctx, timeout=TIMEOUT
        ) as r:
            code, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read()
    except OSError as e:
        raise Unreachable(f"GET /readyz: {e}") from e
    print(json.dumps({"status": code, "body": json.loads(body)}))
    return 0 if code == 200 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True, help="HOST:PORT of the agent's TLS listener")
    p.add_argument("--mode", required=True, choices=["evidence", "event-log", "health", "bad", "readyz"])
    p.add_argument(
        "--proto-dir",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto"),
        help="the repository's proto/ directory",
    )
    args = p.parse_args()
    modes = {
        "evidence": mode_evidence,
        "event-log": mode_event_log,
        "health": mode_health,
        "bad": mode_bad,
        "readyz": mode_readyz,
    }
    try:
        return modes[args.mode](args)
    except Unreachable as e:
        print(f"grpc_client: unreachable: {e}", file=sys.stderr)
        return 3
    except CheckFailed as e:
        print(f"grpc_client: {args.mode}: check failed: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # an RPC error or a broken response: say which
        print(f"grpc_client: {args.mode}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
