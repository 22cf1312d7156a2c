#!/usr/bin/env bash
# Conformance run (spec 05): build the Linux 6.12 iommufd selftests from
# Debian's linux-source-6.12 in a temporary directory OUTSIDE the repository
# (nothing from the kernel package is ever copied into the project), against
# C headers generated from our uAPI table for the "6.12" profile, then run both
# binaries unmodified through `iommufd-emu run --abi 6.12` and summarise.
#
#   .ci/selftests.sh [--keep] [-- extra kselftest args, e.g. -r FIXTURE.VARIANT.TEST]
#
# Environment: SELFTESTS_ONLY=iommufd|iommufd_fail_nth runs just one binary.
# Exit status: non-zero when a binary passes fewer cases than .ci/selftests-floor records.
# SELFTESTS_GRANT_CAPS="sys_resource ..." makes the emulator treat the tests as
# having those capabilities (for containers that drop them; default: faithful).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: $0 [--keep] [-- kselftest args]" >&2; exit 2 ;;
  esac
done

TARBALL=/usr/src/linux-source-6.12.tar.xz
if [ ! -f "$TARBALL" ]; then
  apt-get update
  apt-get install -y linux-source-6.12 xz-utils gcc libc6-dev
fi
command -v cc >/dev/null || { apt-get update; apt-get install -y gcc libc6-dev; }

WORK=$(mktemp -d /tmp/iommufd-selftests.XXXXXX)
if [ "$KEEP" = 1 ]; then echo "work dir: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi

TOP=linux-source-6.12
MEMBERS=(
  "$TOP/tools/testing/selftests/iommu/iommufd.c"
  "$TOP/tools/testing/selftests/iommu/iommufd_utils.h"
  "$TOP/tools/testing/selftests/iommu/iommufd_fail_nth.c"
  "$TOP/tools/testing/selftests/kselftest_harness.h"
  "$TOP/tools/testing/selftests/kselftest.h"
  "$TOP/drivers/iommu/iommufd/iommufd_test.h"
  "$TOP/include/uapi/linux/vfio.h"
)
echo "== extracting ${#MEMBERS[@]} files from $TARBALL"
tar -C "$WORK" -xJf "$TARBALL" "${MEMBERS[@]}"

echo "== building the emulator and generating 6.12 headers"
(cd "$ROOT" && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npx tsc -p . >/dev/null || true)
CLI=(node "$ROOT/dist/cli/main.js")
GEN="$WORK/gen"
"${CLI[@]}" headers --abi 6.12 "$GEN" >/dev/null
# The tests include the mock header by a relative path: replace it in place.
cp "$GEN/iommufd_test.h" "$WORK/$TOP/drivers/iommu/iommufd/iommufd_test.h"
# vfio.h from the same tree, exported the way the kernel's header export does.
sed -e 's/__user//g' "$WORK/$TOP/include/uapi/linux/vfio.h" > "$GEN/linux/vfio.h"

SRC="$WORK/$TOP/tools/testing/selftests/iommu"
CFLAGS=(-Wall -O2 -Wno-unused-function -D_GNU_SOURCE= -D__user= -isystem "$GEN")
for t in iommufd iommufd_fail_nth; do
  echo "== cc $t"
  cc "${CFLAGS[@]}" -o "$SRC/$t" "$SRC/$t.c"
done

# Hugetlb cases need >= 64 free 2 MiB pages.
if [ -w /proc/sys/vm/nr_hugepages ] && [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 64 ]; then
  echo 64 > /proc/sys/vm/nr_hugepages || true
fi
echo "== hugepages: $(awk '/HugePages_Free/ {print $2}' /proc/meminfo) free"

"${CLI[@]}" build-shim >/dev/null
# The emulator reports the caller's real capabilities, as the kernel checks them.
capeff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
if [ -n "$capeff" ] && [ $(( 0x$capeff >> 24 & 1 )) = 0 ] && [[ " ${SELFTESTS_GRANT_CAPS:-} " != *" sys_resource "* ]]; then
  echo "note: this process lacks CAP_SYS_RESOURCE: iommufd.global_options (RLIMIT_MODE SET) fails with EPERM, as on a real kernel (SELFTESTS_GRANT_CAPS=sys_resource grants it in the emulator)"
fi
STATUS=0
TOTAL_PASS=0; TOTAL_FAIL=0; TOTAL_SKIP=0
for t in ${SELFTESTS_ONLY:-iommufd iommufd_fail_nth}; do
  echo "== running $t through iommufd-emu run --abi 6.12"
  LOG="$WORK/$t.log"
  set +e
  GRANT=()
  for c in ${SELFTESTS_GRANT_CAPS:-}; do GRANT+=(--grant-cap "$c"); done
  (cd "$SRC" && "${CLI[@]}" run --abi 6.12 "${GRANT[@]}" -- "./$t" "${EXTRA[@]}") >"$LOG" 2>"$WORK/$t.stderr"
  rc=$?
  set -e
  pass=$(grep -cE '^ok [0-9]+ ' "$LOG" | tr -d ' ' || true)
  skip=$(grep -cE '^ok [0-9]+ .*# SKIP' "$LOG" | tr -d ' ' || true)
  fail=$(grep -cE '^not ok [0-9]+ ' "$LOG" | tr -d ' ' || true)
  echo "$t: pass $((pass - skip)), fail $fail, skip $skip (exit $rc)"
  TOTAL_PASS=$((TOTAL_PASS + pass - skip)); TOTAL_FAIL=$((TOTAL_FAIL + fail)); TOTAL_SKIP=$((TOTAL_SKIP + skip))
  grep -E '^not ok [0-9]+ ' "$LOG" | sed 's/^/  /' || true
  [ "$KEEP" = 1 ] && echo "  log: $LOG"
  # Fail when the pass count drops below the floor recorded in the repo (raise it as it rises).
  floor=$(awk -v t="$t" '$1 == t {print $2}' "$ROOT/.ci/selftests-floor")
  if [ -n "$floor" ] && [ $((pass - skip)) -lt "$floor" ]; then
    echo "$t: $((pass - skip)) passed is below the recorded floor of $floor"
    STATUS=1
  fi
  if [ $((pass + fail)) = 0 ]; then
    echo "$t: the harness reported no case (exit $rc)"
    STATUS=1
  fi
done
echo "== total: pass $TOTAL_PASS, fail $TOTAL_FAIL, skip $TOTAL_SKIP"
echo "selftests: $TOTAL_PASS passed, $TOTAL_FAIL failed, $TOTAL_SKIP skipped"
exit $STATUS
