#!/usr/bin/env bash
# Runs the local provider's isolation and conformance tests on cgroup v2.
#
# The machines warren is developed on are cgroup v1 hybrids and cannot
# switch without a reboot, so this boots Debian's own kernel under QEMU
# (software emulation: no KVM needed) with the host's filesystem shared
# read-write over 9p, mounts only the unified hierarchy (so every controller
# lands on v2) and runs the same test binaries there with
# WARREN_EXPECT_CGROUP=2, which makes them fail if the provider did not pick
# v2. Installs what it needs (idempotent). Run as root.
#
#   scripts/cgroup-v2-vm.sh [TEST-FILTER...]
#
# Environment: WARREN_VM_CACHE (kernel and initramfs, default
# /var/cache/warren-vm), WARREN_VM_TIMEOUT (seconds, default 1500),
# WARREN_VM_TESTS (test targets of warren-provider-local, default
# all of them: "isolation conformance network oci probes").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*"; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
  step "packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cache=${WARREN_VM_CACHE:-/var/cache/warren-vm}
mkdir -p "$cache"

# Debian's generic kernel (it has 9p; the cloud flavour does not), from
# bookworm-backports: workspaces need idmapped mounts of tmpfs (Linux 6.3+),
# which bookworm's own 6.1 lacks. The backports index lives in the cache
# with its own apt configuration: the host's sources stay as they are.
mkdir -p "$cache/apt/lists/partial" "$cache/apt/archives/partial"
echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$cache/apt/sources.list"
bpo=(-o "Dir::Etc::SourceList=$cache/apt/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$cache/apt/lists" -o "Dir::Cache::Archives=$cache/apt/archives"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
kernel_package() { apt-cache "${bpo[@]}" depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
kpkg=$(kernel_package)
[ -n "$kpkg" ] || { apt-get "${bpo[@]}" update -qq && kpkg=$(kernel_package); }
[ -n "$kpkg" ] || { echo "cgroup-v2-vm: no kernel package behind linux-image-amd64 in bookworm-backports" >&2; exit 1; }
kver=${kpkg#linux-image-}
kdir=$cache/$kpkg
if [ ! -f "$kdir/boot/vmlinuz-$kver" ]; then
  step "kernel $kpkg"
  rm -rf "$kdir" "$cache"/*.deb
  (cd "$cache" && apt-get "${bpo[@]}" download "$kpkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  deb=$(ls "$cache/${kpkg}"_*.deb)
  dpkg-deb -x "$deb" "$kdir.tmp"
  depmod -b "$kdir.tmp" "$kver"
  rm -f "$deb"
  mv "$kdir.tmp" "$kdir"
fi

# initramfs: busybox, the modules to reach the host's files over 9p, /init.
initrd=$cache/initrd-$kver.cpio.gz
if [ ! -f "$initrd" ]; then
  step "initramfs"
  ir=$(mktemp -d)
  mkdir -p "$ir"/{bin,proc,sys,dev,newroot,lib/modules}
  cp /bin/busybox "$ir/bin/busybox"
  for m in virtio_pci 9pnet_virtio 9p; do
    modprobe -d "$kdir" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
  done | awk '!seen[$0]++' | while read -r f; do
    # busybox's insmod takes plain modules; newer kernels ship them compressed.
    m=$(basename "$f"); m=${m%.xz}; m=${m%.zst}; m=${m%.ko}
    case $f in
      *.xz) xz -dc "$f" >"$ir/lib/modules/$m.ko" ;;
      *.zst) zstd -qdc "$f" >"$ir/lib/modules/$m.ko" ;;
      *) cp "$f" "$ir/lib/modules/$m.ko" ;;
    esac
    echo "$m" >>"$ir/lib/modules/order"
  done
  cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in $(/bin/busybox cat /lib/modules/order); do /bin/busybox insmod /lib/modules/$m.ko || echo "WARREN-VM: insmod $m failed"; done
if ! /bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /newroot; then
  echo "WARREN-VM: cannot mount the host's files"; /bin/busybox poweroff -f
fi
/bin/busybox umount /proc /sys /dev
# The kernel hands unknown key=value parameters to init as environment.
exec /bin/busybox switch_root /newroot /bin/bash "$WARREN_SCRIPT"
EOF
  chmod +x "$ir/init"
  (cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$ir"
fi

step "test binaries"
scripts/build-agent.sh >/dev/null
tests=${WARREN_VM_TESTS:-isolation conformance network oci probes}
args=()
for t in $tests; do args+=(--test "$t"); done
bins=$(cargo test -p warren-provider-local "${args[@]}" --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])')
[ -n "$bins" ] || { echo "cgroup-v2-vm: no test binaries built" >&2; exit 1; }
cargo build -q -p warren-agent -p warren-provider-local

run=$(mktemp -d /var/tmp/warren-vm.XXXXXX)
trap 'rm -rf "$run"' EXIT
filter=("$@")
cat >"$run/guest.sh" <<EOF
#!/bin/bash
# Inside the VM: the host's files are / (9p); make the rest a fresh host.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# Scratch space on a tmpfs (overlayfs cannot put its upper layer on 9p). The
# host's /tmp stays visible: the checkout may live there.
mount -t tmpfs tmpfs /run
mkdir -p /run/tmp
export TMPDIR=/run/tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname warren-vm
ip link set lo up
for m in loop overlay veth bridge br_netfilter nf_tables nft_chain_nat nft_compat xt_MASQUERADE xt_conntrack iptable_nat iptable_filter; do
  modprobe -d "$kdir" -S "$kver" "\$m" 2>/dev/null || true
done
echo "WARREN-VM: kernel \$(uname -r); cgroup: \$(stat -fc %T /sys/fs/cgroup); controllers: \$(cat /sys/fs/cgroup/cgroup.controllers)"
cd "$root"
export WARREN_EXPECT_CGROUP=2 RUST_BACKTRACE=1 CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
rc=0
for b in $(echo $bins); do
  echo "WARREN-VM: running \$b"
  "\$b" --test-threads=1 ${filter[*]:-} || rc=1
done
echo \$rc >"$run/rc"
sync
echo o >/proc/sysrq-trigger
sleep 30
EOF
chmod +x "$run/guest.sh"

step "booting Debian $kver under QEMU (cgroup v2 only)"
timeout "${WARREN_VM_TIMEOUT:-1500}" qemu-system-x86_64 \
  -machine q35 -accel tcg,thread=multi -cpu max -smp 2 -m 4096 \
  -kernel "$kdir/boot/vmlinuz-$kver" -initrd "$initrd" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 cgroup_no_v1=all WARREN_SCRIPT=$run/guest.sh" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,multidevs=remap,id=hostroot" \
  -nic none -nographic -no-reboot -serial mon:stdio </dev/null || true

rc=$(cat "$run/rc" 2>/dev/null || echo "none")
case $rc in
  0) echo "cgroup v2: all tests passed" ;;
  none) echo "cgroup v2: the VM did not finish the tests" >&2; exit 1 ;;
  *) echo "cgroup v2: tests failed" >&2; exit 1 ;;
esac
