#!/usr/bin/env bash
# image/build.sh: bakes tdx-agent into a Debian guest image, from the distribution's packages
# only (debootstrap and apt against the Debian mirror; nothing else is downloaded).
#
# Output (in --out DIR): disk.qcow2 (or disk.raw), vmlinuz, initrd.img, cmdline (the kernel
# command line), kernel.txt (kernel version and the configuration checks), build-info, and for
# test images root.der (the simulated PKI's root, for `attest --insecure-root`).
# Boot it without a bootloader: qemu -kernel vmlinuz -initrd initrd.img -append "$(cat cmdline)".
#
# The base root filesystem, kernel and initrd are cached under
# ${TDX_AGENT_IMAGE_CACHE:-~/.cache/tdx-agent}/image-<hash of image/base.sh, the package
# lists and the options that change them>, so a rerun skips debootstrap; the agent binary,
# units, configuration and firewall are layered on top on every run (seconds).
#
# Read docs/image.md first. Needs root (debootstrap, chroot), debootstrap, mkfs.ext4 from
# e2fsprogs 1.43+ and, for qcow2, qemu-img (image/install-deps.sh installs them on Debian).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"

usage() {
  cat <<EOF
usage: image/build.sh --out DIR [options]

  --out DIR            where the disk, kernel, initrd and cmdline go (created)
  --binary PATH        the tdx-agent binary to bake in (default: the release build,
                       \$CARGO_TARGET_DIR/release/tdx-agent or target/release/tdx-agent); a
                       production image needs the build without the simulated TD (cargo build
                       --release -p tdx-agent --no-default-features), a test image the default
                       build
  --config FILE        /etc/tdx-agent/config.toml (default: systemd/config.toml; test images
                       get a simulated-TD configuration instead)
  --test-image         a test image: the agent runs under the shipped unit with [tee] kind =
                       "configfs" against the FUSE emulator (tests/tsm-emulator) mounted at the
                       kernel's paths, a simulated PCCS, a stand-in listener on 0.0.0.0 at
                       vLLM's port, root autologin on the serial console, a guest-side probe on
                       the second serial port; also accepts a kernel without TDX guest support
                       (never ship one)
  --tsm-emulator PATH  the emulator binary for --test-image (default: tsm-emulator next to
                       --binary; cargo build -p tsm-emulator makes it)
  --ssh                install openssh-server and accept TCP 22 in the firewall
  --uefi               also write disk-uefi.FORMAT: a GPT disk whose EFI system partition holds
                       one unified kernel image (kernel, initrd and command line, booted by
                       UEFI firmware such as TDVF with no bootloader) for clouds that boot
                       disks, not kernels (docs/openstack.md)
  --nvidia-gpus        install systemd/tdx-agent-nvidia-gpus.conf as a drop-in of the agent's
                       unit, so NVML can reach /dev/nvidia* ([gpu] source = "nvml"; the
                       NVIDIA driver itself is not installed by this script)
  --enable-vllm        enable the example vllm.service (production images; vLLM itself is not
                       installed by this script)
  --agent-port N       the agent's TLS port the firewall accepts (default 8443; must match the
                       configuration's listen address)
  --vllm-port N        vLLM's port the firewall drops from outside (default 8000)
  --format qcow2|raw   disk format (default qcow2)
  --size SIZE          disk size for truncate(1) (default 3G; sparse)
  --suite NAME         Debian base suite (default trixie)
  --mirror URL         Debian mirror (default http://deb.debian.org/debian)
  --security-mirror URL  (default http://deb.debian.org/debian-security)
  --no-strip           install the binary as given (default: a stripped copy)
  --refresh            rebuild the cached base even if present (e.g. for a newer kernel)
  --print-cache-dir    print the cache directory these options use and exit
  --check-kernel-config FILE  check a kernel config (e.g. /boot/config-\$(uname -r)) for what a
                       TDX guest needs, print the result and exit 0 (all there) or 1
EOF
}

die() { echo "image/build.sh: $*" >&2; exit 2; }
log() { echo "image/build.sh: $*" >&2; }

OUT=""
BINARY=""
CONFIG=""
TEST_IMAGE=0
EMULATOR=""
SSH=0
ENABLE_VLLM=0
NVIDIA_GPUS=0
AGENT_PORT=8443
VLLM_PORT=8000
FORMAT=qcow2
SIZE=3G
SUITE=trixie
MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
STRIP=1
REFRESH=0
PRINT_CACHE=0
# What a production guest's kernel must have (docs/image.md): the TDX guest driver, configfs-tsm
# reports (6.7+) and the RTMR sysfs files (6.16+).
REQUIRED_KCONFIG="CONFIG_INTEL_TDX_GUEST CONFIG_TDX_GUEST_DRIVER CONFIG_TSM_REPORTS CONFIG_TSM_MEASUREMENTS"
MIN_KERNEL=6.16

# check_kernel_config FILE: one line per requirement, then "missing: none" (status 0) or
# "missing: WHAT..." (status 1). The version comes from the file's "Linux/x86 V Kernel
# Configuration" header.
check_kernel_config() {
  local f="$1" sym v kv missing=""
  for sym in $REQUIRED_KCONFIG; do
    v="$(grep -E "^$sym=" "$f" | head -n1 | cut -d= -f2 || true)"
    case "$v" in
      y|m) echo "$sym=$v" ;;
      *) echo "$sym is not set"; missing="$missing $sym" ;;
    esac
  done
  kv="$(sed -n 's/^# Linux\/[^ ]* \([0-9][0-9.]*\)[^ ]* Kernel Configuration$/\1/p' "$f" | head -n1)"
  if [ -z "$kv" ]; then
    echo "no \"# Linux/ARCH VERSION Kernel Configuration\" header: version unknown"; missing="$missing version>=$MIN_KERNEL"
  elif [ "$(printf '%s\n%s\n' "$MIN_KERNEL" "$kv" | sort -V | head -n1)" = "$MIN_KERNEL" ]; then
    echo "version $kv >= $MIN_KERNEL (configfs-tsm reports since 6.7, RTMR sysfs files since 6.16)"
  else
    echo "version $kv < $MIN_KERNEL: no RTMR sysfs files"; missing="$missing version>=$MIN_KERNEL"
  fi
  echo "missing:${missing:- none}"
  [ -z "$missing" ]
}
ROOT_LABEL=tdx-root
# The kernel command line (docs/image.md: kernel command line notes). With --uefi it is sealed
# into the unified kernel image; otherwise it is written to OUT/cmdline for -append.
CMDLINE="root=LABEL=$ROOT_LABEL rw console=ttyS0"
UEFI=0
ESP_MB=128

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --binary) BINARY="${2:?--binary needs a path}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
    --test-image) TEST_IMAGE=1; shift ;;
    --tsm-emulator) EMULATOR="${2:?--tsm-emulator needs a path}"; shift 2 ;;
    --ssh) SSH=1; shift ;;
    --enable-vllm) ENABLE_VLLM=1; shift ;;
    --nvidia-gpus) NVIDIA_GPUS=1; shift ;;
    --uefi) UEFI=1; shift ;;
    --agent-port) AGENT_PORT="${2:?}"; shift 2 ;;
    --vllm-port) VLLM_PORT="${2:?}"; shift 2 ;;
    --format) FORMAT="${2:?}"; shift 2 ;;
    --size) SIZE="${2:?}"; shift 2 ;;
    --suite) SUITE="${2:?}"; shift 2 ;;
    --mirror) MIRROR="${2:?}"; shift 2 ;;
    --security-mirror) SECURITY_MIRROR="${2:?}"; shift 2 ;;
    --no-strip) STRIP=0; shift ;;
    --refresh) REFRESH=1; shift ;;
    --print-cache-dir) PRINT_CACHE=1; shift ;;
    --check-kernel-config)
      [ -f "${2:-}" ] || die "--check-kernel-config needs a kernel config file (e.g. /boot/config-\$(uname -r))"
      check_kernel_config "$2"; exit $? ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

case "$FORMAT" in qcow2|raw) ;; *) die "--format must be qcow2 or raw, not $FORMAT" ;; esac
for p in "$AGENT_PORT" "$VLLM_PORT"; do
  if ! [[ "$p" =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then die "not a port: $p"; fi
done
[ "$AGENT_PORT" != "$VLLM_PORT" ] || die "--agent-port and --vllm-port must differ"

# The base (build_base, its chroot helpers, the kernel's package and suites).
# shellcheck source=image/base.sh
. "$HERE/base.sh"

# ------------------------------------------------------------------------------------------
# The cache key: image/base.sh, the package lists it installs from, and every option that
# changes the base root filesystem.

package_lists() {
  echo "$HERE/packages.txt"
  [ "$TEST_IMAGE" = 1 ] && echo "$HERE/packages-test.txt"
  [ "$SSH" = 1 ] && echo "$HERE/packages-ssh.txt"
  [ "$UEFI" = 1 ] && echo "$HERE/packages-uefi.txt"
  return 0
}

packages_in() { sed -e 's/#.*//' -e 's/[[:space:]]//g' "$1" | grep -v '^$'; }

packages() {
  # What debootstrap installs: one name per line, comments and blank lines dropped. The --uefi
  # tools are Python programs whose configuration debootstrap cannot order; base.sh installs
  # them with apt afterwards.
  package_lists | grep -v '/packages-uefi.txt$' | while read -r f; do packages_in "$f"; done
}

CACHE_ROOT="${TDX_AGENT_IMAGE_CACHE:-$HOME/.cache/tdx-agent}"
KEY="$(
  {
    sha256sum "$HERE/base.sh"
    package_lists | xargs sha256sum
    echo "suite=$SUITE mirror=$MIRROR security=$SECURITY_MIRROR kernel=$KERNEL_PKG test=$TEST_IMAGE ssh=$SSH uefi=$UEFI cmdline=$CMDLINE"
  } | sed 's|  .*/| |' | sha256sum | cut -c1-16
)"
CACHE="$CACHE_ROOT/image-$KEY"
if [ "$PRINT_CACHE" = 1 ]; then echo "$CACHE"; exit 0; fi

[ -n "$OUT" ] || { usage >&2; die "--out DIR is required"; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"
for tool in debootstrap chroot mkfs.ext4 sha256sum mount; do
  command -v "$tool" >/dev/null || die "$tool not found: run image/install-deps.sh (Debian: apt-get install debootstrap e2fsprogs)"
done
if [ "$UEFI" = 1 ]; then
  for tool in sfdisk mkfs.vfat mcopy; do
    command -v "$tool" >/dev/null || die "$tool not found (--uefi): run image/install-deps.sh (Debian: apt-get install fdisk dosfstools mtools)"
  done
fi
if [ "$FORMAT" = qcow2 ]; then
  command -v qemu-img >/dev/null || die "qemu-img not found (Debian: apt-get install qemu-utils), or use --format raw"
fi

if [ -z "$BINARY" ]; then
  BINARY="${CARGO_TARGET_DIR:-$REPO/target}/release/tdx-agent"
  [ -x "$BINARY" ] || die "no release binary at $BINARY: run cargo build --release -p tdx-agent --no-default-features, or pass --binary"
fi
[ -x "$BINARY" ] || die "--binary $BINARY is not an executable file"
# Production images carry no simulator; test images run the simulated PCCS, so need one. A
# build without it answers every `sim` subcommand with SIM_NOT_BUILT (crates/tee/src/lib.rs).
probe_dir="$(mktemp -d)"
if "$BINARY" sim reset --sim-dir "$probe_dir/none" 2>&1 | grep -q "built without the simulated TD"; then
  HAS_SIM=0
else
  HAS_SIM=1
fi
rm -rf "$probe_dir"
if [ "$TEST_IMAGE" = 0 ] && [ "$HAS_SIM" = 1 ]; then
  die "$BINARY includes the simulated TD: production images are built from cargo build --release -p tdx-agent --no-default-features"
fi
if [ "$TEST_IMAGE" = 1 ] && [ "$HAS_SIM" = 0 ]; then
  die "--test-image runs the simulated PCCS: pass a binary built with default features"
fi
if [ -z "$CONFIG" ] && [ "$TEST_IMAGE" = 0 ]; then CONFIG="$REPO/systemd/config.toml"; fi
if [ "$TEST_IMAGE" = 1 ]; then
  [ -n "$EMULATOR" ] || EMULATOR="$(dirname "$BINARY")/tsm-emulator"
  [ -x "$EMULATOR" ] || die "no tsm-emulator at $EMULATOR: cargo build -p tsm-emulator (--release for a release --binary), or pass --tsm-emulator"
elif [ -n "$EMULATOR" ]; then
  die "--tsm-emulator is for --test-image only: production images use the kernel's configfs-tsm"
fi
if [ -n "$CONFIG" ]; then
  [ -f "$CONFIG" ] || die "--config $CONFIG: no such file"
  grep -Eq "^[[:space:]]*listen[[:space:]]*=[[:space:]]*\"[^\"]*:$AGENT_PORT\"" "$CONFIG" \
    || die "$CONFIG does not listen on port $AGENT_PORT (the firewall's --agent-port): set listen = \"0.0.0.0:$AGENT_PORT\" or pass --agent-port"
fi
for unit in tdx-agent.service vllm.service tdx-agent-nvidia-gpus.conf; do
  [ -f "$REPO/systemd/$unit" ] || die "missing $REPO/systemd/$unit"
done

# ------------------------------------------------------------------------------------------
# Mounts for chroot work, always undone on exit.

MOUNTS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  MOUNTS=()
  if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then rm -rf "$WORK"; fi
  if [ -n "${TMPBASE:-}" ] && [ -d "$TMPBASE" ]; then rm -rf "$TMPBASE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM


if [ "$REFRESH" = 1 ] && [ -d "$CACHE" ]; then
  log "--refresh: removing $CACHE"
  rm -rf "$CACHE"
fi
mkdir -p "$CACHE_ROOT"
# One build of a given base at a time (parallel tests, two checkouts).
exec 9>"$CACHE.lock"
flock 9
if [ -f "$CACHE/complete" ]; then
  log "cached base: $CACHE ($(cat "$CACHE/kernel-package"))"
else
  log "no cached base at $CACHE: building it (about 2 minutes)"
  t_base=$SECONDS
  rm -rf "$CACHE"
  TMPBASE="$CACHE.tmp.$$"
  rm -rf "$TMPBASE"
  mkdir -p "$TMPBASE"
  build_base "$TMPBASE"
  touch "$TMPBASE/complete"
  mv "$TMPBASE" "$CACHE"
  TMPBASE=""
  log "base built in $((SECONDS - t_base)) s: $CACHE"
fi

# ------------------------------------------------------------------------------------------
# The kernel checks: refuse a production image whose kernel cannot serve a real TD.

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
KREL="$(cat "$CACHE/kernel-release")"
{
  echo "kernel: $KREL ($(cat "$CACHE/kernel-package"))"
  check_kernel_config "$CACHE/kernel-config" || true
} >"$OUT/kernel.txt"
sed 's/^/image\/build.sh:   /' "$OUT/kernel.txt" >&2
if ! grep -q '^missing: none$' "$OUT/kernel.txt"; then
  if [ "$TEST_IMAGE" = 1 ]; then
    log "WARNING: this kernel cannot serve a real TD ($(grep '^missing:' "$OUT/kernel.txt")); acceptable only because this is a --test-image"
  else
    die "the kernel $KREL lacks what a TDX guest needs ($(grep '^missing:' "$OUT/kernel.txt")); refusing to build a production image (docs/image.md: kernel requirements)"
  fi
fi

# ------------------------------------------------------------------------------------------
# The layer: a hard-linked copy of the base (instant, nothing in the base is ever written:
# every file below is removed before it is created), then the agent, units, config, firewall.

WORK="$CACHE.work.$$"
rm -rf "$WORK"
cp -al "$CACHE/rootfs" "$WORK"
R="$WORK"

# put MODE DEST < content  /  put_file MODE SRC DEST
put() { rm -f "$R$2"; mkdir -p "$(dirname "$R$2")"; cat >"$R$2"; chmod "$1" "$R$2"; }
put_file() { rm -f "$R$3"; install -D -m "$1" "$2" "$R$3"; }
enable_unit() { # enable_unit TARGET UNIT [path of the unit file in the image]
  local dir="$R/etc/systemd/system/$1.wants"
  mkdir -p "$dir"; rm -f "$dir/$2"
  ln -s "${3:-/etc/systemd/system/$2}" "$dir/$2"
}

if [ "$STRIP" = 1 ] && command -v strip >/dev/null; then
  rm -f "$R/usr/bin/tdx-agent"
  strip -o "$R/usr/bin/tdx-agent" "$BINARY"
  chmod 0755 "$R/usr/bin/tdx-agent"
else
  put_file 0755 "$BINARY" /usr/bin/tdx-agent
fi
put_file 0644 "$REPO/systemd/tdx-agent.service" /etc/systemd/system/tdx-agent.service
enable_unit multi-user.target tdx-agent.service
if [ "$NVIDIA_GPUS" = 1 ]; then
  put_file 0644 "$REPO/systemd/tdx-agent-nvidia-gpus.conf" /etc/systemd/system/tdx-agent.service.d/nvidia-gpus.conf
else
  rm -f "$R/etc/systemd/system/tdx-agent.service.d/nvidia-gpus.conf"
fi

# The firewall (docs/image.md): inbound only the agent's port (and SSH if asked), plus what
# DHCP, IPv6 neighbour discovery and path-MTU discovery need; vLLM's port is dropped and
# counted for anything not arriving on loopback, even if vLLM binds 0.0.0.0 by mistake.
ssh_rule=""
[ "$SSH" = 1 ] && ssh_rule="		tcp dport 22 accept comment \"SSH (--ssh)\""
put 0644 /etc/nftables.conf <<EOF
#!/usr/sbin/nft -f
# The guest firewall of tdx-agent images (image/build.sh, docs/image.md). Loaded by
# nftables.service before the network is up. Read the drop counter with:
#   nft list counter inet tdx_agent vllm_drop
flush ruleset

table inet tdx_agent {
	counter vllm_drop {
		comment "packets to the model server's port $VLLM_PORT that did not arrive on loopback"
	}

	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		# Before connection tracking: nothing from outside ever reaches the model server.
		meta l4proto { tcp, udp } th dport $VLLM_PORT counter name "vllm_drop" drop
		ct state invalid drop
		ct state established,related accept
		tcp dport $AGENT_PORT accept comment "tdx-agent: HTTPS, gRPC and the /v1/ front door"
$ssh_rule
		udp sport 67 udp dport 68 accept comment "DHCPv4 replies"
		udp sport 547 udp dport 546 accept comment "DHCPv6 replies"
		icmp type { echo-request, destination-unreachable, time-exceeded, parameter-problem } limit rate 20/second accept
		icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept
	}

	chain forward {
		type filter hook forward priority filter; policy drop;
	}
}
EOF
chmod 0755 "$R/etc/nftables.conf"

if [ "$TEST_IMAGE" = 0 ]; then
  # Load the TDX guest driver (and with it configfs-tsm) early, before the agent starts,
  # rather than whenever udev gets to it.
  put 0644 /etc/modules-load.d/tdx-guest.conf <<<'tdx_guest'
  put_file 0640 "$CONFIG" /etc/tdx-agent/config.toml
  put_file 0644 "$REPO/systemd/vllm.service" /etc/systemd/system/vllm.service
  if [ "$ENABLE_VLLM" = 1 ]; then enable_unit multi-user.target vllm.service; fi
else
  # The TEE: the production path, [tee] kind = "configfs" with the kernel's default paths,
  # served by the configfs-tsm emulator (tests/tsm-emulator, docs/tsm-emulator.md) on FUSE,
  # backed by a simulated TD whose PKI is made now; the host gets the root to verify against.
  # The agent runs under the shipped, unmodified tdx-agent.service (no drop-in): whatever its
  # sandbox blocks here, it would block on a real TD.
  SIM=/var/lib/tdx-sim
  PCCS_PORT=8081
  rm -rf "${R:?}$SIM"
  mkdir -p "$R$SIM"
  chmod 0700 "$R$SIM"
  "$BINARY" sim pki --sim-dir "$R$SIM" >/dev/null || die "tdx-agent sim pki failed"
  cp "$R$SIM/root.der" "$OUT/root.der"
  rm -f "$R/usr/local/bin/tsm-emulator"
  mkdir -p "$R/usr/local/bin"
  if [ "$STRIP" = 1 ] && command -v strip >/dev/null; then
    strip -o "$R/usr/local/bin/tsm-emulator" "$EMULATOR"
  else
    cp "$EMULATOR" "$R/usr/local/bin/tsm-emulator"
  fi
  chmod 0755 "$R/usr/local/bin/tsm-emulator"

  # Puts the emulator's report/ and measurements/ where the kernel's would be. configfs-tsm
  # itself is real: loading tsm_report makes /sys/kernel/config/tsm/report (empty and useless
  # without a TDX provider, which needs a TD), and the emulator's report/ is bound over it.
  # sysfs cannot make /sys/class/misc/tdx_guest without the tdx_guest driver, so a tmpfs goes
  # over /sys/class/misc holding the same relative symlinks (every other misc device resolves
  # as before; devices registered later do not show there) plus tdx_guest/measurements with
  # the emulator's registers bound on it.
  put 0755 /usr/local/sbin/tsm-emulator-attach <<'SCRIPT'
#!/bin/sh
# Test images only (image/build.sh --test-image): ExecStartPost/ExecStop of tsm-emulator.service.
set -eu
m=/run/tsm-emulator
report=/sys/kernel/config/tsm/report
misc=/sys/class/misc
meas=$misc/tdx_guest/measurements
if [ "${1:-}" = --detach ]; then
	for p in "$meas" "$misc" "$report"; do
		if mountpoint -q "$p"; then umount "$p" || umount -l "$p"; fi
	done
	exit 0
fi
i=0
until mountpoint -q "$m" && [ -d "$m/report" ] && [ -d "$m/measurements" ]; do
	i=$((i + 1))
	if [ "$i" -gt 300 ]; then echo "tsm-emulator did not mount $m within 30 s" >&2; exit 1; fi
	sleep 0.1
done
modprobe tsm_report
[ -d "$report" ] || { echo "no $report after modprobe tsm_report" >&2; exit 1; }
mount --bind "$m/report" "$report"
keep=$(mktemp -d)
cp -a "$misc/." "$keep/"
mount -t tmpfs -o mode=0755,nosuid,nodev,noexec tdx-test-misc "$misc"
cp -a "$keep/." "$misc/"
rm -rf "$keep"
mkdir -p "$meas"
mount --bind "$m/measurements" "$meas"
echo "tsm-emulator attached at $report and $meas"
SCRIPT
  put 0644 /etc/systemd/system/tsm-emulator.service <<UNIT
# Test images only: the configfs-tsm and measurement-register emulator at the kernel's paths.
# tdx-agent.service requires it (linked into tdx-agent.service.requires/, not a drop-in).
[Unit]
Description=configfs-tsm emulator at the kernel's paths (test image)
Requires=sys-kernel-config.mount
After=sys-kernel-config.mount
Before=tdx-agent.service

[Service]
Type=exec
ExecStart=/usr/local/bin/tsm-emulator /run/tsm-emulator --sim-dir $SIM
# Active (so tdx-agent.service may start) only once the paths are in place.
ExecStartPost=/usr/local/sbin/tsm-emulator-attach
# Unbind first, so that SIGTERM finds the emulator's mount unused and it unmounts cleanly.
ExecStop=/usr/local/sbin/tsm-emulator-attach --detach

[Install]
RequiredBy=tdx-agent.service
UNIT

  # The simulated PCCS the agent fetches collateral from (configfs mode needs one).
  put 0644 /etc/systemd/system/tdx-sim-pccs.service <<UNIT
# Test images only: a PCCS for the simulated PKI, on loopback.
[Unit]
Description=simulated PCCS on 127.0.0.1:$PCCS_PORT (test image)
Before=tdx-agent.service

[Service]
Type=exec
ExecStart=/usr/bin/tdx-agent sim pccs --sim-dir $SIM --listen 127.0.0.1:$PCCS_PORT
# Active only once it accepts connections, so that the agent's first fetch finds it.
ExecStartPost=/bin/bash -c 'for _ in \$\$(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$PCCS_PORT) 2>/dev/null && exit 0; sleep 0.1; done; exit 1'

[Install]
RequiredBy=tdx-agent.service
UNIT
  # RequiredBy= as systemctl enable would link it: the shipped unit file stays untouched.
  for unit in tsm-emulator.service tdx-sim-pccs.service; do
    mkdir -p "$R/etc/systemd/system/tdx-agent.service.requires"
    rm -f "$R/etc/systemd/system/tdx-agent.service.requires/$unit"
    ln -s "/etc/systemd/system/$unit" "$R/etc/systemd/system/tdx-agent.service.requires/$unit"
  done

  # A stand-in for vLLM that (unlike vllm.service) binds 0.0.0.0: the firewall must still keep
  # it unreachable from outside. busybox httpd answers /health (the agent's upstream probe).
  standin=(/bin/busybox httpd -f -p "0.0.0.0:$VLLM_PORT" -h /srv/vllm-standin)
  put 0644 /srv/vllm-standin/health <<<'ok'
  put 0644 /etc/systemd/system/vllm-standin.service <<EOF
# Test images only: a stand-in for vLLM on 0.0.0.0:$VLLM_PORT (the firewall drops it from outside).
[Unit]
Description=vLLM stand-in (busybox httpd on 0.0.0.0:$VLLM_PORT)
Requires=tdx-agent.service
After=tdx-agent.service

[Service]
ExecStart=${standin[*]}
Restart=on-failure
DynamicUser=yes

[Install]
WantedBy=multi-user.target
EOF
  enable_unit multi-user.target vllm-standin.service

  cmdline_toml="$(printf '"%s", ' "${standin[@]}")"
  put 0640 /etc/tdx-agent/config.toml <<EOF
# Test image (image/build.sh --test-image): configfs mode on the emulator, a simulated PCCS.
# Never for production.
listen = "0.0.0.0:$AGENT_PORT"
state_dir = "/run/tdx-agent"

[tee]
# The kernel's default paths (tsm_report_dir, measurements_dir): the emulator sits there.
kind = "configfs"

[collateral]
pccs_url = "http://127.0.0.1:$PCCS_PORT"
cache_dir = "/var/cache/tdx-agent/collateral"
insecure_root = "$SIM/root.der"

[tls]
subject_alt_names = ["localhost"]

[audit]
dir = "/var/lib/tdx-agent/audit"

[upstream]
url = "http://127.0.0.1:$VLLM_PORT"
health_path = "/health"
health_interval_ms = 1000

[model]
# The stand-in's files are the "model": measured into RTMR3 like a real one.
dir = "/srv/vllm-standin"
vllm_cmdline = [${cmdline_toml%, }]
EOF

  # The guest-side probe: on the second serial port (ttyS1, nothing else writes there), one
  # line per change of: the agent's state, restarts, unit file hash and drop-ins, the stand-in
  # answering on loopback and on the guest's own address, who listens on vLLM's port, the
  # firewall's drop counter, what is mounted at the kernel's TEE paths, RTMR3 as read there,
  # and the emulator's quote and extend counts.
  put 0755 /usr/local/sbin/tdx-image-probe <<EOF
#!/bin/sh
# Test images only (image/build.sh --test-image): see tests/booted_image.rs.
out=/dev/ttyS1
port=$VLLM_PORT
prev=""
while :; do
	agent=\$(systemctl is-active tdx-agent.service)
	addr=\$(ip -4 -o addr show scope global | awk '{ split(\$4, a, "/"); print a[1]; exit }')
	if busybox wget -q -T 2 -O /dev/null "http://127.0.0.1:\$port/health" 2>/dev/null; then lo=ok; else lo=fail; fi
	if [ -n "\$addr" ] && busybox wget -q -T 2 -O /dev/null "http://\$addr:\$port/health" 2>/dev/null; then own=ok; else own=fail; fi
	listen=\$(ss -Hltn "sport = :\$port" | awk '{ printf "%s%s", sep, \$4; sep = "," }')
	counter=\$(nft list counter inet tdx_agent vllm_drop 2>/dev/null | awk '\$1 == "packets" { print \$2 "/" \$4 }')
	restarts=\$(systemctl show -P NRestarts tdx-agent.service)
	unit=\$(sha256sum /etc/systemd/system/tdx-agent.service | cut -c1-16)
	dropins=\$(systemctl show -P DropInPaths tdx-agent.service | tr ' ' ',')
	tsm=\$(findmnt -n -o SOURCE -M /sys/kernel/config/tsm/report || echo none),\$(findmnt -n -o SOURCE -M /sys/class/misc/tdx_guest/measurements || echo none)
	rtmr3=\$(od -An -v -tx1 /sys/class/misc/tdx_guest/measurements/rtmr3:sha384 2>/dev/null | tr -d ' \\n')
	emu=\$(awk '\$1 == "quotes_ok" { q = \$2 } \$1 == "extends" { e = \$2 } END { print q "/" e }' /run/tsm-emulator/.control/stats 2>/dev/null)
	line="agent=\$agent restarts=\${restarts:-none} unit=\$unit dropins=\${dropins:-none} addr=\${addr:-none} standin_loopback=\$lo standin_own_addr=\$own listen=\${listen:-none} vllm_drop=\${counter:-none} tsm=\$tsm rtmr3=\${rtmr3:-none} emu=\${emu:-none}"
	if [ "\$line" != "\$prev" ]; then
		printf 'TDXPROBE uptime=%s %s\n' "\$(cut -d' ' -f1 /proc/uptime)" "\$line" >"\$out"
		prev=\$line
	fi
	sleep 1
done
EOF
  put 0644 /etc/systemd/system/tdx-image-probe.service <<'EOF'
# Test images only: reports the guest's view on /dev/ttyS1 (tests/booted_image.rs reads it).
[Unit]
Description=tdx-agent test image probe (writes to ttyS1)
After=nftables.service

[Service]
ExecStart=/usr/local/sbin/tdx-image-probe
Restart=always

[Install]
WantedBy=multi-user.target
EOF
  enable_unit multi-user.target tdx-image-probe.service

  # Root logs in on the serial console without a password; the journal goes there too.
  put 0644 /etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 - $TERM
EOF
  put 0644 /etc/systemd/journald.conf.d/console.conf <<'EOF'
[Journal]
ForwardToConsole=yes
MaxLevelConsole=info
EOF
fi

# The command line (docs/image.md: kernel command line notes).
printf '%s\n' "$CMDLINE" >"$OUT/cmdline"

# ------------------------------------------------------------------------------------------
# The disk: ext4 straight from the directory (no loop mounts), then qcow2 if asked.

rm -f "$OUT/disk.raw" "$OUT/disk.qcow2"
truncate -s "$SIZE" "$OUT/disk.raw"
mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$R" "$OUT/disk.raw" >&2 || die "mkfs.ext4 -d failed"
rm -f "$OUT/disk-uefi.raw" "$OUT/disk-uefi.qcow2" "$OUT/uki.efi"
if [ "$UEFI" = 1 ]; then
  # GPT: an EFI system partition with EFI/BOOT/BOOTX64.EFI (the unified kernel image, the
  # firmware's default boot path) and the root file system above, byte for byte. Built from
  # files with sfdisk, mkfs.vfat, mtools and dd: no loop devices.
  esp="$OUT/.esp.img"
  rm -f "$esp"
  mkfs.vfat -C -F 32 -n ESP "$esp" $((ESP_MB * 1024)) >/dev/null
  MTOOLS_SKIP_CHECK=1 mmd -i "$esp" ::/EFI ::/EFI/BOOT
  MTOOLS_SKIP_CHECK=1 mcopy -i "$esp" "$CACHE/uki.efi" ::/EFI/BOOT/BOOTX64.EFI
  root_sectors=$(($(stat -c %s "$OUT/disk.raw") / 512))
  truncate -s $(((1 + ESP_MB + 1) * 1024 * 1024 + root_sectors * 512)) "$OUT/disk-uefi.raw"
  printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"\nstart=%d, size=%d, type=4F68BCE3-E8CD-4C31-B15A-1ED2E2F1A8F4, name="%s"\n' \
    $((ESP_MB * 2048)) $((2048 + ESP_MB * 2048)) "$root_sectors" "$ROOT_LABEL" \
    | sfdisk --quiet "$OUT/disk-uefi.raw" || die "sfdisk failed"
  dd if="$esp" of="$OUT/disk-uefi.raw" bs=1M seek=1 conv=notrunc status=none
  dd if="$OUT/disk.raw" of="$OUT/disk-uefi.raw" bs=1M seek=$((1 + ESP_MB)) conv=notrunc,sparse status=none
  rm -f "$esp"
  cp "$CACHE/uki.efi" "$OUT/uki.efi"
fi
if [ "$FORMAT" = qcow2 ]; then
  qemu-img convert -O qcow2 "$OUT/disk.raw" "$OUT/disk.qcow2"
  rm -f "$OUT/disk.raw"
  if [ "$UEFI" = 1 ]; then
    qemu-img convert -O qcow2 "$OUT/disk-uefi.raw" "$OUT/disk-uefi.qcow2"
    rm -f "$OUT/disk-uefi.raw"
  fi
fi
cp "$CACHE/vmlinuz" "$OUT/vmlinuz"
cp "$CACHE/initrd.img" "$OUT/initrd.img"
{
  echo "image: $([ "$TEST_IMAGE" = 1 ] && echo test || echo production) ($FORMAT, $SIZE)"
  echo "base: $CACHE"
  echo "suite: $SUITE ($MIRROR)"
  head -n1 "$OUT/kernel.txt"
  echo "agent: $(sha256sum "$BINARY" | cut -d' ' -f1)  $BINARY"
  echo "agent port: $AGENT_PORT; vLLM port (dropped from outside): $VLLM_PORT; ssh: $([ "$SSH" = 1 ] && echo yes || echo no)"
  echo "cmdline: $CMDLINE"
  if [ "$UEFI" = 1 ]; then echo "uefi: disk-uefi.$FORMAT (EFI/BOOT/BOOTX64.EFI = uki.efi, sha256 $(sha256sum "$CACHE/uki.efi" | cut -d' ' -f1))"; fi
} >"$OUT/build-info"
log "done: $OUT/disk.$FORMAT, vmlinuz, initrd.img, cmdline"
