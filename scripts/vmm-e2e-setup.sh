#!/usr/bin/env bash
# Fetch what the QEMU end-to-end run needs, without installing anything system-wide
# and without touching the machine's apt configuration:
#   - QEMU 10 (qemu-system-x86 from bookworm-backports) and the libraries it needs that
#     the machine lacks, unpacked into $D/root (run it with the env lines printed below);
#   - a Debian 6.1 guest kernel (linux-image-6.1.0-*-amd64): vmlinuz, dca.ko, ioatdma.ko;
#   - busybox-static's busybox;
# then builds the guest initramfs (scripts/vmm-e2e-initramfs.sh).
#
# Everything goes through a private apt configuration in $D/apt (own sources list with
# bookworm, bookworm-updates, bookworm-security and bookworm-backports; own lists and
# cache). `apt-get install --download-only` resolves QEMU's dependencies against the
# machine's installed packages (read-only), so only what is missing is fetched.
#
# Output: shell assignments on stdout (eval them): VMM_QEMU, VMM_QEMU_LD, VMM_QEMU_DATADIR,
# VMM_KERNEL, VMM_INITRD, VMM_GUEST_KVER, VMM_QEMU_VERSION, VMM_BUSYBOX. Progress goes to stderr.
#
# Environment:
#   VMM_E2E_CACHE        where everything goes (default /var/cache/iommufd-emu/vmm-e2e, else $TMPDIR)
#   VMM_QEMU_VERSION     pin for qemu-system-x86 (default: bookworm-backports' current version)
#   VMM_GUEST_IMAGE      the guest kernel package (default: what linux-image-amd64 in bookworm depends on)
#
# Exit status 3: a package could not be fetched (the caller skips with this reason).
set -euo pipefail
say() { echo "vmm-e2e-setup: $*" >&2; }
here=$(cd "$(dirname "$0")" && pwd)

base=${VMM_E2E_CACHE:-}
if [ -z "$base" ]; then
  base=/var/cache/iommufd-emu/vmm-e2e
  mkdir -p "$base" 2>/dev/null && [ -w "$base" ] || base=${TMPDIR:-/tmp}/iommufd-emu-cache/vmm-e2e
fi
D=$base
A=$D/apt
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$D/debs"
K=/usr/share/keyrings/debian-archive-keyring.gpg
{
  echo "deb [signed-by=$K] http://deb.debian.org/debian bookworm main"
  echo "deb [signed-by=$K] http://deb.debian.org/debian bookworm-updates main"
  echo "deb [signed-by=$K] http://deb.debian.org/debian-security bookworm-security main"
  echo "deb [signed-by=$K] http://deb.debian.org/debian bookworm-backports main"
} > "$A/sources.list"
OPTS=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o Debug::NoLocking=1
      -o APT::Get::AllowUnauthenticated=false)
unavailable() { say "SKIP: $*"; exit 3; }

for t in dpkg-deb cpio gzip; do command -v $t >/dev/null || unavailable "$t is missing"; done
[ -f "$K" ] || unavailable "no Debian archive keyring at $K"

# One apt-get update a day is enough (the lists are ours alone).
if [ -z "$(find "$A/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  say "apt-get update (private configuration: bookworm + bookworm-backports)"
  apt-get "${OPTS[@]}" update >&2 || unavailable "apt-get update failed"
fi

# ---- QEMU 10 ----------------------------------------------------------------------------------
R=$D/root
qspec=qemu-system-x86/bookworm-backports
[ -n "${VMM_QEMU_VERSION:-}" ] && qspec="qemu-system-x86=${VMM_QEMU_VERSION}"
qver=$(apt-cache "${OPTS[@]}" show "$qspec" 2>/dev/null | awk '/^Version:/{print $2; exit}')
[ -n "$qver" ] || unavailable "qemu-system-x86 ($qspec) is not in bookworm-backports"
stamp=$R/.qemu-$qver
if [ ! -f "$stamp" ]; then
  say "fetching qemu-system-x86 $qver and the libraries this machine lacks"
  rm -rf "$A/cache/archives/"*.deb
  apt-get "${OPTS[@]}" install -y -qq --download-only --no-install-recommends \
    -t bookworm-backports "$qspec" >&2 || unavailable "qemu-system-x86 $qver cannot be fetched"
  rm -rf "$R"; mkdir -p "$R"
  for deb in "$A/cache/archives/"*.deb; do dpkg-deb -x "$deb" "$R"; done
  touch "$stamp"
fi
QEMU=$R/usr/bin/qemu-system-x86_64
[ -x "$QEMU" ] || QEMU=$(command -v qemu-system-x86_64 || true)
[ -x "$QEMU" ] || unavailable "qemu-system-x86_64 not found after unpacking"
# Some bookworm packages (libfuse3-3, libnl-3-200, libbrlapi0.8) still ship under /lib, not /usr/lib:
# a machine that has them installed hides this, a fresh one does not.
LD=$R/usr/lib/x86_64-linux-gnu:$R/lib/x86_64-linux-gnu
# Firmware: the unpacked data dir; its bios symlinks point into /usr/share/seabios, so
# give QEMU a directory where they resolve inside the unpacked tree.
DATA=$D/qemu-data
if [ ! -f "$DATA/.done-$qver" ]; then
  rm -rf "$DATA"; mkdir -p "$DATA"
  for f in "$R"/usr/share/qemu/* "$R"/usr/share/seabios/*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    n=$(basename "$f")
    t=$(readlink "$f" || true)
    case $t in
      /usr/share/*) [ -e "$R$t" ] && cp -L "$R$t" "$DATA/$n" || { [ -e "$t" ] && cp -L "$t" "$DATA/$n"; } ;;
      *) [ -e "$f" ] && cp -rL "$f" "$DATA/$n" ;;
    esac
  done
  touch "$DATA/.done-$qver"
fi
[ -f "$DATA/bios-256k.bin" ] || unavailable "no SeaBIOS image (bios-256k.bin) in the unpacked packages"
actual=$(LD_LIBRARY_PATH=$LD "$QEMU" --version 2>&1 | head -1) || unavailable "qemu-system-x86_64 does not run: $actual"

# ---- guest kernel ------------------------------------------------------------------------------
img=${VMM_GUEST_IMAGE:-}
if [ -z "$img" ]; then
  img=$(apt-cache "${OPTS[@]}" depends linux-image-amd64/bookworm-security 2>/dev/null | awk '/Depends: linux-image-6.1/{print $2; exit}')
  [ -n "$img" ] || img=$(apt-cache "${OPTS[@]}" depends linux-image-amd64/bookworm 2>/dev/null | awk '/Depends: linux-image-6.1/{print $2; exit}')
fi
[ -n "$img" ] || unavailable "no linux-image-6.1.0-*-amd64 package found"
G=$D/guest/$img
if [ ! -f "$G/.done" ]; then
  say "fetching $img"
  mkdir -p "$D/debs/$img"
  (cd "$D/debs/$img" && { ls "$img"_*.deb >/dev/null 2>&1 || apt-get "${OPTS[@]}" download "$img" >&2; }) ||
    unavailable "$img cannot be fetched"
  rm -rf "$G"; mkdir -p "$G/x"
  dpkg-deb -x "$(ls "$D/debs/$img/$img"_*.deb | head -1)" "$G/x"
  kver=$(ls "$G/x/lib/modules" | head -1)
  cp "$G/x/boot/vmlinuz-$kver" "$G/vmlinuz"
  mkdir -p "$G/modules"
  for m in drivers/dca/dca drivers/dma/ioat/ioatdma; do
    src=$(ls "$G/x/lib/modules/$kver/kernel/$m".ko* 2>/dev/null | head -1)
    [ -n "$src" ] || unavailable "$img has no $m.ko"
    case $src in
      *.xz) xz -dc "$src" > "$G/modules/$(basename "$m").ko" ;;
      *.zst) zstd -qdc "$src" > "$G/modules/$(basename "$m").ko" ;;
      *) cp "$src" "$G/modules/" ;;
    esac
  done
  echo "$kver" > "$G/kver"
  rm -rf "$G/x"
  touch "$G/.done"
fi

# ---- busybox ------------------------------------------------------------------------------------
BB=$D/busybox
if [ ! -x "$BB" ]; then
  if [ -x /bin/busybox ] && file /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
    cp /bin/busybox "$BB"
  else
    say "fetching busybox-static"
    mkdir -p "$D/debs/busybox" && (cd "$D/debs/busybox" && apt-get "${OPTS[@]}" download busybox-static >&2) ||
      unavailable "busybox-static cannot be fetched"
    rm -rf "$D/bbx" && mkdir -p "$D/bbx" && dpkg-deb -x "$(ls "$D"/debs/busybox/busybox-static_*.deb | head -1)" "$D/bbx"
    cp "$D/bbx/bin/busybox" "$BB" && rm -rf "$D/bbx"
  fi
fi

# ---- initramfs ----------------------------------------------------------------------------------
INITRD=$G/initrd.gz
if [ ! -f "$INITRD" ] || [ "$here/vmm-e2e-initramfs.sh" -nt "$INITRD" ]; then
  bash "$here/vmm-e2e-initramfs.sh" "$BB" "$G/modules" "$INITRD" >&2
fi

q() { printf '%q' "$1"; }
echo "VMM_QEMU=$(q "$QEMU")"
echo "VMM_QEMU_LD=$(q "$LD")"
echo "VMM_QEMU_DATADIR=$(q "$DATA")"
echo "VMM_QEMU_VERSION=$(q "$actual")"
echo "VMM_KERNEL=$(q "$G/vmlinuz")"
echo "VMM_INITRD=$(q "$INITRD")"
echo "VMM_GUEST_KVER=$(q "$(cat "$G/kver")")"
echo "VMM_BUSYBOX=$(q "$BB")"
