#!/usr/bin/env bash
# Build the kernel's iommufd selftests (iommufd, iommufd_fail_nth) from Debian's
# linux-source-6.12 package against headers generated from our uAPI tables
# (spec 05 §1). Nothing from the kernel tarball is written into the repository:
# sources are extracted into a scratch directory.
#
#   scripts/build-selftests.sh <out-dir>
#
# Environment:
#   PROFILE         ABI profile for the generated headers (default 6.12)
#   LINUX_TARBALL   kernel source tarball (default /usr/src/linux-source-6.12.tar.xz,
#                   from `apt-get install linux-source-6.12 xz-utils`)
#   LINUX_SRC       alternatively, an unpacked kernel tree to copy the same files from
#   WORK            scratch directory (default: a fresh mktemp -d, removed on exit)
#   LINUX_TOP       top directory inside the tarball (default: tarball name without .tar.xz)
#   CC              compiler (default cc)
#   WERROR=1        add -Werror
set -euo pipefail

out=${1:?usage: $0 <out-dir>}
profile=${PROFILE:-6.12}
tarball=${LINUX_TARBALL:-/usr/src/linux-source-6.12.tar.xz}
cc=${CC:-cc}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ -z ${LINUX_SRC:-} && ! -f $tarball ]]; then
  echo "build-selftests: $tarball not found (apt-get install linux-source-6.12 xz-utils, or set LINUX_SRC)" >&2
  exit 2
fi
command -v "$cc" >/dev/null || { echo "build-selftests: no C compiler '$cc'" >&2; exit 2; }

if [[ -n ${WORK:-} ]]; then
  work=$WORK; mkdir -p "$work"
else
  work=$(mktemp -d -t iommufd-selftests.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi

# The tarball's top directory.
top=${LINUX_TOP:-$(basename "$tarball" .tar.xz)}
members=(
  tools/testing/selftests/iommu/iommufd.c
  tools/testing/selftests/iommu/iommufd_utils.h
  tools/testing/selftests/iommu/iommufd_fail_nth.c
  tools/testing/selftests/kselftest_harness.h
  tools/testing/selftests/kselftest.h
  drivers/iommu/iommufd/iommufd_test.h
  include/uapi/linux/vfio.h
)
if [[ -n ${LINUX_SRC:-} ]]; then
  top=linux
  for m in "${members[@]}"; do
    mkdir -p "$work/$top/$(dirname "$m")"
    cp "$LINUX_SRC/$m" "$work/$top/$m"
  done
else
  tar -xJf "$tarball" -C "$work" "${members[@]/#/$top/}"
fi
src=$work/$top

# Generated headers: linux/iommufd.h into our include dir; iommufd_test.h over the
# extracted one, because the tests reach it by a relative path.
[[ -f $repo/dist/uapi/cheader.js ]] || (cd "$repo" && npx tsc -p . >/dev/null || true)
inc=$work/include
node "$repo/dist/uapi/cheader.js" "$inc" "$profile" --check >/dev/null
# Re-check every offset/size/value of the table with the compiler before using the headers.
"$cc" -fsyntax-only -isystem "$inc" -I "$inc" "$inc/iommufd_layout_check.c"
cp "$inc/iommufd_test.h" "$src/drivers/iommu/iommufd/iommufd_test.h"
# The raw uAPI vfio.h still carries __user annotations; the export step would strip them.
sed -e 's/\b__user\b//g' "$src/include/uapi/linux/vfio.h" > "$inc/linux/vfio.h"

flags=(-Wall -O2 -Wno-unused-function -D_GNU_SOURCE= -D__user= -isystem "$inc")
[[ ${WERROR:-0} == 1 ]] && flags+=(-Werror)

mkdir -p "$out"
status=0
for t in iommufd iommufd_fail_nth; do
  if "$cc" "${flags[@]}" -o "$out/$t" "$src/tools/testing/selftests/iommu/$t.c"; then
    echo "built $out/$t"
  else
    echo "FAILED to build $t" >&2
    status=1
  fi
done
exit $status
