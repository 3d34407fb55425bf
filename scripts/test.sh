#!/usr/bin/env bash
# The whole test suite: unit tests beside the code and the end-to-end tests in tests/ that
# start the real binary. Ends with one summary line over every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo build --locked -p tsm-emulator
# The build guest images ship, without the simulated TD, for tests/no_sim.rs: built first and
# copied aside, since the test build's tdx-agent (default features) takes its place.
cargo build --locked -p tdx-agent --no-default-features
target_dir="${CARGO_TARGET_DIR:-target}"
cp "$target_dir/debug/tdx-agent" "$target_dir/debug/tdx-agent-nosim"
set +e
cargo test --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
