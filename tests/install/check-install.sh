#!/usr/bin/env bash
# Installs the build into a scratch prefix, then builds and runs a small service against it
# twice: with CMake's find_package(hbwatch) and with pkg-config.
set -euo pipefail
build_dir=$1
cxx=${2:-c++}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
if [ ! -w "$build_dir" ]; then
  echo "SKIPPED: needs write access to $build_dir (cmake --install writes install_manifest.txt there)"
  exit 0
fi

cmake --install "$build_dir" --prefix "$prefix" >/dev/null
test -f "$prefix/include/hbwatch/heartbeat.h"
test -f "$prefix/include/hbwatch/hbwatch.h"
test -f "$prefix/lib/pkgconfig/hbwatch.pc"
test -f "$prefix/lib/cmake/hbwatch/hbwatchConfig.cmake"
ls "$prefix"/lib/libhbwatch.* >/dev/null

echo "== only the service author's headers"
installed=$(cd "$prefix/include/hbwatch" && ls | tr '\n' ' ')
if [ "$installed" != "error.h export.h hbwatch.h heartbeat.h options.h " ]; then
  echo "installed headers: $installed; expected error.h export.h hbwatch.h heartbeat.h options.h" >&2
  exit 1
fi

echo "== only deliberate exports"
# Every symbol libhbwatch exports, against the list a change to the API must update.
exported=$(nm -DC --defined-only "$prefix"/lib/libhbwatch.so | cut -d' ' -f2- | sort -u)
if ! diff -u "$here/exported-symbols.txt" - <<<"$exported"; then
  echo "libhbwatch exports differ from tests/install/exported-symbols.txt (+ lines are new exports): mark the" \
       "API with HBWATCH_API and public/src/exports.map, or hide what is not API" >&2
  exit 1
fi

export HBWATCH_KEY=$(printf '0x48E%05x' $(( $$ & 0xFFFFF )))
cleanup_key() { ipcrm -M "$HBWATCH_KEY" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup_key EXIT

echo "== find_package(hbwatch)"
cmake -S "$here/consumer" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CXX_COMPILER="$cxx" >/dev/null
cmake --build "$work/cmake-build" >/dev/null
"$work/cmake-build/consumer"

echo "== pkg-config hbwatch"
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" "$cxx" -std=c++20 "$here/consumer/consumer.cpp" -o "$work/consumer-pc" \
  $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs hbwatch)
"$work/consumer-pc"
