#!/usr/bin/env bash
# Builds (once) the Python venv of the tests (the gRPC/probe clients in tests/python/, the
# Python package's pytest suite and maturin to build it) and prints its python's path on
# stdout. Everything comes from the package registry and is cached, keyed by the hash of
# tests/python/requirements.txt, so a second run is instant.
#
# Cache: $TDX_AGENT_PY_CACHE, default ~/.cache/tdx-agent/py-<hash of requirements.txt>.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
. "$root/scripts/lib/venv.sh"
reqs="$root/tests/python/requirements.txt"
hash="$(sha256sum "$reqs" | cut -c1-16)"
venv_build python-env "$reqs" "${TDX_AGENT_PY_CACHE:-$HOME/.cache/tdx-agent/py-$hash}" \
  '"$PY" -c "import grpc, grpc_tools.protoc, grpc_health.v1.health_pb2, cryptography.x509, openai, httpx, pytest"'
