#!/usr/bin/env bash
# Sweep length of every iommufd_fail_nth case through the shim (the largest fail-nth value
# the test arms before its run succeeds untouched), next to the real kernel's (recorded
# the same way on the oracle VM, .ci/failnth-sweeps/KVER.tsv), and whether each is within
# 10% of the kernel's.
#
#   scripts/failnth-sweeps.sh --abi 7.3 --binary DIR/iommufd_fail_nth [--expected FILE]
#
# Exit status 1 when a case is outside 10% (or did not run). Recording on the kernel:
#   gcc -shared -fPIC -O2 -o failnth_count.so native/oracle/failnth_count.c -ldl
#   gcc -O2 -o failnth_launch native/oracle/failnth_launch.c
#   ORACLE_KVER=7.3 ../shared/oracle-vm/run.sh ./failnth_launch iommufd_fail_nth failnth_count.so
# then the same awk as below over its output.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ABI=7.3
BIN=
EXP=
while [ $# -gt 0 ]; do
  case "$1" in
    --abi) ABI=$2; shift 2 ;;
    --binary) BIN=$2; shift 2 ;;
    --expected) EXP=$2; shift 2 ;;
    *) echo "usage: $0 --abi PROFILE --binary PATH [--expected FILE]" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "no iommufd_fail_nth at '$BIN'" >&2; exit 2; }
EXP=${EXP:-$ROOT/.ci/failnth-sweeps/$ABI.tsv}
W=$(mktemp -d /tmp/iommufd-sweeps.XXXXXX)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
cc -shared -fPIC -O2 -o "$W/failnth_count.so" "$ROOT/native/oracle/failnth_count.c" -ldl
CLI=(node "$ROOT/dist/cli/main.js")
SHIM=$("${CLI[@]}" build-shim | tail -1)
"${CLI[@]}" serve --socket "$W/sock" --abi "$ABI" >"$W/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do [ -S "$W/sock" ] && break; sleep 0.1; done
mkdir -p "$W/debugfs"
# The counter before the shim: it sees the test's pwrite of the fail-nth value, then the shim emulates it.
(cd "$(dirname "$BIN")" && env LD_PRELOAD="$W/failnth_count.so $SHIM" IOMMUFD_EMU_SOCKET="$W/sock" \
  IOMMUFD_EMU_DEBUGFS="$W/debugfs" "./$(basename "$BIN")" </dev/null >"$W/run.log" 2>&1) || true
awk '/^#  RUN/ {t=$3; m=0} /^NTH/ {if ($2 > m) m = $2} /^# +(OK|FAIL)/ && t {print t "\t" m; t=""}' "$W/run.log" >"$W/emu.tsv"
status=0
printf '%-36s %7s %8s %7s  %s\n' case kernel emulator diff within-10%
while IFS=$'\t' read -r name want; do
  case "$name" in ''|\#*) continue ;; esac
  got=$(awk -F'\t' -v n="$name" '$1 == n {print $2}' "$W/emu.tsv")
  ok=no
  if [ -n "$got" ] && awk -v a="$got" -v b="$want" 'BEGIN {d = a - b; if (d < 0) d = -d; exit !(d * 10 <= b)}'; then ok=yes; fi
  [ "$ok" = yes ] || status=1
  diff=$([ -n "$got" ] && awk -v a="$got" -v b="$want" 'BEGIN {printf "%+.1f%%", (a - b) * 100 / b}' || echo -)
  printf '%-36s %7s %8s %7s  %s\n' "$name" "$want" "${got:-not run}" "$diff" "$ok"
done <"$EXP"
exit $status
