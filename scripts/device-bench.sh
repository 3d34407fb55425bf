#!/usr/bin/env bash
# The many-core benches (issue 18 part 5) as one prepared call on a lent 16-core machine, which
# has no network, no Rust and no nginx: `pack` here, then `run` there.
#
#   scripts/device-bench.sh pack
#       Builds the release binary and the front-door and daemon benches, strips them, and
#       downloads nginx and wrk with the libraries they need as Debian packages, all into
#       .devbench/ (git-ignored; it must stay under the device's 64 MiB).
#   scripts/device-bench.sh run
#       On the device (`run` with carry [".devbench"], timeout_s 600): unpacks the packages
#       with `dpkg -x` under /tmp (never over /), then, with `[limits] yield_before_sleep`
#       on and then off, runs the front-door bench at 64 and 256 connections with 4 wrk
#       threads (3 rounds of 6 s) and the daemon bench (handshake CPU against plain rustls),
#       each setting's logs to $OUT. About 7 minutes in all.
#
# The benches print their own baselines (nginx, plain rustls) from the same run: compare the
# ratios, and only between runs on the same kind of machine (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
pack=.devbench

# `dpkg -x DEB DIR`, or the same in Python where the image has no dpkg: a .deb is an ar
# archive whose data.tar.* member holds the files.
unpack() {
  if command -v dpkg >/dev/null 2>&1 && [ -z "${DEVBENCH_NO_DPKG:-}" ]; then
    dpkg -x "$1" "$2"
    return
  fi
  python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, "rb").read()
if data[:8] != b"!<arch>\n":
    sys.exit(f"{deb}: not a .deb")
pos = 8
while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58].decode().strip())
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])).extractall(dest)
    pos += 60 + size + (size & 1)
PY
}

case "${1:-}" in
pack)
  rm -rf "$pack"
  mkdir -p "$pack/bin" "$pack/debs"
  cargo build --release --locked
  target="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  strip --strip-debug -o "$pack/bin/tdx-agent" "$target/release/tdx-agent"
  # The bench executables, as cargo names them ("Executable benches/x.rs (PATH)").
  for b in front_door daemon; do
    exe="$(cargo bench --locked --no-run --bench "$b" 2>&1 |
      sed -n "s|.*Executable benches/$b.rs (\(.*\))|\1|p" | tail -1)"
    [ -x "$exe" ] || { echo "device-bench: no executable for bench $b" >&2; exit 2; }
    strip --strip-debug -o "$pack/bin/$b" "$exe"
  done
  # nginx and wrk with the libraries a CUDA image may lack; libc comes from the device.
  (cd "$pack/debs" && apt-get download nginx wrk libluajit-5.1-2 libluajit-5.1-common \
    libssl3 libpcre2-8-0)
  du -sh "$pack"
  ;;
run)
  [ -d "$pack/bin" ] || { echo "device-bench: no $pack here: pack it and carry it" >&2; exit 2; }
  out="${OUT:-/tmp/devbench-out}"
  mkdir -p "$out"
  root=/tmp/devbench-root
  rm -rf "$root"
  for f in "$pack"/debs/*.deb; do unpack "$f" "$root"; done
  export PATH="$root/usr/sbin:$root/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  {
    date -u
    nproc
    uname -r
    nginx -v 2>&1
    wrk --version 2>&1 | head -1 || true
    grep -m1 'model name' /proc/cpuinfo
    cat /proc/loadavg
  } >"$out/machine.txt" 2>&1
  export TDX_AGENT_BIN="$PWD/$pack/bin/tdx-agent" TDX_AGENT_BENCH_THREADS=4
  export TDX_AGENT_BENCH_SECS="${TDX_AGENT_BENCH_SECS:-6}"
  export TDX_AGENT_BENCH_ROUNDS="${TDX_AGENT_BENCH_ROUNDS:-3}"
  export TDX_AGENT_BENCH_SSE_N="${TDX_AGENT_BENCH_SSE_N:-500}"
  for y in 1 0; do
    name=$([ "$y" = 1 ] && echo yield || echo noyield)
    for conns in 64 256; do
      echo "=== yield_before_sleep $y, $conns connections, $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
      TDX_AGENT_BENCH_YIELD=$y TDX_AGENT_BENCH_CONNS=$conns "$pack/bin/front_door" --bench 2>&1 || true
    done >"$out/front_door-$name.log"
    TDX_AGENT_BENCH_YIELD=$y "$pack/bin/daemon" --bench >"$out/daemon-$name.log" 2>&1 || true
  done
  ls -l "$out"
  ;;
*)
  echo "usage: $0 pack | run" >&2
  exit 2
  ;;
esac
