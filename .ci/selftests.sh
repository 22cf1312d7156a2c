#!/usr/bin/env bash
# Conformance run (spec 05): build a kernel's iommufd selftests from Debian's
# linux-source package in a temporary directory OUTSIDE the repository (nothing
# from the kernel package is ever copied into the project), against C headers
# generated from our uAPI table for that kernel's profile, then run both
# binaries unmodified through `iommufd-emu run --abi PROFILE` and compare every
# case with the verdict the real kernel gave (.ci/selftests-expected/, recorded
# with ../shared/oracle-vm): same verdict, and for a failure the same failing
# check (file:line). Any disagreement fails the run, naming the case. Then each
# iommufd_fail_nth case's sweep length must be within 10% of the kernel's
# (scripts/failnth-sweeps.sh, .ci/failnth-sweeps/KVER.tsv).
#
#   .ci/selftests.sh [--kernel 6.12|7.3] [--keep] [-- extra kselftest args, e.g. -r FIXTURE.VARIANT.TEST]
#
# --kernel 6.12 (default): linux-source-6.12 (6.12.117-1~deb12u1) under `--abi 6.12`, verdicts of 6.12.117.
# --kernel 7.3: linux-source-7.3 7.3.4-1~bpo13+1 from trixie-backports (.ci/linux-source.sh: pinned,
#   failing over to the suite's current version with a warning) under `--abi 7.3`, verdicts of 7.3.4.
#
# Environment: SELFTESTS_ONLY=iommufd|iommufd_fail_nth runs just one binary.
# The kernel checks the caller's capabilities (iommufd.global_options needs
# CAP_SYS_RESOURCE), so the expected verdicts depend on them: there is one
# recording per environment (root with every capability; root without
# CAP_SYS_RESOURCE, as in containers that drop it), and the one matching the
# capabilities the emulator will see is used. SELFTESTS_GRANT_CAPS="sys_resource ..."
# makes the emulator treat the tests as having those capabilities (then the
# recording of the environment with them applies).
# The tests run with stdin on /dev/null, as in the oracle VM where the verdicts
# were recorded (7.3.4's dma-buf tests end up using fd 0, see src/core/dmabuf.ts).
# With extra kselftest args (a subset of cases), only the cases run are compared.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEEP=0
KVER=6.12
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift ;;
    --kernel) KVER=${2:-}; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: $0 [--kernel 6.12|7.3] [--keep] [-- kselftest args]" >&2; exit 2 ;;
  esac
done
case "$KVER" in
  6.12) ABI=6.12; KNAME=6.12.117 ;;
  7.3) ABI=7.3; KNAME=7.3.4 ;;
  *) echo "selftests: unknown kernel '$KVER' (6.12 or 7.3)" >&2; exit 2 ;;
esac

apt_updated=
need() { # need PACKAGE...
  if [ -z "$apt_updated" ]; then apt-get update; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
command -v cc >/dev/null || need gcc libc6-dev
command -v xz >/dev/null || need xz-utils
TARBALL=$(bash "$ROOT/.ci/linux-source.sh" "$KVER" | tail -1)

WORK=$(mktemp -d /tmp/iommufd-selftests.XXXXXX)
if [ "$KEEP" = 1 ]; then echo "work dir: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi

TOP=linux-source-$KVER
MEMBERS=(
  "$TOP/tools/testing/selftests/iommu/iommufd.c"
  "$TOP/tools/testing/selftests/iommu/iommufd_utils.h"
  "$TOP/tools/testing/selftests/iommu/iommufd_fail_nth.c"
  "$TOP/tools/testing/selftests/*.h"
  "$TOP/drivers/iommu/iommufd/iommufd_test.h"
  "$TOP/include/uapi/linux/vfio.h"
)
echo "== extracting ${#MEMBERS[@]} members from $TARBALL"
tar -C "$WORK" -xJf "$TARBALL" --wildcards "${MEMBERS[@]}"

echo "== building the emulator and generating $ABI headers"
(cd "$ROOT" && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npx tsc -p . >/dev/null || true)
CLI=(node "$ROOT/dist/cli/main.js")
GEN="$WORK/gen"
"${CLI[@]}" headers --abi "$ABI" "$GEN" >/dev/null
# The tests include the mock header by a relative path: replace it in place.
cp "$GEN/iommufd_test.h" "$WORK/$TOP/drivers/iommu/iommufd/iommufd_test.h"
# vfio.h from the same tree, exported the way the kernel's header export does.
sed -e 's/\b__user\b//g' -e 's/ __counted_by([a-z_]*)//g' "$WORK/$TOP/include/uapi/linux/vfio.h" > "$GEN/linux/vfio.h"

SRC="$WORK/$TOP/tools/testing/selftests/iommu"
CFLAGS=(-Wall -O2 -Wno-unused-function -D_GNU_SOURCE= -D__user= -isystem "$GEN" -I "$WORK/$TOP/tools/testing/selftests")
LIBS=()
# The 7.3 tests drop CAP_IPC_LOCK with libcap.
if grep -q 'sys/capability.h' "$SRC/iommufd.c" "$SRC/iommufd_utils.h"; then
  [ -f /usr/include/sys/capability.h ] || need libcap-dev
  LIBS=(-lcap)
fi
for t in iommufd iommufd_fail_nth; do
  echo "== cc $t"
  # From inside the directory, as the selftests' make does: failures then name `iommufd.c:LINE`.
  (cd "$SRC" && cc "${CFLAGS[@]}" -o "$t" "$t.c" "${LIBS[@]}")
done

# Hugetlb cases need >= 64 free 2 MiB pages.
if [ -w /proc/sys/vm/nr_hugepages ] && [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 64 ]; then
  echo 64 > /proc/sys/vm/nr_hugepages || true
fi
echo "== hugepages: $(awk '/HugePages_Free/ {print $2}' /proc/meminfo) free"

"${CLI[@]}" build-shim >/dev/null

# Which recorded environment applies: the capabilities the emulator will see.
capeff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
has_cap() { # has_cap NAME BIT
  [[ " ${SELFTESTS_GRANT_CAPS:-} " == *" $1 "* ]] && return 0
  [ -n "$capeff" ] && [ $(( 0x$capeff >> $2 & 1 )) = 1 ]
}
missing=()
[ "$(id -u)" = 0 ] || missing+=(root)
has_cap ipc_lock 14 || missing+=(ipc_lock)
has_cap sys_rawio 17 || missing+=(sys_rawio)
has_cap sys_resource 24 || missing+=(sys_resource)
case "${missing[*]:-}" in
  "") ENVNAME=$KVER-root ;;
  sys_resource) ENVNAME=$KVER-root-no-sys-resource
    echo "note: no CAP_SYS_RESOURCE here: iommufd.global_options fails with EPERM, as on the real kernel in this environment (SELFTESTS_GRANT_CAPS=sys_resource grants it in the emulator)" ;;
  *) echo "selftests: no kernel recording for an environment without: ${missing[*]} (run as root; see .ci/selftests-expected/)" >&2
     exit 1 ;;
esac
EXPECTED="$ROOT/.ci/selftests-expected/$ENVNAME.tsv"
echo "== expected verdicts: $EXPECTED"

STATUS=0
TOTAL_AGREE=0; TOTAL_CASES=0
for t in ${SELFTESTS_ONLY:-iommufd iommufd_fail_nth}; do
  echo "== running $t through iommufd-emu run --abi $ABI"
  LOG="$WORK/$t.log"
  set +e
  GRANT=()
  for c in ${SELFTESTS_GRANT_CAPS:-}; do GRANT+=(--grant-cap "$c"); done
  # stdout and stderr in one stream, as the harness interleaves them (failed checks go to stderr).
  (cd "$SRC" && "${CLI[@]}" run --abi "$ABI" "${GRANT[@]}" -- "./$t" "${EXTRA[@]}") >"$LOG" 2>&1 </dev/null
  rc=$?
  set -e
  pass=$(grep -cE '^ok [0-9]+ ' "$LOG" | tr -d ' ' || true)
  skip=$(grep -cE '^ok [0-9]+ .*# SKIP' "$LOG" | tr -d ' ' || true)
  fail=$(grep -cE '^not ok [0-9]+ ' "$LOG" | tr -d ' ' || true)
  echo "$t: pass $((pass - skip)), fail $fail, skip $skip (exit $rc)"
  [ "$KEEP" = 1 ] && echo "  log: $LOG"
  if [ $((pass + fail)) = 0 ]; then
    echo "$t: the harness reported no case (exit $rc)"
    STATUS=1
    continue
  fi
  EXP="$EXPECTED"
  if [ ${#EXTRA[@]} -gt 0 ]; then
    # A subset was asked for: compare only the cases that ran.
    EXP="$WORK/$t.expected"
    grep -E '^#' "$EXPECTED" >"$EXP"
    node "$ROOT/dist/conformance/verdicts.js" record "$t" "$LOG" | cut -f2 | while read -r c; do
      awk -F'\t' -v b="$t" -v c="$c" '$1 == b && $2 == c' "$EXPECTED"
    done >>"$EXP"
  fi
  set +e
  out=$(node "$ROOT/dist/conformance/verdicts.js" compare "$EXP" "$t" "$LOG")
  crc=$?
  set -e
  echo "$out"
  agree=$(echo "$out" | sed -n 's/^.*: \([0-9]*\) of \([0-9]*\) cases agree.*$/\1 \2/p')
  TOTAL_AGREE=$((TOTAL_AGREE + ${agree%% *})); TOTAL_CASES=$((TOTAL_CASES + ${agree##* }))
  [ "$crc" = 0 ] || STATUS=1
done
echo "selftests: $TOTAL_AGREE of $TOTAL_CASES cases agree with the real $KNAME kernel ($ENVNAME)"

# Fault injection as the kernel has it: each iommufd_fail_nth case's sweep length (how many
# failure points its calls pass) within 10% of the real kernel's (.ci/failnth-sweeps/KVER.tsv).
if [[ " ${SELFTESTS_ONLY:-iommufd iommufd_fail_nth} " == *" iommufd_fail_nth "* ]] && [ ${#EXTRA[@]} -eq 0 ]; then
  echo "== fail_nth sweep lengths against the real $KNAME kernel's"
  bash "$ROOT/scripts/failnth-sweeps.sh" --abi "$ABI" --binary "$SRC/iommufd_fail_nth" \
    --expected "$ROOT/.ci/failnth-sweeps/$KVER.tsv" || { echo "selftests: a fail_nth sweep is not within 10% of $KNAME's"; STATUS=1; }
fi
exit $STATUS
