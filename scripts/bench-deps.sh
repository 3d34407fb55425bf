#!/usr/bin/env bash
# Installs what the front-door bench (agent/benches/front_door.rs) needs on Debian 12, if
# missing: nginx (the reference TLS reverse proxy and the fixed upstream), wrk (the load tool)
# and openssl (the reference certificate). Idempotent; root or sudo. Not part of setup.sh:
# building and testing do not need them.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

need=()
have nginx || need+=(nginx)
have wrk || need+=(wrk)
have openssl || need+=(openssl)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
# The bench runs its own nginx processes with their own configuration: keep the package's
# system service from being started (and from taking port 80) while it installs, through
# policy-rc.d, unless the machine already has one.
policy=/usr/sbin/policy-rc.d
ours=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  ours=1
fi
cleanup() { if [ "$ours" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
echo "bench-deps: installed ${need[*]}"
