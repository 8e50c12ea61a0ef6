#!/usr/bin/env bash
# Builds the Debian packages (scripts/make-deb.sh), runs lintian on them, then installs them into
# a scratch root with dpkg, as apt would on a real host: an overlay of this host's /usr, /etc and
# /var (what is written goes to a scratch directory; the host is left as it was), chrooted, in a
# private mount namespace. There it checks the files, the conffile, pkg-config, the units
# (systemd-analyze verify), procctl --check on the shipped stack.yaml, the man pages and the
# completion; then that removal leaves only the conffile, and that purge removes it.
#
#   tests/package/check-package.sh SOURCE_DIR WORK_DIR
#   HBWATCH_DEBS=DIR tests/package/check-package.sh SOURCE_DIR WORK_DIR   # packages built already
set -euo pipefail
top=$(cd "$1" && pwd)
work=$2
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIPPED: needs root (dpkg installs into a chroot, made of overlay mounts)"
  exit 0
fi
for tool in dpkg-buildpackage dh lintian scdoc lexgrog; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done
rm -rf "$work"
mkdir -p "$work/out"

if [ -n "${HBWATCH_DEBS:-}" ]; then
  cp "$HBWATCH_DEBS"/*.deb "$work/out/"
else
  echo "== make-deb"
  # At the lowest priority: the suite beside it has timing tests.
  TMPDIR=$work nice -n 19 "$top/scripts/make-deb.sh" "$work/out"
fi
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
debs=()
for package in hbwatch libhbwatch1 libhbwatch-dev; do debs+=("$work/out/${package}_${version}_${arch}.deb"); done

echo "== lintian (every tag, pedantic ones too; overrides are explained in debian/*.lintian-overrides)"
lintian --pedantic --display-info --fail-on error,warning,info,pedantic "${debs[@]}"

echo "== no file outside /usr, /etc and the unit directory"
for deb in "${debs[@]}"; do
  outside=$(dpkg-deb -c "$deb" | awk '{print $6}' | grep -v -E '^\./$|^\./(usr|etc)/|^\./lib/$|^\./lib/systemd/(system/)?' || true)
  [ -z "$outside" ] || { echo "$(basename "$deb") puts files outside the FHS places: $outside" >&2; exit 1; }
done

echo "== the library package is named after its SONAME"
dpkg-deb -x "${debs[1]}" "$work/lib1"
soname=$(objdump -p "$work/lib1/usr/lib/$multiarch/libhbwatch.so.1" | awk '/SONAME/ {print $2}')
[ "$soname" = libhbwatch.so.1 ] || { echo "libhbwatch1 ships a library whose SONAME is '$soname'" >&2; exit 1; }
dpkg-deb -I "${debs[1]}" symbols | grep -q '^libhbwatch.so.1 libhbwatch1' || { echo "libhbwatch1 has no symbols file" >&2; exit 1; }
dpkg-deb -f "${debs[0]}" Depends | grep -q 'libyaml-cpp' || { echo "hbwatch's Depends lack the shared libraries it links" >&2; exit 1; }

# The rest runs in a private mount namespace: every mount below ends with it.
cp "${debs[@]}" "$work/"
cp -r "$top/tests/install/consumer" "$work/consumer"
export work multiarch
unshare --mount --propagation private bash -euo pipefail -c '
  root=$work/root
  mkdir -p "$root"
  for d in usr etc var; do
    mkdir -p "$work/upper/$d" "$work/scratch/$d" "$root/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$work/upper/$d,workdir=$work/scratch/$d" "$root/$d"
  done
  for link in bin sbin lib lib64; do [ -L "/$link" ] && ln -s "usr/$link" "$root/$link"; done
  mkdir -p "$root/proc" "$root/dev" "$root/tmp" "$root/run" "$root/root" "$root/sys"
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs tmpfs "$root/tmp"
  mount -t tmpfs tmpfs "$root/run"
  cp "$work"/*.deb "$root/tmp/"
  cp -r "$work/consumer" "$root/tmp/consumer"
  in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
  # Whatever of hbwatch this host has installed is not what is tested.
  in_root dpkg --purge hbwatch libhbwatch-dev libhbwatch1 >/dev/null 2>&1 || true

  echo "== dpkg -i"
  in_root dpkg -i $(cd "$root/tmp" && ls hbwatch_*.deb libhbwatch1_*.deb libhbwatch-dev_*.deb | sed "s|^|/tmp/|")
  for f in /usr/bin/procctl /usr/bin/checkproc /usr/bin/proctab /etc/hbwatch/stack.yaml \
           /lib/systemd/system/hbwatch-stack.service /lib/systemd/system/hbwatch-stack@.service /lib/systemd/system/checkproc.service \
           /usr/share/man/man8/procctl.8.gz /usr/share/man/man8/checkproc.8.gz /usr/share/man/man1/proctab.1.gz \
           /usr/share/man/man5/hbwatch-stack.yaml.5.gz /usr/share/man/man3/hbwatch.3.gz \
           /usr/share/bash-completion/completions/procctl /usr/share/bash-completion/completions/proctab \
           /usr/share/bash-completion/completions/checkproc /usr/include/hbwatch/heartbeat.h \
           "/usr/lib/$multiarch/libhbwatch.so.1" "/usr/lib/$multiarch/pkgconfig/hbwatch.pc" "/usr/lib/$multiarch/cmake/hbwatch/hbwatchConfig.cmake"; do
    [ -e "$root$f" ] || { echo "the packages did not install $f" >&2; exit 1; }
  done
  in_root dpkg-query -W -f="\${Conffiles}\n" hbwatch | grep -q "/etc/hbwatch/stack.yaml" || { echo "/etc/hbwatch/stack.yaml is not a conffile" >&2; exit 1; }
  # Enabled (the stack comes up at boot; started at install where systemd runs, which it does
  # not in here); checkproc.service is for hosts that choose it.
  [ -L "$root/etc/systemd/system/multi-user.target.wants/hbwatch-stack.service" ] || { echo "hbwatch-stack.service is not enabled" >&2; exit 1; }
  in_root getent group hbwatch >/dev/null || { echo "the hbwatch group (the table'"'"'s writers) was not made" >&2; exit 1; }
  [ ! -e "$root/etc/systemd/system/multi-user.target.wants/checkproc.service" ] || { echo "checkproc.service should be left disabled" >&2; exit 1; }

  echo "== pkg-config, and a service built with it"
  flags=$(in_root pkg-config --cflags --libs hbwatch)
  echo "pkg-config --cflags --libs hbwatch: $flags"
  case $flags in *rpath*) echo "the installed hbwatch.pc adds a run path to a system directory" >&2; exit 1;; esac
  in_root sh -c "c++ -std=c++20 /tmp/consumer/consumer.cpp -o /tmp/consumer/by-pkg-config \$(pkg-config --cflags --libs hbwatch)"
  key=$(printf "0x48F%05x" $(( $$ & 0xFFFFF )))
  trap "ipcrm -M $key 2>/dev/null || true" EXIT
  in_root env HBWATCH_KEY="$key" /tmp/consumer/by-pkg-config

  echo "== systemd-analyze verify"
  for unit in hbwatch-stack.service checkproc.service hbwatch-stack@example.service; do
    said=$(in_root systemd-analyze verify "$unit" 2>&1) || { echo "$said" >&2; echo "systemd-analyze verify $unit failed" >&2; exit 1; }
    [ -z "$said" ] || { echo "$said" >&2; echo "systemd-analyze verify $unit warned" >&2; exit 1; }
    echo "$unit: verified"
  done

  echo "== procctl --check on the shipped stack.yaml"
  in_root procctl --check -c /etc/hbwatch/stack.yaml

  echo "== the man pages render"
  for page in procctl.8 checkproc.8 proctab.1 hbwatch-stack.yaml.5 hbwatch.3; do
    name=${page%.*}; section=${page##*.}
    in_root lexgrog "/usr/share/man/man$section/$page.gz"
    warnings=$(in_root env MANWIDTH=80 man --warnings -E UTF-8 "$section" "$name" 2>&1 >/dev/null)
    [ -z "$warnings" ] || { echo "$warnings" >&2; echo "man $section $name warns" >&2; exit 1; }
    in_root env MANWIDTH=80 man -P cat "$section" "$name" | grep -q "^NAME" || { echo "man $section $name shows no NAME" >&2; exit 1; }
  done

  echo "== bash completion"
  got=$(in_root bash -c "source /usr/share/bash-completion/completions/proctab; COMP_WORDS=(proctab rel); COMP_CWORD=1; _hbwatch_proctab; echo \${COMPREPLY[*]}")
  [ "$got" = reload ] || { echo "proctab rel<TAB> offered \"$got\", not reload" >&2; exit 1; }

  echo "== dpkg -r leaves only the conffile"
  listed=$(in_root dpkg -L hbwatch libhbwatch1 libhbwatch-dev | sort -u)
  # What the units would have made at run time (LogsDirectory=, StateDirectory=).
  mkdir -p "$root/var/log/hbwatch" "$root/var/lib/hbwatch/diagnoses"
  echo "output of a program" > "$root/var/log/hbwatch/order-svc.log"
  in_root dpkg -r hbwatch libhbwatch-dev libhbwatch1
  left=""
  while read -r path; do
    [ -n "$path" ] && [ ! -d "$root$path" ] && { [ -e "$root$path" ] || [ -L "$root$path" ]; } && left="$left $path"
  done <<<"$listed"
  [ "$left" = " /etc/hbwatch/stack.yaml" ] || { echo "after dpkg -r these remain:$left (only /etc/hbwatch/stack.yaml should)" >&2; exit 1; }
  for dir in /usr/include/hbwatch "/usr/lib/$multiarch/cmake/hbwatch"; do
    [ ! -e "$root$dir" ] || { echo "after dpkg -r $dir remains" >&2; exit 1; }
  done

  echo "== dpkg --purge removes it, and what the units made"
  in_root dpkg --purge hbwatch
  for dir in /etc/hbwatch /var/log/hbwatch /var/lib/hbwatch; do
    [ ! -e "$root$dir" ] || { echo "after purge $dir remains: $(ls -A "$root$dir")" >&2; exit 1; }
  done
  [ ! -e "$root/etc/systemd/system/multi-user.target.wants/hbwatch-stack.service" ] || { echo "after purge the unit is still enabled" >&2; exit 1; }
'
echo "packages built, lintian-clean, installed, checked and removed"
rm -rf "$work"
