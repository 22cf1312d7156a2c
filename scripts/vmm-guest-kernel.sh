#!/usr/bin/env bash
# Build (once) the guest kernel for `npm run vmm-e2e -- --dmatest`: Debian's linux-source-6.12
# with the IOAT driver (INTEL_IOATDMA, DCA) and the dmaengine test client (DMATEST) built in.
# Debian's packaged kernels ship ioatdma but not dmatest, hence this build.
#
# The configuration starts from tinyconfig and switches on only what the guest needs: a 64-bit
# kernel, printk, the serial console, an initramfs with devtmpfs, proc and sysfs, ACPI and PCI with
# MSI/MSI-X and MMCONFIG (ioatdma writes CHANERR_INT at config offset 0x180, in extended config
# space), and the dmaengine pieces. No modules, no network, no block devices: a few minutes at -j2.
#
# Cached outside the repo: every step is skipped when its output is there (the config is redone
# when the option list below changes).
#
# Output: shell assignments on stdout (eval them): VMM_DMATEST_KERNEL (bzImage), VMM_DMATEST_KVER.
# Progress goes to stderr; the build log is $K/kbuild.log.
#
# Environment:
#   VMM_E2E_CACHE        the vmm-e2e cache (default /var/cache/iommufd-emu/vmm-e2e, else $TMPDIR);
#                        the kernel goes to its guest-kernel/ folder
#   VMM_KERNEL_TARBALL   the source (default /usr/src/linux-source-6.12.tar.xz, from linux-source-6.12)
#   VMM_KERNEL_JOBS      make -j (default 2), run under `nice -n 5`
#
# Exit status 3: the source or a build tool is missing and cannot be installed (the caller skips).
set -euo pipefail
say() { echo "vmm-guest-kernel: $*" >&2; }
unavailable() { say "SKIP: $*"; exit 3; }

base=${VMM_E2E_CACHE:-}
if [ -z "$base" ]; then
  base=/var/cache/iommufd-emu/vmm-e2e
  mkdir -p "$base" 2>/dev/null && [ -w "$base" ] || base=${TMPDIR:-/tmp}/iommufd-emu-cache/vmm-e2e
fi
K=$base/guest-kernel
SRC=$K/linux
TARBALL=${VMM_KERNEL_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
JOBS=${VMM_KERNEL_JOBS:-2}
mkdir -p "$K"

# ---- tools and source ---------------------------------------------------------------------------
missing=()
for t in make gcc bc bison flex xz; do command -v $t >/dev/null || missing+=("$t"); done
[ -f /usr/include/libelf.h ] || [ -f /usr/include/elfutils/libelf.h ] || missing+=(libelf) # objtool
[ -f "$TARBALL" ] || missing+=(source)
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || unavailable "missing ${missing[*]} (install build-essential bc bison flex xz-utils libelf-dev linux-source-6.12)"
  say "installing build-essential bc bison flex xz-utils libelf-dev linux-source-6.12 (missing: ${missing[*]})"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      build-essential bc bison flex xz-utils libelf-dev linux-source-6.12; } >&2 || unavailable "cannot install the build tools"
  [ -f "$TARBALL" ] || unavailable "no kernel source at $TARBALL"
fi

if [ ! -f "$SRC/Makefile" ] || [ "$TARBALL" -nt "$SRC/.tarball-stamp" ]; then
  say "extracting $TARBALL"
  rm -rf "$SRC" "$K"/linux-source-*
  nice -n 5 tar -C "$K" -xf "$TARBALL"
  mv "$K"/linux-source-* "$SRC"
  touch "$SRC/.tarball-stamp"
fi
kver=$(make -s -C "$SRC" kernelversion)

# ---- configure ----------------------------------------------------------------------------------
ENABLE=(
  64BIT PRINTK PRINTK_TIME TTY SERIAL_8250 SERIAL_8250_CONSOLE
  BINFMT_ELF BINFMT_SCRIPT BLK_DEV_INITRD RD_GZIP DEVTMPFS DEVTMPFS_MOUNT PROC_FS SYSFS
  MULTIUSER FUTEX POSIX_TIMERS
  ACPI PCI PCI_MSI PCI_MMCONFIG
  DMADEVICES DMA_ENGINE INTEL_IOATDMA DCA DMATEST
)
# A 128 KiB log: the guest reads dmatest's lines back with dmesg (tinyconfig has 4 KiB).
VALUES=(LOG_BUF_SHIFT=17)
stamp=$(printf '%s\n' "${ENABLE[@]}" -- "${VALUES[@]}" | sha1sum | cut -c1-12)
if [ ! -f "$SRC/.config" ] || [ "$(cat "$SRC/.vmm-config-stamp" 2>/dev/null)" != "$stamp" ]; then
  say "configuring $kver (tinyconfig + the guest's options)"
  make -s -C "$SRC" tinyconfig >&2
  args=()
  for o in "${ENABLE[@]}"; do args+=(--enable "$o"); done
  for v in "${VALUES[@]}"; do args+=(--set-val "${v%%=*}" "${v#*=}"); done
  # Twice: some options only become visible once their dependencies are on.
  for _ in 1 2; do
    "$SRC/scripts/config" --file "$SRC/.config" "${args[@]}"
    make -s -C "$SRC" olddefconfig >&2
  done
  echo "$stamp" > "$SRC/.vmm-config-stamp"
fi
bad=()
for o in "${ENABLE[@]}"; do grep -q "^CONFIG_$o=y" "$SRC/.config" || bad+=("$o"); done
((${#bad[@]} == 0)) || { say "config check: not =y: ${bad[*]}"; exit 1; }

# ---- build --------------------------------------------------------------------------------------
BZ=$SRC/arch/x86/boot/bzImage
if [ ! -f "$BZ" ] || [ "$SRC/.config" -nt "$BZ" ]; then
  say "building $kver bzImage: nice -n 5 make -j$JOBS (log: $K/kbuild.log)"
  t0=$(date +%s)
  if ! nice -n 5 make -C "$SRC" -j"$JOBS" bzImage > "$K/kbuild.log" 2>&1; then
    tail -40 "$K/kbuild.log" >&2; exit 1
  fi
  say "bzImage built in $(( $(date +%s) - t0 )) s"
fi
cp -f "$BZ" "$K/bzImage"

q() { printf '%q' "$1"; }
echo "VMM_DMATEST_KERNEL=$(q "$K/bzImage")"
echo "VMM_DMATEST_KVER=$(q "$kver")"
