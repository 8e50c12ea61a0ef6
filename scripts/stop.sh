#!/usr/bin/env bash
# Stops a stack: `procctl --stop RUN_DIR`, which sends SIGTERM to the procctl --config that
# holds RUN_DIR/procctl.pid locked, once it has checked that RUN_DIR and the pidfile belong to
# root or you, that the pid runs procctl and holds the lock (a planted or stale pidfile is
# never obeyed); procctl then stops every program in reverse order, each with its stop_grace.
# Waits until procctl has exited. A thin wrapper: procctl does the work.
#
#   scripts/stop.sh /run/hbwatch          # the config's run_dir (default /run/hbwatch)
#   scripts/stop.sh /run/hbwatch 60       # wait up to 60 s (default 30: above every stop_grace)
#
# Exit status: 0 stopped (or nothing was running); 1 refused, or still running after the
# wait; 2 bad usage.
set -uo pipefail
[ $# -le 2 ] || { echo "usage: $0 [RUN_DIR] [WAIT_SECONDS]" >&2; exit 2; }
run=${1:-/run/hbwatch}
wait_for=${2:-30}
case $wait_for in ''|*[!0-9]*) echo "stop.sh: WAIT_SECONDS must be a whole number, not '$wait_for'" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
# Installed (hbwatch-stack-stop), procctl is beside it; in the source tree, in build/bin.
if [ -z "${HBWATCH_BIN:-}" ]; then
  if [ -x "$here/procctl" ]; then HBWATCH_BIN=$here; else HBWATCH_BIN=$here/../build/bin; fi
fi
procctl=$HBWATCH_BIN/procctl
[ -x "$procctl" ] || procctl=$(command -v procctl) || { echo "stop.sh: no procctl in $HBWATCH_BIN or on PATH" >&2; exit 2; }
exec "$procctl" --stop "$run" --wait "${wait_for}s"
