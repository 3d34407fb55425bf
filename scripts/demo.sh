#!/usr/bin/env bash
# The main job on the simulated TD: PKI, PCCS, a fresh quote, and its verification.
# Uses target/release/tdx-agent if built, else builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TDX_AGENT_BIN:-target/release/tdx-agent}"
[ -x "$BIN" ] || cargo build --release --locked
DIR="${SIM_DIR:-$(mktemp -d /tmp/tdx-agent-sim.XXXXXX)}"
PORT="${PCCS_PORT:-18081}"

echo "== simulated TD and PKI in $DIR"
"$BIN" sim pki --sim-dir "$DIR"

echo "== simulated PCCS on 127.0.0.1:$PORT"
"$BIN" sim pccs --sim-dir "$DIR" --listen "127.0.0.1:$PORT" &
PCCS=$!
trap 'kill $PCCS 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

NONCE=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
RD="${NONCE}$(printf '0%.0s' $(seq 64))"
echo "== a fresh quote over REPORTDATA $RD"
"$BIN" quote --tee sim --sim-dir "$DIR" --report-data "$RD" --out "$DIR/fresh-quote.dat"

echo "== verify it: collateral from the PCCS, the simulated root, REPORTDATA bound"
"$BIN" verify "$DIR/fresh-quote.dat" --pccs "http://127.0.0.1:$PORT" \
  --collateral-cache "$DIR/cache" --insecure-root "$DIR/root.der" --expect-report-data "$RD"

echo "== the same quote against Intel's production root (must be refused, exit 1)"
set +e
"$BIN" verify "$DIR/fresh-quote.dat" --pccs "http://127.0.0.1:$PORT" --collateral-cache "$DIR/cache" >/dev/null
code=$?
set -e
if [ "$code" -ne 1 ]; then echo "demo: expected exit 1, got $code" >&2; exit 1; fi
echo "refused as expected (exit 1)"
