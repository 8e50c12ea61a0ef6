#!/usr/bin/env bash
# Runs the whole ctest suite of BUILD again as users who are not root: `nobody` (whose group,
# nogroup, other users share on Debian) and a user made here with a group of its own (removed
# after). Each entry must pass, or say "SKIPPED: needs ..." and count as skipped. Run as root.
#
#   scripts/test-as-users.sh build
#
# A clone under a directory those users cannot search (/root is 0700 on Debian) is made
# reachable in a private mount namespace: a tmpfs over that directory, with the clone bound
# back at its own path, so every path the build recorded still holds. Nothing changes outside.
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "test-as-users: run as root (it acts as other users)" >&2; exit 2; }
fresh=hbwt-ci-$$
useradd --user-group --no-create-home --shell /usr/sbin/nologin "$fresh"
cleanup() { userdel "$fresh" 2>/dev/null || true; chown -R root:root "$build/Testing" 2>/dev/null || true; }
trap cleanup EXIT

# The outermost directory above the clone that `other` users cannot search, if any.
blocked=""
dir=$top
while [ "$dir" != / ]; do
  dir=$(dirname "$dir")
  [ "$(( 0$(stat -c %a "$dir") & 1 ))" -eq 1 ] || blocked=$dir
done

status=0
for user in nobody "$fresh"; do
  group=$(id -gn "$user")
  echo "== ctest as $user (group $group)"
  mkdir -p "$build/Testing/Temporary"
  chown -R "$user:$group" "$build/Testing"
  run="cd '$build' && setpriv --reuid='$user' --regid='$group' --clear-groups env HOME=/ ctest --output-on-failure -j \$(nproc)"
  if [ -n "$blocked" ]; then
    echo "   ($blocked cannot be searched by $user: it is covered by a tmpfs in a private mount namespace, the clone bound back)"
    hold=$(mktemp -d)
    run="mount --make-rprivate / && mount --bind '$top' '$hold' && mount -t tmpfs -o mode=0755 hbwatch-reach '$blocked' &&
         mkdir -p '$top' && mount --bind '$hold' '$top' && $run"
    unshare --mount bash -c "$run" || status=1
    rmdir "$hold"
  else
    bash -c "$run" || status=1
  fi
  chown -R root:root "$build/Testing"
done
exit $status
