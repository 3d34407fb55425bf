"""``python -m tdx_agent attest URL --policy FILE``: verify a running agent from a shell.

Exit status as the ``tdx-agent`` CLI's: 0 accepted, 1 rejected, 2 usage or network error.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import Policy, VerificationError, attest


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdx_agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attest", help="verify a running agent over RA-TLS and print the report")
    a.add_argument("url", help="the agent, e.g. https://10.0.0.5:8443")
    a.add_argument("--policy", required=True, metavar="FILE", help="appraisal policy (TOML)")
    a.add_argument(
        "--insecure-root",
        metavar="DER",
        help="trust this root CA instead of Intel's (simulated TD, test PKIs)",
    )
    a.add_argument("--no-nonce", action="store_true", help="skip the fresh challenge")
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    try:
        policy = Policy.from_file(args.policy)
        report = attest(
            args.url, policy=policy, nonce=not args.no_nonce, insecure_root=args.insecure_root
        )
    except VerificationError as e:
        print(f"tdx_agent: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"tdx_agent: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # never 1 (rejected) for something that is not a verdict
        print(f"tdx_agent: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else str(report), end="" if not args.json else "\n")
    if not report.accepted:
        print(f"tdx_agent: {report.summary()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
