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
# ${TDX_AGENT_IMAGE_CACHE:-~/.cache/tdx-agent}/image-<hash of this script, the package lists
# and the options that change them>, so a rerun skips debootstrap; the agent binary, units,
# configuration and firewall are layered on top on every run (seconds).
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
                       \$CARGO_TARGET_DIR/release/tdx-agent or target/release/tdx-agent)
  --config FILE        /etc/tdx-agent/config.toml (default: systemd/config.toml; test images
                       get a simulated-TD configuration instead)
  --test-image         a test image: simulated TD ([tee] kind = "sim", its PKI made here), a
                       stand-in listener on 0.0.0.0 at vLLM's port, root autologin on the serial
                       console, a guest-side probe on the second serial port; also accepts a
                       kernel without TDX guest support (never ship one)
  --ssh                install openssh-server and accept TCP 22 in the firewall
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
EOF
}

die() { echo "image/build.sh: $*" >&2; exit 2; }
log() { echo "image/build.sh: $*" >&2; }

OUT=""
BINARY=""
CONFIG=""
TEST_IMAGE=0
SSH=0
ENABLE_VLLM=0
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
# The kernel: the metapackage, and the suites it may come from (all installable on the base
# suite: the stable release, its point updates and security fixes, and its backports). The
# newest version among them wins; docs/image.md says why testing/unstable are not considered.
KERNEL_PKG=linux-image-amd64
kernel_suites() { echo "$SUITE $SUITE-updates $SUITE-security $SUITE-backports"; }
# What a production guest's kernel must have (docs/image.md): the TDX guest driver, configfs-tsm
# reports (6.7+) and the RTMR sysfs files (6.16+).
REQUIRED_KCONFIG="CONFIG_TDX_GUEST_DRIVER CONFIG_TSM_REPORTS CONFIG_TSM_MEASUREMENTS"
ROOT_LABEL=tdx-root

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --binary) BINARY="${2:?--binary needs a path}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
    --test-image) TEST_IMAGE=1; shift ;;
    --ssh) SSH=1; shift ;;
    --enable-vllm) ENABLE_VLLM=1; shift ;;
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
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

case "$FORMAT" in qcow2|raw) ;; *) die "--format must be qcow2 or raw, not $FORMAT" ;; esac
for p in "$AGENT_PORT" "$VLLM_PORT"; do
  if ! [[ "$p" =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then die "not a port: $p"; fi
done
[ "$AGENT_PORT" != "$VLLM_PORT" ] || die "--agent-port and --vllm-port must differ"

# ------------------------------------------------------------------------------------------
# The cache key: this script, the package lists it installs from, and every option that
# changes the base root filesystem.

package_lists() {
  echo "$HERE/packages.txt"
  [ "$TEST_IMAGE" = 1 ] && echo "$HERE/packages-test.txt"
  [ "$SSH" = 1 ] && echo "$HERE/packages-ssh.txt"
  return 0
}

packages() {
  # One name per line, comments and blank lines dropped.
  package_lists | while read -r f; do sed -e 's/#.*//' -e 's/[[:space:]]//g' "$f"; done | grep -v '^$'
}

CACHE_ROOT="${TDX_AGENT_IMAGE_CACHE:-$HOME/.cache/tdx-agent}"
KEY="$(
  {
    sha256sum "$0"
    package_lists | xargs sha256sum
    echo "suite=$SUITE mirror=$MIRROR security=$SECURITY_MIRROR kernel=$KERNEL_PKG test=$TEST_IMAGE ssh=$SSH"
  } | sed 's|  .*/| |' | sha256sum | cut -c1-16
)"
CACHE="$CACHE_ROOT/image-$KEY"
if [ "$PRINT_CACHE" = 1 ]; then echo "$CACHE"; exit 0; fi

[ -n "$OUT" ] || { usage >&2; die "--out DIR is required"; }
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"
for tool in debootstrap chroot mkfs.ext4 sha256sum mount; do
  command -v "$tool" >/dev/null || die "$tool not found: run image/install-deps.sh (Debian: apt-get install debootstrap e2fsprogs)"
done
if [ "$FORMAT" = qcow2 ]; then
  command -v qemu-img >/dev/null || die "qemu-img not found (Debian: apt-get install qemu-utils), or use --format raw"
fi

if [ -z "$BINARY" ]; then
  BINARY="${CARGO_TARGET_DIR:-$REPO/target}/release/tdx-agent"
  [ -x "$BINARY" ] || die "no release binary at $BINARY: run cargo build --release -p tdx-agent, or pass --binary"
fi
[ -x "$BINARY" ] || die "--binary $BINARY is not an executable file"
if [ -z "$CONFIG" ] && [ "$TEST_IMAGE" = 0 ]; then CONFIG="$REPO/systemd/config.toml"; fi
if [ -n "$CONFIG" ]; then
  [ -f "$CONFIG" ] || die "--config $CONFIG: no such file"
  grep -Eq "^[[:space:]]*listen[[:space:]]*=[[:space:]]*\"[^\"]*:$AGENT_PORT\"" "$CONFIG" \
    || die "$CONFIG does not listen on port $AGENT_PORT (the firewall's --agent-port): set listen = \"0.0.0.0:$AGENT_PORT\" or pass --agent-port"
fi
for unit in tdx-agent.service vllm.service; do
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

chroot_mounts() {
  local r="$1"
  mount -t proc proc "$r/proc" && MOUNTS+=("$r/proc")
  mount -t sysfs sysfs "$r/sys" && MOUNTS+=("$r/sys")
  mount --bind /dev "$r/dev" && MOUNTS+=("$r/dev")
  mount -t devpts devpts "$r/dev/pts" && MOUNTS+=("$r/dev/pts")
}

chroot_umounts() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" || umount -l "${MOUNTS[$i]}"
  done
  MOUNTS=()
}

in_root() {
  local r="$1"; shift
  chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    LC_ALL=C.UTF-8 HOME=/root "$@"
}

# ------------------------------------------------------------------------------------------
# The base: debootstrap, the newest kernel, initrd, and what every image shares.

build_base() {
  local base="$1" r="$1/rootfs" pkgs
  pkgs="$(packages | paste -sd, -)"
  log "debootstrap $SUITE (minbase + $pkgs) from $MIRROR"
  local t0=$SECONDS
  debootstrap --variant=minbase --components=main --include="$pkgs" "$SUITE" "$r" "$MIRROR" >&2 \
    || die "debootstrap failed (see above; is $MIRROR reachable?)"
  log "debootstrap took $((SECONDS - t0)) s"

  # apt inside the image: the base suite, its updates and security fixes, and its backports
  # (for the kernel; backports are never preferred for anything else).
  rm -f "$r/etc/apt/sources.list"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates $SUITE-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Nothing starts inside the chroot.
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 0755 "$r/usr/sbin/policy-rc.d"
  # systemd-resolved pointed /etc/resolv.conf at its stub; the chroot needs the host's resolver.
  rm -f "$r/etc/resolv.conf"
  cp /etc/resolv.conf "$r/etc/resolv.conf"

  chroot_mounts "$r"
  in_root "$r" apt-get update -qq >&2 || die "apt-get update inside the image failed"

  # The newest kernel any of the suites offers.
  local best="" best_suite="" v s
  while IFS='|' read -r _ v s; do
    v="$(echo "$v" | tr -d ' ')"
    s="$(echo "$s" | awk '{print $2}')"; s="${s%%/*}"
    log "  $KERNEL_PKG $v in $s"
    case " $(kernel_suites) " in *" $s "*) ;; *) continue ;; esac
    if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best="$v"; best_suite="$s"; fi
  done < <(in_root "$r" apt-cache madison "$KERNEL_PKG")
  [ -n "$best" ] || die "no $KERNEL_PKG in any of: $(kernel_suites)"
  log "kernel: $KERNEL_PKG $best from $best_suite (the newest of: $(kernel_suites))"
  t0=$SECONDS
  in_root "$r" apt-get install -y -qq --no-install-recommends -t "$best_suite" "$KERNEL_PKG=$best" >&2 \
    || die "installing $KERNEL_PKG $best failed"
  log "kernel and initramfs took $((SECONDS - t0)) s"
  in_root "$r" apt-get clean
  chroot_umounts
  rm -rf "$r/var/lib/apt/lists/"* "$r/var/cache/apt/"*.bin "$r/usr/sbin/policy-rc.d"
  ln -sf ../run/systemd/resolve/stub-resolv.conf "$r/etc/resolv.conf"

  local kver
  kver="$(basename "$(find "$r/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)")"
  kver="${kver#vmlinuz-}"
  if [ -z "$kver" ] || [ ! -f "$r/boot/initrd.img-$kver" ]; then die "no kernel and initrd in $r/boot"; fi
  cp "$r/boot/vmlinuz-$kver" "$base/vmlinuz"
  cp "$r/boot/initrd.img-$kver" "$base/initrd.img"
  cp "$r/boot/config-$kver" "$base/kernel-config"
  printf '%s\n' "$kver" >"$base/kernel-release"
  printf '%s %s %s\n' "$KERNEL_PKG" "$best" "$best_suite" >"$base/kernel-package"

  # What every image shares.
  echo tdx-guest >"$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\ttdx-guest\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
  printf 'LABEL=%s\t/\text4\tdefaults,errors=remount-ro\t0\t1\n' "$ROOT_LABEL" >"$r/etc/fstab"
  mkdir -p "$r/etc/systemd/network"
  cat >"$r/etc/systemd/network/80-ethernet.network" <<'EOF'
# Every Ethernet interface: DHCP (IPv4 and router advertisements).
[Match]
Type=ether

[Network]
DHCP=yes
EOF
  # A machine-id is made at first boot (each instance its own), without first-boot prompts.
  : >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id"
  local unit
  for unit in systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer \
    dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
    ln -sf /dev/null "$r/etc/systemd/system/$unit"
  done
  mkdir -p "$r/etc/systemd/system/multi-user.target.wants" "$r/etc/systemd/system/sysinit.target.wants" \
    "$r/etc/systemd/system/sockets.target.wants" "$r/etc/systemd/system/network-online.target.wants"
  ln -sf /usr/lib/systemd/system/systemd-networkd.service "$r/etc/systemd/system/multi-user.target.wants/"
  ln -sf /usr/lib/systemd/system/systemd-networkd.socket "$r/etc/systemd/system/sockets.target.wants/"
  ln -sf /usr/lib/systemd/system/systemd-networkd-wait-online.service "$r/etc/systemd/system/network-online.target.wants/"
  ln -sf /usr/lib/systemd/system/systemd-resolved.service "$r/etc/systemd/system/multi-user.target.wants/"
  ln -sf /usr/lib/systemd/system/nftables.service "$r/etc/systemd/system/sysinit.target.wants/"
  ln -sf /usr/lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
  # No password anywhere: root is locked (test images log in on the serial console only).
  in_root "$r" passwd -l root >/dev/null
  # What the first boot would otherwise redo (ConditionNeedsUpdate): the linker cache, the
  # journal catalog, and the stamps that say both are current for this /usr.
  in_root "$r" ldconfig
  in_root "$r" journalctl --update-catalog
  in_root "$r" /usr/lib/systemd/systemd-update-done
}

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
  log "no cached base at $CACHE: building it (about 3 minutes)"
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
  missing=""
  for sym in $REQUIRED_KCONFIG; do
    v="$(grep -E "^$sym=" "$CACHE/kernel-config" | cut -d= -f2 || true)"
    case "$v" in
      y|m) echo "$sym=$v" ;;
      *) echo "$sym is not set"; missing="$missing $sym" ;;
    esac
  done
  kv="${KREL%%-*}"
  if dpkg --compare-versions "$kv" ge 6.16; then echo "version $kv >= 6.16 (RTMR sysfs files)"
  else echo "version $kv < 6.16: no RTMR sysfs files"; missing="$missing version>=6.16"; fi
  echo "missing:${missing:- none}"
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
  put_file 0640 "$CONFIG" /etc/tdx-agent/config.toml
  put_file 0644 "$REPO/systemd/vllm.service" /etc/systemd/system/vllm.service
  if [ "$ENABLE_VLLM" = 1 ]; then enable_unit multi-user.target vllm.service; fi
else
  # The simulated TD and its PKI, made now; the host gets the root to verify against.
  SIM=/var/lib/tdx-agent/sim
  rm -rf "${R:?}/var/lib/tdx-agent"
  mkdir -p "$R/var/lib/tdx-agent"
  chmod 0700 "$R/var/lib/tdx-agent"
  "$BINARY" sim pki --sim-dir "$R$SIM" >/dev/null || die "tdx-agent sim pki failed"
  cp "$R$SIM/root.der" "$OUT/root.der"

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
# Test image (image/build.sh --test-image): the simulated TD. Never for production.
listen = "0.0.0.0:$AGENT_PORT"
state_dir = "/run/tdx-agent"

[tee]
kind = "sim"
sim_dir = "$SIM"

[collateral]
cache_dir = "/var/cache/tdx-agent/collateral"

[tls]
subject_alt_names = ["localhost"]

[audit]
dir = "/var/lib/tdx-agent/audit"

[upstream]
url = "http://127.0.0.1:$VLLM_PORT"
health_path = "/health"
health_interval_ms = 1000

[model]
vllm_cmdline = [${cmdline_toml%, }]
EOF

  # The guest-side probe: on the second serial port (ttyS1, nothing else writes there), one
  # line per change of: the agent's state, the stand-in answering on loopback and on the
  # guest's own address, who listens on vLLM's port, and the firewall's drop counter.
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
	line="agent=\$agent addr=\${addr:-none} standin_loopback=\$lo standin_own_addr=\$own listen=\${listen:-none} vllm_drop=\${counter:-none}"
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
CMDLINE="root=LABEL=$ROOT_LABEL rw console=ttyS0"
printf '%s\n' "$CMDLINE" >"$OUT/cmdline"

# ------------------------------------------------------------------------------------------
# The disk: ext4 straight from the directory (no loop mounts), then qcow2 if asked.

rm -f "$OUT/disk.raw" "$OUT/disk.qcow2"
truncate -s "$SIZE" "$OUT/disk.raw"
mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$R" "$OUT/disk.raw" >&2 || die "mkfs.ext4 -d failed"
if [ "$FORMAT" = qcow2 ]; then
  qemu-img convert -O qcow2 "$OUT/disk.raw" "$OUT/disk.qcow2"
  rm -f "$OUT/disk.raw"
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
} >"$OUT/build-info"
log "done: $OUT/disk.$FORMAT, vmlinuz, initrd.img, cmdline"
