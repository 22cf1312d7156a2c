#!/usr/bin/env bash
# Build the QEMU end-to-end guest's initramfs: a static busybox, dca.ko and ioatdma.ko,
# and an /init that loads them and reports what the guest saw on the serial console.
#
#   vmm-e2e-initramfs.sh BUSYBOX MODULES_DIR OUT.gz
#
# MODULES_DIR `-`: no modules (a guest kernel with dca and ioatdma built in, for --dmatest).
# The mode comes from the kernel command line: vmm_e2e=probe|error|dmatest; dmatest mode also
# reads vmm_dmatest_iterations=N (the runner passes it) and runs the kernel's dmatest client on
# dma0chan0 with one thread, through /sys/module/dmatest/parameters.
#
# The guest's /init prints lines starting "vmm-e2e:" (the runner parses them):
#   vmm-e2e: pci <bdf> <vendor>:<device> <driver>       every PCI function, and its driver
#   vmm-e2e: insmod <module> rc=<n>                      each module load
#   vmm-e2e: dma <name>                                  each entry in /sys/class/dma
#   vmm-e2e: dmesg <line>                                the kernel log lines about ioatdma
#   vmm-e2e: waiting for the host                      error mode: the host unmaps, then writes a line
#   vmm-e2e: insmod <module> builtin                     no .ko in the initramfs (built into the kernel)
#   vmm-e2e: dmatest start <iterations>                  dmatest mode: before run=1
#   vmm-e2e: dmatest <line>                              dmatest mode: its kernel log lines, after wait
#   vmm-e2e: done                                        the end (the guest then powers off)
set -euo pipefail
BB=$1 MODS=$2 OUT=$3
W=$(mktemp -d "${TMPDIR:-/tmp}/vmm-e2e-initramfs.XXXXXX")
trap 'rm -rf "$W"' EXIT
mkdir -p "$W"/{bin,sbin,proc,sys,dev,tmp,lib/modules}
cp "$BB" "$W/bin/busybox"
for a in sh mount insmod ls cat echo sleep poweroff dmesg grep sed head basename readlink uname; do
  ln -s busybox "$W/bin/$a"
done
[ "$MODS" = - ] || cp "$MODS"/dca.ko "$MODS"/ioatdma.ko "$W/lib/modules/"
cat > "$W/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() { echo "vmm-e2e: $*" > /dev/ttyS0; }
say "guest $(uname -r) up $(cut -d' ' -f1 /proc/uptime)"
mode=probe
iterations=1000
for a in $(cat /proc/cmdline); do
  case $a in vmm_e2e=*) mode=${a#vmm_e2e=} ;; vmm_dmatest_iterations=*) iterations=${a#*=} ;; esac
done
say "mode $mode"
for d in /sys/bus/pci/devices/*; do
  say "pci $(basename $d) $(cat $d/vendor):$(cat $d/device) class=$(cat $d/class)"
done
if [ "$mode" = error ]; then
  # The host takes the guest's memory away from the device (IOAS_UNMAP), then answers on the console.
  say "waiting for the host"
  read -r answer < /dev/ttyS0
  say "host answered $answer"
fi
for m in dca ioatdma; do
  if [ -e /lib/modules/$m.ko ]; then insmod /lib/modules/$m.ko; say "insmod $m rc=$?"; else say "insmod $m builtin"; fi
done
# The probe (and its self-test) runs inside insmod; give the error path time to log.
sleep 1
for d in /sys/bus/pci/devices/*; do
  drv=none; [ -e $d/driver ] && drv=$(basename $(readlink $d/driver))
  say "driver $(basename $d) $drv"
done
for c in /sys/class/dma/*; do [ -e "$c" ] && say "dma $(basename $c)"; done
dmesg | grep -i -E 'ioat|dca|dmaengine|vfio|iommu|0000:00:0' | while read -r l; do say "dmesg $l"; done
if [ "$mode" = dmatest ]; then
  P=/sys/module/dmatest/parameters
  if [ -d $P ]; then
    # As the kernel's dmatest documentation orders it: the test's parameters, then the channel, then run.
    echo "$iterations" > $P/iterations
    echo 1 > $P/threads_per_chan
    echo 1 > $P/max_channels
    echo dma0chan0 > $P/channel
    say "dmatest start $iterations $(cut -d' ' -f1 /proc/uptime)"
    echo 1 > $P/run
    cat $P/wait > /dev/null
    say "dmatest end $(cut -d' ' -f1 /proc/uptime)"
    dmesg | grep 'dmatest: ' | while read -r l; do say "dmatest $l"; done
  else
    say "dmatest missing (no /sys/module/dmatest in this kernel)"
  fi
fi
say "uptime $(cut -d' ' -f1 /proc/uptime)"
say "done"
poweroff -f
EOF
chmod +x "$W/init"
(cd "$W" && find . | cpio -o -H newc --quiet | gzip -9) > "$OUT"
echo "vmm-e2e-initramfs: $OUT ($(stat -c %s "$OUT") bytes)" >&2
