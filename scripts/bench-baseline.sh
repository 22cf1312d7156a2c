#!/usr/bin/env bash
# Build REF (a commit without the trace bus, e.g. the one before it landed) in a
# temporary directory and run `npm run bench` with IOMMUFD_BENCH_BASELINE set to
# it: the bus rows then compare this tree with REF in the same run.
#   scripts/bench-baseline.sh REF
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${1:?usage: scripts/bench-baseline.sh GIT-REF}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
git archive "$ref" | tar -x -C "$dir"
ln -s "$PWD/node_modules" "$dir/node_modules"
(cd "$dir" && npx tsc -p .)
IOMMUFD_BENCH_BASELINE="$dir" npm run bench
