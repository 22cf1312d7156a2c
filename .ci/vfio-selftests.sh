#!/usr/bin/env bash
# Conformance run (spec 06 §1, §10, §14): the kernel's VFIO selftests
# (tools/testing/selftests/vfio of Debian's linux-source-7.3, 7 programs), built
# unmodified OUTSIDE the repository against `iommufd-emu headers` plus the
# tarball's vfio.h (scripts/build-vfio-selftests.sh), each run through
# `iommufd-emu run --machine PRESET` with VFIO_SELFTESTS_BDF naming the preset's
# first device. The mode-parameterised programs run every iommu mode they have
# (vfio_type1_iommu, vfio_type1v2_iommu, iommufd_compat_type1,
# iommufd_compat_type1v2, iommufd: one fixture variant each); the others run the
# library's default mode (iommufd). vfio_pci_device_init_perf_test runs a second
# time on the ioat-x2 preset with both BDFs as arguments (its threads then open two
# devices at once on one container/iommufd); that run is recorded as
# "vfio_pci_device_init_perf_test@ioat-x2". Every case is compared with
# .ci/vfio-selftests-expected.tsv; a verdict or failing check that moves, in either
# direction, fails the run naming the case. Per program and mode it prints
# pass/fail/skip and the reason of every non-pass.
#
#   .ci/vfio-selftests.sh [--keep] [--only PROGRAM[@PRESET]]... [--record]
#
# --record prints expectation lines for this run (to update the .tsv after a change
#   that moves verdicts on purpose) instead of comparing.
# Environment: VFIO_SELFTESTS_MACHINE (default ioat), VFIO_SELFTESTS_ABI (default 7.3,
#   the tree's kernel), VFIO_SELFTESTS_TIMEOUT per program in seconds (default 900).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP=0
RECORD=0
ONLY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift ;;
    --record) RECORD=1; shift ;;
    --only) ONLY+=("${2:?--only needs a program name}"); shift 2 ;;
    *) echo "usage: $0 [--keep] [--only PROGRAM]... [--record]" >&2; exit 2 ;;
  esac
done
MACHINE=${VFIO_SELFTESTS_MACHINE:-ioat}
ABI=${VFIO_SELFTESTS_ABI:-7.3}
# Runs: "PROGRAM[@PRESET]"; without @PRESET on $MACHINE with VFIO_SELFTESTS_BDF, with it on
# that preset with every device's BDF as the trailing arguments.
RUNS=(vfio_dma_mapping_test vfio_dma_mapping_mmio_test vfio_iommufd_setup_test vfio_pci_device_test
  vfio_pci_device_init_perf_test vfio_pci_device_init_perf_test@ioat-x2 vfio_pci_driver_test vfio_pci_sriov_uapi_test)
if [ ${#ONLY[@]} -gt 0 ]; then
  sel=()
  for r in "${RUNS[@]}"; do for o in "${ONLY[@]}"; do [ "${r%@*}" = "$o" ] || [ "$r" = "$o" ] && sel+=("$r"); done; done
  RUNS=("${sel[@]}")
fi
EXPECTED=$ROOT/.ci/vfio-selftests-expected.tsv

apt_updated=
need() { # need PACKAGE...
  if [ -z "$apt_updated" ]; then apt-get update; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
command -v cc >/dev/null || need gcc libc6-dev
command -v make >/dev/null || need make
command -v xz >/dev/null || need xz-utils
echo '#include <uuid/uuid.h>' | cc -E -x c - >/dev/null 2>&1 || need uuid-dev

WORK=$(mktemp -d /tmp/iommufd-vfio-selftests.XXXXXX)
RESTORE=()
give_back() { :; }
if [ "$KEEP" = 1 ]; then echo "work dir: $WORK"; trap 'give_back' EXIT; else trap 'give_back; rm -rf "$WORK"' EXIT; fi

echo "== building the emulator"
(cd "$ROOT" && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npx tsc -p . >/dev/null)
CLI=(node "$ROOT/dist/cli/main.js")
"${CLI[@]}" build-shim >/dev/null

echo "== building the VFIO selftests (linux-source-7.3, headers of profile $ABI)"
BIN=$WORK/bin
WORK=$WORK/tree VFIO_SELFTESTS_ABI=$ABI bash "$ROOT/scripts/build-vfio-selftests.sh" "$BIN" >/dev/null

# The record is of root with CAP_IPC_LOCK: vfio_pci_driver_test pins 1 GiB + 2 MiB per case, which
# the emulator accounts against RLIMIT_MEMLOCK otherwise, as the kernel does (spec 06 §2.5).
capeff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
if [ "$(id -u)" != 0 ] || [ -z "$capeff" ] || [ $(( 0x$capeff >> 14 & 1 )) != 1 ]; then
  echo "note: not root with CAP_IPC_LOCK: the driver test's 1 GiB pins count against RLIMIT_MEMLOCK ($(ulimit -l)), verdicts may move"
fi
BDF=$("${CLI[@]}" devices --machine "$MACHINE" | sed -n 's/^VFIO_SELFTESTS_BDF=//p')
[ -n "$BDF" ] || { echo "vfio-selftests: machine '$MACHINE' has no device" >&2; exit 1; }
echo "== machine $MACHINE, VFIO_SELFTESTS_BDF=$BDF"

# Huge pages the hugetlb cases can take (they skip without, as on a real kernel). Where
# the pools are writable (root on a VM), reserve what is missing for the run (8 x 2 MiB,
# 1 x 1 GiB) and give it back at the end; VFIO_SELFTESTS_RESERVE_HUGEPAGES=0 leaves the
# pools alone.
HP=/sys/kernel/mm/hugepages
RESTORE=()
reserve() { # reserve SIZE-DIR COUNT: make COUNT pages of that size free, if the pool can grow
  local d=$HP/$1 free total
  free=$(cat "$d/free_hugepages" 2>/dev/null || echo 0)
  [ "$free" -ge "$2" ] && return 0
  [ "${VFIO_SELFTESTS_RESERVE_HUGEPAGES:-1}" = 1 ] && [ -w "$d/nr_hugepages" ] || return 0
  total=$(cat "$d/nr_hugepages")
  RESTORE+=("$total:$d/nr_hugepages")
  echo $((total + $2 - free)) > "$d/nr_hugepages" 2>/dev/null || true
}
give_back() { for r in "${RESTORE[@]}"; do echo "${r%%:*}" > "${r#*:}" 2>/dev/null || true; done; }
reserve hugepages-2048kB 8
reserve hugepages-1048576kB 1
HAVE=()
free2m=$(cat $HP/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0)
free1g=$(cat $HP/hugepages-1048576kB/free_hugepages 2>/dev/null || echo 0)
[ "$free2m" -ge 1 ] && HAVE+=(hugetlb-2mb)
[ "$free1g" -ge 1 ] && HAVE+=(hugetlb-1gb)
echo "== free huge pages: 2 MiB $free2m, 1 GiB $free1g"

STATUS=0
TOTAL=0; AGREE=0
for run in "${RUNS[@]}"; do
  t=${run%@*}
  m=$MACHINE; ARGS=()
  if [ "$run" != "$t" ]; then
    m=${run#*@}
    # every device of that preset, as trailing BDF arguments
    mapfile -t ARGS < <("${CLI[@]}" devices --machine "$m" | grep -oE '^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]')
  fi
  [ -x "$BIN/$t" ] || { echo "vfio-selftests: no program $t" >&2; STATUS=1; continue; }
  LOG=$WORK/$run.log
  echo "== $t${ARGS[*]:+ ${ARGS[*]}} through iommufd-emu run --abi $ABI --machine $m"
  set +e
  (cd "$BIN" && VFIO_SELFTESTS_BDF=$BDF timeout "${VFIO_SELFTESTS_TIMEOUT:-900}" \
    "${CLI[@]}" run --abi "$ABI" --machine "$m" -- "./$t" "${ARGS[@]}") >"$LOG" 2>&1 </dev/null
  rc=$?
  set -e
  [ "$rc" = 124 ] && echo "$t: killed after ${VFIO_SELFTESTS_TIMEOUT:-900} s"
  [ "$KEEP" = 1 ] && echo "  log: $LOG (exit $rc)"
  if [ "$RECORD" = 1 ]; then
    node "$ROOT/dist/conformance/vfio_selftests.js" record "$run" "$LOG" "$rc"
    continue
  fi
  set +e
  out=$(node "$ROOT/dist/conformance/vfio_selftests.js" compare "$EXPECTED" "$run" "$LOG" "$rc" "${HAVE[@]}")
  crc=$?
  set -e
  echo "$out"
  n=$(echo "$out" | sed -n 's/^.*: \([0-9]*\) of \([0-9]*\) cases as recorded$/\1 \2/p')
  if [ -n "$n" ]; then AGREE=$((AGREE + ${n%% *})); TOTAL=$((TOTAL + ${n##* })); fi
  [ "$crc" = 0 ] || STATUS=1
done
[ "$RECORD" = 1 ] && exit 0
echo "vfio-selftests: $AGREE of $TOTAL cases as recorded in $(basename "$EXPECTED")"
[ "$STATUS" = 0 ] || echo "vfio-selftests: FAILED: verdicts moved (see MOVED/IMPROVED above)"
exit $STATUS
