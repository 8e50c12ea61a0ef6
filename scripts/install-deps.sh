#!/usr/bin/env bash
# Installs the Debian packages hbwatch needs to build, test and demo. Idempotent, and silent
# when everything is already there.
set -euo pipefail

packages=(
  cmake make g++ clang pkg-config      # toolchain; clang for the second compiler and sanitizer builds
  libboost-dev                         # Boost.Interprocess (header-only)
  libspdlog-dev libfmt-dev             # logging in the tools
  libcli11-dev                         # argument parsing in the tools
  nlohmann-json3-dev                   # JSON output
  doctest-dev                          # unit tests
  libbenchmark-dev                     # benchmarks
  libclang-rt-14-dev                   # clang's sanitizer runtimes
  faketime                             # wall-clock step tests
  prometheus                           # promtool, to check the metrics output
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
