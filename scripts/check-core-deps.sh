#!/usr/bin/env bash
# The verifier core (crates/core) embeds in clients of any kind, the Python package included,
# so it must not pull an async runtime, an HTTP stack or sockets. Fails, naming the crate and
# the path that brings it in, if tdx-core's dependency tree (normal and build) holds one.
# .ci/run runs it; CORE_DEPS_FORBIDDEN overrides the pattern (to see the check fail).
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden="${CORE_DEPS_FORBIDDEN:-^(tokio|tokio-.*|mio|hyper|hyper-.*|h2|socket2|reqwest|ureq|isahc|curl|async-std|async-io|smol|axum|tonic|tower|tower-.*|nix)$}"
tree="$(cargo tree --locked -p tdx-core -e normal,build --prefix none --no-dedupe | awk '{print $1}' | sort -u)"
bad="$(grep -E "$forbidden" <<<"$tree" || true)"
if [ -n "$bad" ]; then
  echo "check-core-deps: tdx-core must not depend on: $(tr '\n' ' ' <<<"$bad")" >&2
  for c in $bad; do
    cargo tree --locked -p tdx-core -e normal,build -i "$c" >&2 || true
  done
  exit 1
fi
echo "check-core-deps: ok: $(wc -l <<<"$tree") crates in tdx-core's tree, no async runtime, HTTP stack or socket crate"
