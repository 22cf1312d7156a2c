#!/usr/bin/env bash
# Print the path of Debian's linux-source tarball for kernel 6.12 or 7.3, fetching it
# if needed. Progress goes to stderr; the last stdout line is the tarball's path.
#
#   .ci/linux-source.sh 6.12   linux-source-6.12 from the machine's own apt sources (bookworm-security),
#                              pinned to 6.12.117-1~deb12u1 (LINUX_SOURCE_612_VERSION for another)
#   .ci/linux-source.sh 7.3    linux-source-7.3 from trixie-backports, through a private apt
#                              configuration (the machine's sources are not touched), pinned to
#                              7.3.4-1~bpo13+1: the version the recorded verdicts come from
#
# Environment:
#   LINUX_SOURCE_CACHE    where the private apt state and the unpacked package go
#                         (default /var/cache/iommufd-emu, else $TMPDIR)
#   LINUX_SOURCE_73_DEB   a linux-source-7.3_*.deb already at hand (no download)
#   LINUX_SOURCE_73_VERSION  another pin; "any" takes the suite's current version
#
# Fail-over: when the pinned version is gone from the archive (backports move on), the
# suite's current version is taken instead and a warning says which one was used; its
# tests may then differ from the recorded 7.3.4 verdicts, and the comparison says where.
set -euo pipefail
say() { echo "linux-source: $*" >&2; }
# Where the private apt state and unpacked packages go: $LINUX_SOURCE_CACHE, else
# /var/cache/iommufd-emu when writable, else $TMPDIR.
cache_base() {
  local base=${LINUX_SOURCE_CACHE:-}
  if [ -z "$base" ]; then
    base=/var/cache/iommufd-emu
    mkdir -p "$base" 2>/dev/null && [ -w "$base" ] || base=${TMPDIR:-/tmp}/iommufd-emu-cache
  fi
  echo "$base"
}

case ${1:-} in
  6.12)
    # Pinned to 6.12.117 (the recorded verdicts' kernel; 6.12.118 already changes iommufd:
    # GET_DIRTY_BITMAP fails with EPROTO on ranges that cut a dirty IOPTE). The installed
    # package is used when it is that version; otherwise the pinned .deb is fetched from the
    # machine's own apt sources (bookworm-security keeps older versions) and unpacked into the
    # cache, without installing it. Fail-over: the installed (or current) version, with a warning.
    PIN=${LINUX_SOURCE_612_VERSION:-6.12.117-1~deb12u1}
    inst=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || true)
    if [ "$inst" = "$PIN" ] && [ -f /usr/src/linux-source-6.12.tar.xz ]; then
      say "linux-source-6.12 $inst (pinned, installed)"
      echo /usr/src/linux-source-6.12.tar.xz
      exit 0
    fi
    base=$(cache_base)
    D=$base/linux-source-6.12
    T=$D/$PIN/usr/src/linux-source-6.12.tar.xz
    if [ ! -f "$T" ]; then
      mkdir -p "$D/debs"
      deb=$D/debs/linux-source-6.12_${PIN//:/%3a}_all.deb
      if [ ! -f "$deb" ]; then
        apt-get update >&2 || true
        (cd "$D/debs" && apt-get download "linux-source-6.12=$PIN" >&2) || true
      fi
      if [ -f "$deb" ]; then
        mkdir -p "$D/$PIN"
        dpkg-deb --fsys-tarfile "$deb" | tar -C "$D/$PIN" -x ./usr/src/linux-source-6.12.tar.xz
      fi
    fi
    if [ -f "$T" ]; then
      say "linux-source-6.12 $PIN (pinned)"
      echo "$T"
      exit 0
    fi
    say "WARNING: linux-source-6.12 $PIN cannot be fetched; failing over to the installed or current version: verdicts were recorded on 6.12.117"
    T=/usr/src/linux-source-6.12.tar.xz
    if [ ! -f "$T" ]; then
      apt-get update >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y linux-source-6.12 xz-utils >&2
    fi
    say "linux-source-6.12 $(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo '(version unknown)')"
    echo "$T"
    ;;
  7.3)
    PIN=${LINUX_SOURCE_73_VERSION:-7.3.4-1~bpo13+1}
    base=$(cache_base)
    D=$base/linux-source-7.3
    mkdir -p "$D"
    deb=${LINUX_SOURCE_73_DEB:-}
    if [ -z "$deb" ]; then
      want=$D/debs/linux-source-7.3_${PIN//:/%3a}_all.deb
      if [ "$PIN" != any ] && [ -f "$want" ]; then
        deb=$want
      else
        command -v dpkg-deb >/dev/null || { apt-get update >&2; apt-get install -y dpkg >&2; }
        A=$D/apt
        mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$D/debs"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main" \
          > "$A/sources.list"
        OPTS=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache" -o Debug::NoLocking=1)
        say "apt-get update (private configuration: trixie-backports)"
        apt-get "${OPTS[@]}" update >&2
        cd "$D/debs"
        if [ "$PIN" != any ] && apt-get "${OPTS[@]}" download "linux-source-7.3=$PIN" >&2; then
          :
        else
          [ "$PIN" != any ] && say "WARNING: linux-source-7.3 $PIN is no longer in trixie-backports; failing over to the suite's current version"
          apt-get "${OPTS[@]}" download linux-source-7.3 >&2
        fi
        deb=$(ls -t "$D"/debs/linux-source-7.3_*_all.deb | head -1)
        cd - >/dev/null
      fi
    fi
    ver=$(dpkg-deb -f "$deb" Version)
    if [ "$ver" = "${PIN}" ]; then say "linux-source-7.3 $ver (pinned)"
    else say "WARNING: using linux-source-7.3 $ver, not the pinned ${PIN}: verdicts were recorded on 7.3.4"; fi
    T=$D/$ver/usr/src/linux-source-7.3.tar.xz
    if [ ! -f "$T" ]; then
      mkdir -p "$D/$ver"
      dpkg-deb --fsys-tarfile "$deb" | tar -C "$D/$ver" -x ./usr/src/linux-source-7.3.tar.xz
    fi
    echo "$T"
    ;;
  *) echo "usage: $0 6.12|7.3" >&2; exit 2 ;;
esac
