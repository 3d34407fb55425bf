#!/usr/bin/env bash
# The whole test suite: unit tests beside the code and the end-to-end tests in tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
