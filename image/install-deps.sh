#!/usr/bin/env bash
# Installs what image/build.sh and tests/booted_image.rs need on a Debian 12+ host (idempotent,
# root or sudo): debootstrap, e2fsprogs (mkfs.ext4 -d), qemu-utils (qemu-img),
# qemu-system-x86 (the booted-image test), binutils (strip), curl, shellcheck, and for
# build.sh --uefi fdisk (sfdisk), dosfstools and mtools.
#
# Debian 12 (bookworm): qemu and debootstrap come from bookworm-backports. Its qemu-utils and
# qemu-system-x86 must come from the same suite (a bookworm-backports qemu-utils conflicts with
# bookworm's qemu-system-x86), and bookworm's own debootstrap predates trixie's keyring changes.
# The suite is added for the mirror the host already uses; backports are never preferred for
# anything not installed with -t.
set -euo pipefail

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
need=()
for c in debootstrap:debootstrap mkfs.ext4:e2fsprogs qemu-img:qemu-utils \
  qemu-system-x86_64:qemu-system-x86 strip:binutils curl:curl shellcheck:shellcheck flock:util-linux \
  sfdisk:fdisk mkfs.vfat:dosfstools mcopy:mtools; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: ok (qemu $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}'), debootstrap $(debootstrap --version | awk '{print $2}'))"
  exit 0
fi

# shellcheck disable=SC1091
. /etc/os-release
plain=() bpo=()
for p in "${need[@]}"; do
  case "$p" in qemu-*|debootstrap) bpo+=("$p") ;; *) plain+=("$p") ;; esac
done
target=()
if [ "${VERSION_CODENAME:-}" = bookworm ] && [ ${#bpo[@]} -gt 0 ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror="$(grep -rhos 'https\?://[^ ]*/debian/\?$' /etc/apt/sources.list /etc/apt/sources.list.d/ | head -n1 || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    echo "install-deps: adding bookworm-backports from $mirror"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
  fi
  target=(-t bookworm-backports)
  # Everything qemu from the one suite.
  for p in qemu-system-x86 qemu-utils; do
    case " ${bpo[*]} " in *" $p "*) ;; *) bpo+=("$p") ;; esac
  done
fi
$SUDO apt-get update -qq
export DEBIAN_FRONTEND=noninteractive
if [ ${#plain[@]} -gt 0 ]; then $SUDO apt-get install -y -qq --no-install-recommends "${plain[@]}"; fi
if [ ${#bpo[@]} -gt 0 ]; then $SUDO apt-get install -y -qq --no-install-recommends "${target[@]}" "${bpo[@]}"; fi
echo "install-deps: installed ${plain[*]} ${bpo[*]}"
