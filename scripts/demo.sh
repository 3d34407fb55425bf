#!/usr/bin/env bash
# The main job on the simulated TD: the agent measuring a model and fronting a model server,
# verified by a client before anything reaches the model.
#   1. a simulated TD with two simulated H100s (CC on) and its PKI, a simulated PCCS serving
#      its collateral, a toy model directory and a stand-in model server (python's http.server
#      with a canned /v1/models; the real vLLM run is tests/vllm_e2e.rs);
#   2. `tdx-agent serve` on the simulated TD: attests the GPUs and measures its config, the
#      model and the GPUs' CC state into RTMR3, then serves the RA-TLS certificate (bound to
#      the GPUs' evidence), HTTPS + gRPC, and /v1/ to the model server;
#   3. `tdx-agent attest --nonce` with a policy pinning the model and requiring both GPUs:
#      every check, per GPU too, and a fresh challenge;
#   4. the same server against Intel's production root, against a policy pinning another
#      model, and with GPU 1 switched to devtools mode: all refused (exit 1);
#   5. `tdx-agent connect` in front: an OpenAI-style request through the verified chain;
#   6. an offline `verify` of a fresh quote, and the audit log's hash chain.
# Uses target/release/tdx-agent if built, else builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TDX_AGENT_BIN:-${CARGO_TARGET_DIR:-target}/release/tdx-agent}"
[ -x "$BIN" ] || cargo build --release --locked
DIR="${SIM_DIR:-$(mktemp -d /tmp/tdx-agent-sim.XXXXXX)}"
PCCS_PORT="${PCCS_PORT:-18081}"
AGENT_PORT="${AGENT_PORT:-18443}"
MODEL_PORT="${MODEL_PORT:-18000}"
CONNECT_PORT="${CONNECT_PORT:-19000}"
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

echo "== 1. simulated TD and PKI in $DIR, a simulated PCCS, a model and a stand-in model server"
"$BIN" sim pki --sim-dir "$DIR" --gpus 2
"$BIN" sim pccs --sim-dir "$DIR" --listen "127.0.0.1:$PCCS_PORT" & pids+=($!)
mkdir -p "$DIR/model" "$DIR/upstream/v1"
printf '{"layers": 2}\n' > "$DIR/model/config.json"
head -c 1048576 /dev/zero > "$DIR/model/weights.bin"
printf 'ok\n' > "$DIR/upstream/health"
printf '{"object":"list","data":[{"id":"demo","object":"model"}]}\n' > "$DIR/upstream/v1/models"
python3 -m http.server "$MODEL_PORT" --bind 127.0.0.1 --directory "$DIR/upstream" \
  >/dev/null 2>&1 & pids+=($!)
wait_port "$PCCS_PORT"; wait_port "$MODEL_PORT"
"$BIN" measure-model "$DIR/model"
MANIFEST=$("$BIN" measure-model "$DIR/model" 2>&1 >/dev/null | sed -n 's/^manifest sha256: //p')
# The TD image (MRTD, RTMR0-2): connect forwards only to a pinned image.
"$BIN" measurements --tee sim --sim-dir "$DIR" --toml > "$DIR/policy.toml"
cat >> "$DIR/policy.toml" <<EOF
# Accept this simulated TD only if it measured exactly this model (and its own config).
[[rtmr3_events.pin]]
type = "model"
allowed = [{ manifest_sha256 = "$MANIFEST" }]
[[rtmr3_events.pin]]
type = "agent-config"
# The GPUs the agent verified and measured (docs/gpu.md): both, CC on, firmware NVIDIA signed.
[[rtmr3_events.pin]]
type = "gpu"
[gpu]
count = 2
EOF
sed "s/$MANIFEST/$(printf '0%.0s' $(seq 64))/" "$DIR/policy.toml" > "$DIR/other-model.toml"

echo "== 2. the agent on the simulated TD: model measured into RTMR3, fronting the model server"
"$BIN" serve --tee sim --sim-dir "$DIR" --listen "127.0.0.1:$AGENT_PORT" \
  --pccs "http://127.0.0.1:$PCCS_PORT" --upstream "http://127.0.0.1:$MODEL_PORT" \
  --model-dir "$DIR/model" --gpus 2 & pids+=($!)
wait_port "$AGENT_PORT"

GPU_ROOTS=(--insecure-gpu-roots "$DIR/gpu-roots.pem")

echo "== 3. attest it with a policy pinning the model and requiring both GPUs, plus a fresh challenge"
"$BIN" attest "https://127.0.0.1:$AGENT_PORT" --insecure-root "$DIR/root.der" \
  --policy "$DIR/policy.toml" "${GPU_ROOTS[@]}" --nonce

echo "== 4. refused against Intel's production root, a policy pinning another model, a GPU in devtools mode"
refused() {
  set +e
  "$BIN" attest "https://127.0.0.1:$AGENT_PORT" "$@" >/dev/null 2>"$DIR/refusal.txt"
  code=$?
  set -e
  if [ "$code" -ne 1 ]; then echo "demo: expected exit 1, got $code" >&2; exit 1; fi
  echo "refused as expected (exit 1): $(tail -1 "$DIR/refusal.txt")"
}
for args in "" "--insecure-root $DIR/root.der --policy $DIR/other-model.toml"; do
  # shellcheck disable=SC2086  # $args is a list of flags
  refused $args "${GPU_ROOTS[@]}"
done
# The agent re-checks its GPUs every minute; a rotation makes it look now.
"$BIN" sim gpu --sim-dir "$DIR" --index 1 --state devtools
"$BIN" admin --socket "$DIR/run/admin.sock" rotate >/dev/null
refused --insecure-root "$DIR/root.der" --policy "$DIR/policy.toml" "${GPU_ROOTS[@]}"
curl -sk "https://127.0.0.1:$AGENT_PORT/readyz" | grep -o '"gpu\[1\][^"]*"' || true
"$BIN" sim gpu --sim-dir "$DIR" --index 1 --state ok
"$BIN" admin --socket "$DIR/run/admin.sock" rotate >/dev/null

echo "== 5. tdx-agent connect: a local endpoint that forwards only to a verified server"
"$BIN" connect "https://127.0.0.1:$AGENT_PORT" --policy "$DIR/policy.toml" "${GPU_ROOTS[@]}" \
  --insecure-root "$DIR/root.der" --listen "127.0.0.1:$CONNECT_PORT" >/dev/null & pids+=($!)
wait_port "$CONNECT_PORT"
curl -sf "http://127.0.0.1:$CONNECT_PORT/v1/models"; echo
curl -sf "http://127.0.0.1:$CONNECT_PORT/healthz" | head -c 300; echo

echo "== 6. offline: a fresh quote verified with collateral from the PCCS; the audit chain"
NONCE=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
RD="${NONCE}$(printf '0%.0s' $(seq 64))"
"$BIN" quote --tee sim --sim-dir "$DIR" --report-data "$RD" --out "$DIR/fresh-quote.dat"
"$BIN" verify "$DIR/fresh-quote.dat" --pccs "http://127.0.0.1:$PCCS_PORT" \
  --collateral-cache "$DIR/cache" --insecure-root "$DIR/root.der" --expect-report-data "$RD" | head -3
cleanup; pids=()
"$BIN" audit verify "$DIR"/audit/audit-*.log
echo "demo: ok"
