#!/usr/bin/env bash
# Builds (once) the Python venv of the GPU test oracle (tests/gpu_oracle/: NVIDIA's own
# nv-local-gpu-verifier 2.7.3, run in-process and offline to produce the expected result of
# every GPU check) and prints its python's path on stdout. Everything comes from the package
# registry and is cached, keyed by the hash of tests/gpu_oracle/requirements.txt (exact pins),
# so a second run is instant.
#
# Cache: $TDX_AGENT_NVORACLE_CACHE, default ~/.cache/tdx-agent/nvoracle-<hash of requirements.txt>.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
. "$root/scripts/lib/venv.sh"
reqs="$root/tests/gpu_oracle/requirements.txt"
hash="$(sha256sum "$reqs" | cut -c1-16)"
# --no-deps: requirements.txt pins the whole resolved set, so nothing floats; `pip check`
# proves the set consistent. Importing NVIDIA's verifier.config writes ./verifier.log, which
# the scratch folder takes.
venv_build nvidia-oracle-env "$reqs" "${TDX_AGENT_NVORACLE_CACHE:-$HOME/.cache/tdx-agent/nvoracle-$hash}" \
  '"$PY" -m pip check >&2 && "$PY" -c "import verifier.cc_admin, verifier.rim, OpenSSL.crypto, signxml, ecdsa, cryptography.x509.ocsp"' \
  --no-deps
