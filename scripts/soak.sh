#!/usr/bin/env bash
# Soak: 1,000 SSE streams through `serve` and 250 through `connect`, all at once, for
# SECS seconds (default 600) with an event a second, release build; every stream must get
# every event in order, and the agents' memory and descriptors are printed every second
# (tests/streams.rs; the result goes in docs/benchmarks.md).
#   scripts/soak.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
TDX_AGENT_SOAK_SECS="$secs" TDX_AGENT_SOAK_EVENT_MS=1000 \
  cargo test --release --locked --test streams -- --nocapture
