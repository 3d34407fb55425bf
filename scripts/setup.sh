#!/usr/bin/env bash
# Installs what building and running tdx-agent needs on Debian 12 (idempotent, root or sudo).
#   scripts/setup.sh              the build, the demo and most tests
#   scripts/setup.sh --for-tests  also debootstrap and qemu for the booted-image test
#                                 (image/install-deps.sh), i.e. everything scripts/test.sh needs
set -euo pipefail
for_tests=0
case "${1:-}" in
  "") ;;
  --for-tests) for_tests=1 ;;
  *) echo "usage: scripts/setup.sh [--for-tests]" >&2; exit 2 ;;
esac

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
# fusermount3 for the configfs-tsm emulator of tests/tsm_emulator.rs (tests/tsm-emulator).
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
# tests/prometheus_rules.rs and tests/watch.rs: promtool on the shipped alert rules, and a
# real Prometheus scraping `watch` (Debian's package; its own service is not used).
if [ "$for_tests" = 1 ]; then
  command -v promtool >/dev/null || need_apt+=(prometheus)
  # tests/watch.rs renders `evidence report`'s page in headless Chromium.
  command -v chromium >/dev/null || need_apt+=(chromium)
fi
# tests/systemd_units.rs checks the shipped units with systemd-analyze.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# The Python gRPC/probe clients of the end-to-end tests need a python3 that can make venvs
# (Debian ships venv/ensurepip separately, in python3-venv); scripts/python-env.sh builds it.
if ! command -v python3 >/dev/null; then
  need_apt+=(python3 python3-venv python3-pip)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv python3-pip)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install Rust 1.95+ (rustup) first" >&2
  exit 2
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
if [ "$for_tests" = 1 ]; then
  "$(dirname "$0")/../image/install-deps.sh"
fi
echo "setup: ok ($(cargo --version))"
