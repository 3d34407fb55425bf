# image/base.sh: the cached base of image/build.sh (sourced by it, never run on its own):
# debootstrap, the newest kernel the distribution's suites offer, its initrd, and what every
# image shares. The cache key is a hash of THIS file, the package lists and the options that
# change the base (build.sh), so editing the per-image layer in build.sh (units, firewall,
# configuration) never costs a rebuild of the base, while any change here does.
# shellcheck shell=bash
# Variables and helpers it uses (SUITE, MIRROR, SECURITY_MIRROR, UEFI, CMDLINE, ROOT_LABEL,
# HERE, MOUNTS, log, die, packages, packages_in) are build.sh's.
# shellcheck disable=SC2154

# The kernel: the metapackage, and the suites it may come from (all installable on the base
# suite: the stable release, its point updates and security fixes, and its backports). The
# newest version among them wins; docs/image.md says why testing/unstable are not considered.
KERNEL_PKG=linux-image-amd64
kernel_suites() { echo "$SUITE $SUITE-updates $SUITE-security $SUITE-backports"; }

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
  local kver_
  kver_="$(basename "$(find "$r/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)")"
  kver_="${kver_#vmlinuz-}"
  if [ "$UEFI" = 1 ]; then
    # shellcheck disable=SC2046
    in_root "$r" apt-get install -y -qq --no-install-recommends $(packages_in "$HERE/packages-uefi.txt") >&2 \
      || die "installing the --uefi tools failed"
    # One PE file the firmware measures as a whole (kernel, initrd, command line, os-release).
    in_root "$r" ukify build --linux="/boot/vmlinuz-$kver_" --initrd="/boot/initrd.img-$kver_" \
      --cmdline="$CMDLINE" --uname="$kver_" --os-release=@/etc/os-release --output=/boot/uki.efi >&2 \
      || die "ukify build failed"
    mv "$r/boot/uki.efi" "$base/uki.efi"
    # The tools are not part of the image.
    # shellcheck disable=SC2046
    in_root "$r" apt-get purge -y -qq --autoremove $(packages_in "$HERE/packages-uefi.txt") >&2
  fi
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
