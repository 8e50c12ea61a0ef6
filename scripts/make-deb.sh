#!/usr/bin/env bash
# Builds the Debian packages (hbwatch, libhbwatch1, libhbwatch-dev) with dpkg-buildpackage and
# debian/, from a copy of the source tree (so no build directory of yours goes into them), and
# puts the .deb files in OUT_DIR (default: the top of the source tree).
#
#   scripts/make-deb.sh                  # then: apt install ./hbwatch_*.deb
#   scripts/make-deb.sh build/deb
#
# Needs no root (Rules-Requires-Root: no). Exit status: 0 built; 1 the build failed (its log
# is printed); 2 bad usage.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
[ $# -le 1 ] || { echo "usage: $0 [OUT_DIR]" >&2; exit 2; }
out=${1:-$top}
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
work=$(mktemp -d "${TMPDIR:-/tmp}/hbwatch-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The tree as it is, edits included, without what builds and tests leave in it.
tar -C "$top" --exclude-vcs --exclude='./build' --exclude='./build-*' --exclude='./Testing' --exclude='./.deps' \
    --exclude='./*.deb' --exclude='./*.buildinfo' --exclude='./*.changes' --exclude='./hbwatch-deb-*.log' -cf - . | { mkdir "$work/hbwatch-$version" && tar -C "$work/hbwatch-$version" -xf -; }
echo "make-deb: building hbwatch $version in $work" >&2
if ! (cd "$work/hbwatch-$version" && DEB_BUILD_OPTIONS="parallel=$(nproc) ${DEB_BUILD_OPTIONS:-}" \
        dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1); then
  tail -n 40 "$work/build.log" >&2
  cp "$work/build.log" "$out/hbwatch-deb-failed.log"
  echo "make-deb: dpkg-buildpackage failed; the whole log is $out/hbwatch-deb-failed.log" >&2
  exit 1
fi
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
for package in hbwatch libhbwatch1 libhbwatch-dev; do
  mv "$work/${package}_${version}_${arch}.deb" "$out/"
  echo "$out/${package}_${version}_${arch}.deb"
done
mv "$work"/hbwatch_"${version}"_"${arch}".buildinfo "$work"/hbwatch_"${version}"_"${arch}".changes "$out/" 2>/dev/null || true
