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
# The Python package (python/), built with maturin into the tests' venv: the pytest suite
# below and tests/vllm_e2e.rs use it.
py="$(scripts/python-env.sh)"
rm -rf "$target_dir/wheels"
"$py" -m maturin build --locked -m python/Cargo.toml -o "$target_dir/wheels" --quiet
"$py" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
  "$target_dir"/wheels/tdx_agent-*-abi3-*.whl
set +e
cargo test --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo
echo "== python/tests (pytest)"
TDX_AGENT_BIN="$target_dir/debug/tdx-agent" "$py" -m pytest python/tests -q -p no:cacheprovider 2>&1 | tee -a "$log"
py_status=${PIPESTATUS[0]}
set -e
[ "$status" -ne 0 ] || status=$py_status
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
# pytest's closing line: "N passed", "N failed, M passed", ... (awk alone: under pipefail a
# grep that finds no "failed" would end the script).
py_count() {
  awk -v word="$1" '/^(=+ )?[0-9]+ (passed|failed)/ {
    for (i = 1; i < NF; i++) if ($(i + 1) ~ "^" word) s += $i
  } END { print s + 0 }' "$log"
}
py_passed=$(py_count passed)
py_failed=$(py_count failed)
passed=$((passed + py_passed))
failed=$((failed + py_failed))
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
