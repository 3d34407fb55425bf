#!/usr/bin/env bash
# Builds (once) the Python venv of the GPU test oracle (tests/gpu_oracle/: NVIDIA's own
# nv-local-gpu-verifier 2.7.3, run in-process and offline to produce the expected result of
# every GPU check) and prints its python's path on stdout. Everything comes from the package
# registry and is cached, keyed by the hash of tests/gpu_oracle/requirements.txt (exact pins),
# so a second run is instant.
#
# Cache: $TDX_AGENT_NVORACLE_CACHE, default ~/.cache/tdx-agent/nvoracle-<hash of requirements.txt>.
# Needs `python3 -m venv` (Debian: python3-venv; scripts/setup.sh installs it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
reqs="$root/tests/gpu_oracle/requirements.txt"
hash="$(sha256sum "$reqs" | cut -c1-16)"
VENV="${TDX_AGENT_NVORACLE_CACHE:-$HOME/.cache/tdx-agent/nvoracle-$hash}"
PY="$VENV/bin/python"
stamp="$VENV/.complete-$hash"

die() { echo "nvidia-oracle-env: $*" >&2; exit 1; }

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
    echo "nvidia-oracle-env: building $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed: run scripts/setup.sh (Debian: apt-get install python3-venv)"
    # --no-deps: requirements.txt pins the whole resolved set, so nothing floats.
    "$PY" -m pip install -q --disable-pip-version-check --no-deps -r "$reqs" \
      || die "pip install -r $reqs failed (is the package registry reachable?)"
    "$PY" -m pip check >&2 || die "the pinned set in $reqs is inconsistent (pip check)"
    # (from a scratch folder: importing NVIDIA's verifier.config writes ./verifier.log)
    (t="$(mktemp -d)"; cd "$t" && "$PY" -c 'import verifier.cc_admin, verifier.rim, OpenSSL.crypto, signxml, ecdsa, cryptography.x509.ocsp'; rc=$?; rm -rf "$t"; exit $rc) \
      || die "the venv at $VENV cannot import NVIDIA's verifier"
    touch "$stamp"
  } >&2
fi
echo "$PY"
