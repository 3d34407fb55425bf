#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that takes outside bytes (fuzz/, docs/reliability.md).
#
#   scripts/fuzz.sh [--seconds N] [--only TARGET]... [--keep-corpus DIR]
#
# Builds every target with cargo-fuzz (libFuzzer) on the stable toolchain (RUSTC_BOOTSTRAP=1),
# runs each over its seed corpus (real vectors, fuzz/seeds.list, and fuzz/seeds/), then fuzzes
# them for N seconds of wall time in all (default 150; CI's step must stay short, so more than
# 300 needs --long). Exits non-zero if any input crashes, hangs (-timeout) or runs out of
# memory (-rss_limit_mb); the failing inputs are kept and named.
#
# cargo-fuzz and the instrumented build are cached under ~/.cache/tdx-agent (the build keyed
# by rustc version and fuzz/Cargo.lock, as .ci/run keys the workspace's), and so is the corpus
# each target grows, so a machine that fuzzed before starts where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=150
long=0
only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --only) only+=("$2"); shift 2 ;;
    --long) long=1; shift ;;
    *) echo "usage: $0 [--seconds N] [--long] [--only TARGET]..." >&2; exit 2 ;;
  esac
done
if [ "$long" = 0 ] && [ "$seconds" -gt 300 ]; then
  echo "fuzz: --seconds $seconds is more than CI's 300; pass --long for a local run" >&2
  exit 2
fi

# FUZZ_CACHE_DIR moves the build, corpus and findings elsewhere (cargo-fuzz stays put).
tools="$HOME/.cache/tdx-agent"
cache="${FUZZ_CACHE_DIR:-$tools}"
mkdir -p "$tools" "$cache"

# libFuzzer is C++, built by libfuzzer-sys's build script.
if ! command -v c++ >/dev/null 2>&1; then
  echo "== fuzz: installing g++ (libFuzzer's build needs a C++ compiler)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
fi

fuzz_version=0.13.2
fuzz_root="$tools/cargo-fuzz-$fuzz_version"
if [ ! -x "$fuzz_root/bin/cargo-fuzz" ]; then
  echo "== fuzz: installing cargo-fuzz $fuzz_version"
  # Its own scratch target dir: the install's build is thrown away.
  CARGO_TARGET_DIR="$tools/cargo-fuzz-build" \
    cargo install cargo-fuzz --locked --version "$fuzz_version" --root "$fuzz_root"
  rm -rf "$tools/cargo-fuzz-build"
fi
export PATH="$fuzz_root/bin:$PATH"

key="$(rustc -V | sha256sum | cut -c1-12)-$(sha256sum fuzz/Cargo.lock | cut -c1-12)"
target_dir="$cache/fuzz-target-$key"
# Only the current key is worth keeping (each is about 2 GiB).
find "$cache" -maxdepth 1 -name 'fuzz-target-*' ! -name "fuzz-target-$key" \
  -exec rm -rf {} + 2>/dev/null || true

# cargo-fuzz has no --locked: check the lockfile is complete before it builds anything.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

mapfile -t all < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^tdx-agent-fuzz$')
if [ ${#only[@]} -gt 0 ]; then targets=("${only[@]}"); else targets=("${all[@]}"); fi

echo "== fuzz: building ${#all[@]} targets"
build_start=$SECONDS
# No sanitizer: every crate of ours forbids unsafe code, so ASan would mostly watch the
# standard library at a third of the speed; panics, hangs and memory blow-ups are what we hunt.
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none --target-dir "$target_dir")
echo "fuzz: built in $((SECONDS - build_start)) s"
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"

# Seeds: the committed ones, the repository files fuzz/seeds.list names, and the TOML examples
# of the docs (```toml blocks) for the two TOML targets.
seed_root="$cache/fuzz-seeds"
rm -rf "$seed_root"
for t in "${all[@]}"; do
  mkdir -p "$seed_root/$t"
  if [ -d "fuzz/seeds/$t" ]; then cp fuzz/seeds/"$t"/* "$seed_root/$t/"; fi
done
while read -r t glob; do
  case "$t" in ''|'#'*) continue ;; esac
  for f in $glob; do
    [ -f "$f" ] && cp "$f" "$seed_root/$t/$(echo "$f" | tr / _)"
  done
done < fuzz/seeds.list
for md in docs/*.md README.md; do
  awk -v out="$seed_root/policy_toml/$(basename "$md" .md)-" '
    /^```toml/ { n++; on = 1; next }
    /^```/ { on = 0; next }
    on { print > (out n ".toml") }' "$md"
done
cp "$seed_root"/policy_toml/*.toml "$seed_root/config_toml/" 2>/dev/null || true

# Limits every run shares: an input that takes longer than 10 s or a process above 1 GiB is a
# finding, not a slow machine (the slowest real input, a full quote appraisal, takes
# milliseconds).
limits=(-timeout=10 -rss_limit_mb=1024 -max_len=65536)
artifacts="$cache/fuzz-artifacts"
# The targets that read files (audit log, RTMR3 log) write their scratch files under TMPDIR,
# one folder per process: on tmpfs where there is one (the daemon's RTMR3 log lives on /run,
# and on a disk their fsyncs leave the CPU idle most of the time), dropped after each run.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR="/dev/shm/tdx-agent-fuzz-$$"
else
  export TMPDIR="$cache/fuzz-tmp"
fi
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR"
mkdir -p "$artifacts"
failed=()

echo "== fuzz: every target over its seeds"
for t in "${targets[@]}"; do
  log="$artifacts/$t-seeds.log"
  mkdir -p "$artifacts/$t"
  if ! "$bin_dir/$t" "${limits[@]}" -runs=0 -artifact_prefix="$artifacts/$t/" \
    "$seed_root/$t" >"$log" 2>&1; then
    echo "fuzz: $t FAILED on its seeds (log $log)"
    tail -n 30 "$log"
    failed+=("$t")
  else
    echo "fuzz: $t: $(grep -c . <(ls "$seed_root/$t")) seeds ok"
  fi
done

# Then fuzz: the wall-time budget split evenly, targets run side by side on every core.
jobs=$(nproc)
[ "$jobs" -gt ${#targets[@]} ] && jobs=${#targets[@]}
each=$(( seconds * jobs / ${#targets[@]} ))
[ "$each" -lt 1 ] && each=1
echo "== fuzz: ${#targets[@]} targets, $each s each, $jobs at a time"
run_one() {
  local t="$1"
  local corpus="$cache/fuzz-corpus/$t"
  mkdir -p "$corpus" "$artifacts/$t"
  if "$bin_dir/$t" "${limits[@]}" -max_total_time="$each" -print_final_stats=1 \
    -artifact_prefix="$artifacts/$t/" "$corpus" "$seed_root/$t" \
    >"$artifacts/$t.log" 2>&1; then
    echo "fuzz: $t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$artifacts/$t.log" |
      grep -o '[0-9]*$') runs, no crash"
  else
    echo "fuzz: $t FAILED (log $artifacts/$t.log)"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$artifacts/$t.log" | head -n 10
    return 1
  fi
}
export -f run_one
export bin_dir artifacts cache seed_root each
export limits_str="${limits[*]}"
# shellcheck disable=SC2016
if ! printf '%s\n' "${targets[@]}" |
  xargs -P "$jobs" -I{} bash -c 'limits=($limits_str); run_one "$1"' _ {}; then
  failed+=("(fuzzing)")
fi

rm -rf "$TMPDIR"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}; crashing inputs under $artifacts/<target>/" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets passed"
