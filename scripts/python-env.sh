#!/usr/bin/env bash
# Builds (once) the Python venv of the tests (the gRPC/probe clients in tests/python/, the
# Python package's pytest suite and maturin to build it) and
# prints its python's path on stdout. Everything comes from the package registry and is
# cached, keyed by the hash of tests/python/requirements.txt, so a second run is instant.
#
# Cache: $TDX_AGENT_PY_CACHE, default ~/.cache/tdx-agent/py-<hash of requirements.txt>.
# Needs `python3 -m venv` (Debian: python3-venv; scripts/setup.sh installs it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
reqs="$root/tests/python/requirements.txt"
hash="$(sha256sum "$reqs" | cut -c1-16)"
VENV="${TDX_AGENT_PY_CACHE:-$HOME/.cache/tdx-agent/py-$hash}"
PY="$VENV/bin/python"
stamp="$VENV/.complete-$hash"

die() { echo "python-env: $*" >&2; exit 1; }

if [ ! -f "$stamp" ]; then
  # Concurrent first runs (parallel tests, two checkouts) build once, one after the other.
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  command -v flock >/dev/null && flock 9
fi
if [ ! -f "$stamp" ]; then
  command -v python3 >/dev/null || die "python3 not found: run scripts/setup.sh (Debian: apt-get install python3 python3-venv)"
  python3 - <<'PYEOF' || die "python3 -m venv is unusable (no venv/ensurepip module): run scripts/setup.sh (Debian: apt-get install python3-venv)"
import ensurepip, venv  # noqa: F401  (Debian splits both out into python3-venv)
PYEOF
  # Everything goes to stderr: stdout carries only the python's path.
  {
    echo "python-env: building $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed: run scripts/setup.sh (Debian: apt-get install python3-venv)"
    "$PY" -m pip install -q --disable-pip-version-check -r "$reqs" \
      || die "pip install -r $reqs failed (is the package registry reachable?)"
    "$PY" -c 'import grpc, grpc_tools.protoc, grpc_health.v1.health_pb2, cryptography.x509, openai, httpx, pytest' \
      || die "the venv at $VENV cannot import its packages"
    touch "$stamp"
  } >&2
fi
echo "$PY"
