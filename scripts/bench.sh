#!/usr/bin/env bash
# Benchmarks. Each prints its own baseline from the same run and the ratio to it, because
# these machines are noisy: compare ratios, not absolute times.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
export TDX_AGENT_BIN="$PWD/target/release/tdx-agent"
cargo bench --locked --bench verify
cargo bench --locked --bench daemon
cargo bench --locked --bench model_hash
scripts/bench-deps.sh && cargo bench --locked --bench front_door
