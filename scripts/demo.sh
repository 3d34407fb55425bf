#!/usr/bin/env bash
# The main job on the simulated TD: the agent serving RA-TLS evidence, verified by a client.
#   1. a simulated TD and PKI, and a simulated PCCS serving its collateral;
#   2. `tdx-agent serve` on the simulated TD: RA-TLS certificate, HTTPS + gRPC;
#   3. `tdx-agent attest --nonce`: verify the certificate's quote, then a fresh challenge;
#   4. the same server against Intel's production root: refused (exit 1);
#   5. an offline `verify` of a fresh quote, and the audit log's hash chain.
# Uses target/release/tdx-agent if built, else builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TDX_AGENT_BIN:-target/release/tdx-agent}"
[ -x "$BIN" ] || cargo build --release --locked
DIR="${SIM_DIR:-$(mktemp -d /tmp/tdx-agent-sim.XXXXXX)}"
PCCS_PORT="${PCCS_PORT:-18081}"
AGENT_PORT="${AGENT_PORT:-18443}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: nothing listens on port $1" >&2; return 1
}

echo "== 1. simulated TD and PKI in $DIR"
"$BIN" sim pki --sim-dir "$DIR"
"$BIN" sim pccs --sim-dir "$DIR" --listen "127.0.0.1:$PCCS_PORT" & pids+=($!)
wait_port "$PCCS_PORT"

echo "== 2. the agent on the simulated TD (collateral from the simulated PCCS)"
"$BIN" serve --tee sim --sim-dir "$DIR" --listen "127.0.0.1:$AGENT_PORT" \
  --pccs "http://127.0.0.1:$PCCS_PORT" & pids+=($!)
wait_port "$AGENT_PORT"

echo "== 3. attest it: RA-TLS handshake verified against the simulated root, plus a fresh challenge"
"$BIN" attest "https://127.0.0.1:$AGENT_PORT" --insecure-root "$DIR/root.der" --nonce

echo "== 4. the same agent against Intel's production root (must be refused, exit 1)"
set +e
"$BIN" attest "https://127.0.0.1:$AGENT_PORT" >/dev/null 2>&1
code=$?
set -e
if [ "$code" -ne 1 ]; then echo "demo: expected exit 1, got $code" >&2; exit 1; fi
echo "refused as expected (exit 1)"

echo "== 5. offline: a fresh quote verified with collateral from the PCCS; the audit chain"
NONCE=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
RD="${NONCE}$(printf '0%.0s' $(seq 64))"
"$BIN" quote --tee sim --sim-dir "$DIR" --report-data "$RD" --out "$DIR/fresh-quote.dat"
"$BIN" verify "$DIR/fresh-quote.dat" --pccs "http://127.0.0.1:$PCCS_PORT" \
  --collateral-cache "$DIR/cache" --insecure-root "$DIR/root.der" --expect-report-data "$RD" | head -3
cleanup; pids=()
"$BIN" audit verify "$DIR"/audit/audit-*.log
echo "demo: ok"
