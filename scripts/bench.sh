#!/usr/bin/env bash
# Benchmarks. Each prints its own baseline from the same run and the ratio to it, because
# these machines are noisy: compare ratios, not absolute times.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
export TDX_AGENT_BIN="$PWD/target/release/tdx-agent"
cargo bench --locked --bench verify
cargo bench --locked --bench daemon
cargo bench --locked --bench gpu_attest
cargo bench --locked --bench watch
cargo bench --locked --bench model_hash
scripts/bench-deps.sh && cargo bench --locked --bench front_door
cargo bench --locked --bench upstream_client
# The Python package's in-process transport against plain httpx and connect (docs/python.md):
# the release build of the extension, in the tests' venv.
py="$(scripts/python-env.sh)"
rm -rf target/wheels-release
"$py" -m maturin build --release --locked -m python/Cargo.toml -o target/wheels-release --quiet
"$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
  target/wheels-release/tdx_agent-*-abi3-*.whl
"$py" python/bench/transport.py
