#!/usr/bin/env bash
# Installs the Debian packages hbwatch needs to build, test and demo, and promtool (for the
# Prometheus output test) into .deps/bin without installing or starting a Prometheus server.
# Idempotent, and silent when everything is already there.
#
#   scripts/install-deps.sh          # everything: build, tests, benchmarks, demo
#   scripts/install-deps.sh build    # only what building the library, the tools and the demo needs
#   scripts/install-deps.sh deb      # what building and checking the Debian packages needs (make deb)
#   scripts/install-deps.sh --bench  # everything, and the peers bench_peers compares procctl with:
#                                    # runit, s6 and supervisor, installed but never run as services
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
bench=no
if [ "$what" = --bench ]; then what=all; bench=yes; fi

packages=(
  cmake make g++ pkg-config            # toolchain
  libboost-dev                         # Boost.Interprocess (header-only): the library's only dependency
  libspdlog-dev libfmt-dev             # logging in the tools
  libcli11-dev                         # argument parsing in the tools
  nlohmann-json3-dev                   # JSON output
  libyaml-cpp-dev                      # the stack supervisor's config (YAML, which also reads JSON)
  libssl-dev                           # TLS and token digests for the control API over TCP
  scdoc                                # the man pages, from doc/man/*.scd
)
if [ "$what" = all ]; then
  packages+=(
    clang libclang-rt-14-dev           # the second compiler, and its sanitizer runtimes
    doctest-dev                        # unit tests
    libbenchmark-dev                   # benchmarks
    faketime                           # wall-clock step tests
    curl                               # a real client of the stack's control socket
    openssl                            # test certificates for the TLS listener
    chromium                           # the status page, rendered headless
    python3                            # drives Chromium's DevTools pipe to press the page's buttons
    systemd libsystemd-dev             # sd_notify's real clients: systemd-notify, and libsystemd
    elfutils                           # eu-stack: user-space stacks for checkproc --diagnose user
  )
fi
if [ "$what" = all ] || [ "$what" = deb ]; then
  packages+=(
    debhelper dpkg-dev lintian         # make deb, and the package's checks
    build-essential                    # dpkg-buildpackage insists on it
    man-db                             # lexgrog and man --warnings on the man pages
  )
fi

bench_peers=(runit s6 supervisor)      # bench_peers: runsv, s6-supervise, supervisord
[ "$bench" = yes ] && packages+=("${bench_peers[@]}")

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
  # The peers' packages would start supervisord and runsvdir as services: policy-rc.d says no
  # while installing (and they are disabled after), as for any package installed in a chroot.
  # One the host already has is put aside meanwhile, and put back however this ends.
  guard=""
  if [ "$bench" = yes ]; then
    guard=/usr/sbin/policy-rc.d
    saved=$guard.install-deps-saved
    [ -e "$guard" ] && run_as_root mv "$guard" "$saved"
    trap 'run_as_root rm -f "$guard"; [ -e "$saved" ] && run_as_root mv "$saved" "$guard"' EXIT
    trap 'exit 130' INT TERM
    printf '#!/bin/sh\n# install-deps.sh --bench: no service starts while it installs\nexit 101\n' | run_as_root tee "$guard" >/dev/null
    run_as_root chmod 755 "$guard"
  fi
  run_as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ "$bench" = yes ] && [ -d /run/systemd/system ]; then
    run_as_root systemctl disable --now supervisor.service runit.service >/dev/null 2>&1 || true
  fi
  echo "install-deps: done" >&2
fi

# promtool, Prometheus, Alertmanager and amtool come in packages whose install starts a server: take the
# binaries out of the packages instead (tests start their own on loopback ports).
extract() {  # PACKAGE FILE_IN_PACKAGE DESTINATION (under .deps/bin, or an absolute path)
  local to=$3
  [ "${to#/}" = "$to" ] && to=.deps/bin/$to
  [ -e "$to" ] && return 0
  echo "install-deps: extracting $2 from Debian's $1 package into $to" >&2
  local work
  work=$(mktemp -d)
  if ! (cd "$work" && apt-get download "$1" >/dev/null 2>&1); then
    run_as_root apt-get update -q >/dev/null
    (cd "$work" && apt-get download "$1")
  fi
  dpkg-deb -x "$work"/"$1"_*.deb "$work/root"
  local as=()
  [ "${3#/}" = "$3" ] || as=(run_as_root)
  "${as[@]}" mkdir -p "$(dirname "$to")"
  "${as[@]}" cp "$work/root/$2" "$to"
  rm -rf "$work"
}
if [ "$what" = all ]; then
  extract prometheus usr/bin/promtool promtool
  extract prometheus usr/bin/prometheus prometheus  # the real server that scrapes procctl in test_http
  extract prometheus-alertmanager usr/bin/prometheus-alertmanager alertmanager
  extract prometheus-alertmanager usr/bin/amtool amtool
  # Debian's Alertmanager reads its notification templates from this fixed path (a Debian
  # patch; there is no flag for it), and will not start without them: the package's own files,
  # put where the package puts them.
  extract prometheus-alertmanager usr/share/prometheus/alertmanager/default.tmpl /usr/share/prometheus/alertmanager/default.tmpl
  extract prometheus-alertmanager usr/share/prometheus/alertmanager/email.tmpl /usr/share/prometheus/alertmanager/email.tmpl
fi
