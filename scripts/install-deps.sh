#!/usr/bin/env bash
# Installs the Debian packages hbwatch needs to build, test and demo, and promtool (for the
# Prometheus output test) into .deps/bin without installing or starting a Prometheus server.
# Idempotent, and silent when everything is already there.
#
#   scripts/install-deps.sh          # everything: build, tests, benchmarks, demo
#   scripts/install-deps.sh build    # only what building the library, the tools and the demo needs
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}

packages=(
  cmake make g++ pkg-config            # toolchain
  libboost-dev                         # Boost.Interprocess (header-only): the library's only dependency
  libspdlog-dev libfmt-dev             # logging in the tools
  libcli11-dev                         # argument parsing in the tools
  nlohmann-json3-dev                   # JSON output
  libyaml-cpp-dev                      # the stack supervisor's config (YAML, which also reads JSON)
)
if [ "$what" = all ]; then
  packages+=(
    clang libclang-rt-14-dev           # the second compiler, and its sanitizer runtimes
    doctest-dev                        # unit tests
    libbenchmark-dev                   # benchmarks
    faketime                           # wall-clock step tests
    curl                               # a real client of the stack's control socket
  )
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

run_as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else
    echo "install-deps: these packages are missing: ${missing[*]}" >&2
    echo "install-deps: run this script as root (or install sudo), or install them yourself: apt-get install ${missing[*]}" >&2
    exit 1
  fi
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]} (from Debian's archive; this takes a few minutes on a fresh machine)" >&2
  export DEBIAN_FRONTEND=noninteractive
  echo "install-deps: apt-get update" >&2
  run_as_root apt-get update -q
  run_as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  echo "install-deps: done" >&2
fi

# promtool comes in the prometheus package, whose install starts a server: take the binary
# out of the package instead.
if [ "$what" = all ] && [ ! -x .deps/bin/promtool ]; then
  echo "install-deps: extracting promtool from Debian's prometheus package into .deps/bin" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
    run_as_root apt-get update -q >/dev/null
    (cd "$work" && apt-get download prometheus)
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p .deps/bin
  cp "$work/root/usr/bin/promtool" .deps/bin/promtool
fi
