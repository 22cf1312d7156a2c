#!/usr/bin/env bash
# Record the golden traces: native/golden/golden.c, built statically against the
# uAPI tables of one profile, run for a set of seeds on a real kernel in the
# oracle VM (../shared/oracle-vm, built with its build.sh); one compressed file
# per seed in .ci/golden/<profile>/, and a MANIFEST saying what produced them.
# src/server/golden.test.ts replays them through the shim and requires
# identical output.
#
#   scripts/record-golden.sh [--kver 6.12|7.3] [--calls N] [--seeds "1 2 3"]
#
# Environment: ORACLE_VM (default ../shared/oracle-vm next to the repository,
# else /work/shared/oracle-vm), ORACLE_DIR (as run.sh), CC (gcc).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
KVER=6.12
CALLS=3000
SEEDS=$(seq -s ' ' 1 20)
while [ $# -gt 0 ]; do
    case $1 in
        --kver) KVER=$2; shift 2 ;;
        --calls) CALLS=$2; shift 2 ;;
        --seeds) SEEDS=$2; shift 2 ;;
        *) echo "usage: $0 [--kver 6.12|7.3] [--calls N] [--seeds \"1 2 3\"]" >&2; exit 2 ;;
    esac
done
case $KVER in
    6.12) PROFILE=6.12 ;;
    7.3) PROFILE=7.3 ;;
    *) echo "--kver must be 6.12 or 7.3" >&2; exit 2 ;;
esac
VM=${ORACLE_VM:-$HERE/../shared/oracle-vm}
[ -x "$VM/run.sh" ] || VM=/work/shared/oracle-vm
[ -x "$VM/run.sh" ] || { echo "no oracle-vm (set ORACLE_VM)" >&2; exit 1; }
[ -f "$HERE/dist/uapi/ctables.js" ] || (cd "$HERE" && npm run -s build)

T=$(mktemp -d /tmp/record-golden.XXXXXX)
trap 'rm -rf "$T"' EXIT
node "$HERE/dist/uapi/ctables.js" "$T/inc" "$PROFILE" >/dev/null
${CC:-gcc} -static -O2 -Wall -I "$T/inc" -o "$T/golden" "$HERE/native/golden/golden.c"
echo "== running $SEEDS x $CALLS calls on the $KVER oracle" >&2
# no5lvl: QEMU's TCG CPU (-cpu max) has 5-level paging, so user space would end at 2^56
# and access_ok() would accept ranges that a 4-level machine (and the emulator, whose
# TASK_SIZE_MAX is 2^47 - 4096) refuses with EFAULT.
CMDLINE="no5lvl ${ORACLE_CMDLINE:-}"
ORACLE_CMDLINE=$CMDLINE ORACLE_KVER=$KVER ORACLE_TIMEOUT=${ORACLE_TIMEOUT:-1800} "$VM/run.sh" "$T/golden" -- -m "$CALLS" $SEEDS \
    > "$T/out.txt" 2> "$T/err.txt" || true
cat "$T/err.txt" >&2
tail -1 "$T/out.txt" | grep -qx 'oracle-exit: 0' || { echo "oracle run failed: $(tail -1 "$T/out.txt")" >&2; exit 1; }
KREL=$(sed -n 's/.*kernel \([^ ,]*\).*/\1/p' "$T/err.txt" | head -1)
[ -n "$KREL" ] || KREL=unknown

OUT=$HERE/.ci/golden/$PROFILE
rm -rf "$OUT"
mkdir -p "$OUT"
sed '$d' "$T/out.txt" | tr -d '\r' | awk -v dir="$T/split" '
    BEGIN { system("mkdir -p " dir) }
    /^== seed / { f = sprintf("%s/seed-%03d.txt", dir, $3); next }
    f { print > f }'
n=0
for f in "$T"/split/seed-*.txt; do
    tail -1 "$f" | grep -q '^end seed=' || { echo "$(basename "$f"): incomplete (child died?)" >&2; exit 1; }
    gzip -n -9 < "$f" > "$OUT/$(basename "$f").gz"
    n=$((n + $(wc -l < "$f") - 2))
done
PROG_SHA=$(cat "$HERE/native/golden/golden.c" "$T/inc/iommufd_uapi_tables.h" | sha256sum | cut -c1-16)
cat > "$OUT/MANIFEST" <<M
kernel $KREL
cmdline $CMDLINE
profile $PROFILE
calls $CALLS
seeds $SEEDS
program $PROG_SHA
recorded $(date -u +%Y-%m-%d) with scripts/record-golden.sh --kver $KVER
M
echo "== $n calls recorded on $KREL into $OUT" >&2
