#!/usr/bin/env bash
# Stops a stack: SIGTERM to the procctl --config that holds RUN_DIR/procctl.pid (a pidfile
# nobody holds locked is stale and never signalled), which stops every program in reverse
# order, each with its stop_grace; waits for it to exit. A thin wrapper: procctl does the work.
#
#   scripts/stop.sh /run/hbwatch          # the config's run_dir (default /run/hbwatch)
#   scripts/stop.sh /run/hbwatch 60       # wait up to 60 s (default 30: above every stop_grace)
#
# Exit status: 0 stopped (or nothing was running); 1 still running after the wait; 2 bad usage.
set -uo pipefail
[ $# -le 2 ] || { echo "usage: $0 [RUN_DIR] [WAIT_SECONDS]" >&2; exit 2; }
run=${1:-/run/hbwatch}
wait_for=${2:-30}
pidfile=$run/procctl.pid
# procctl holds the lock while it runs: an unlocked pidfile is stale, whatever pid it names.
if [ ! -e "$pidfile" ] || flock -n "$pidfile" true 2>/dev/null; then
  echo "stop.sh: no procctl --config runs with run_dir $run"
  exit 0
fi
pid=$(cat "$pidfile")
kill -TERM "$pid" 2>/dev/null || { echo "stop.sh: cannot signal procctl pid $pid" >&2; exit 1; }
echo "stop.sh: SIGTERM to procctl pid $pid (run_dir $run): it stops every program, in reverse order"
deadline=$((SECONDS + wait_for))
# The lock is released when procctl exits.
until flock -n "$pidfile" true 2>/dev/null; do
  if [ $SECONDS -ge $deadline ]; then
    echo "stop.sh: procctl pid $pid still runs after ${wait_for}s: see its log, or: proctab status --run-dir $run" >&2
    exit 1
  fi
  sleep 0.1
done
echo "stop.sh: stopped"
