#!/usr/bin/env bash
# Stops a stack started by start.sh: SIGTERM to every procctl whose pidfile in RUNDIR is
# locked (a stale pidfile is never signalled), so each stops its program and everything it
# started, and frees the heartbeat entries of those processes (and of no other); waits for them.
#
#   scripts/stop.sh              # RUNDIR defaults to ./run
#   scripts/stop.sh /run/hbwatch 30
#
# Exit status: 0 all stopped; 1 something would not stop (listed); 2 bad usage.
set -uo pipefail
[ $# -le 2 ] || { echo "usage: $0 [RUNDIR] [WAIT_SECONDS]" >&2; exit 2; }
run=${1:-./run}
wait_for=${2:-30}  # at least procctl's --grace (10 s by default) plus a margin

pids=() names=()
for pidfile in "$run"/*.pid; do
  [ -e "$pidfile" ] || continue
  # procctl holds the lock while it runs: an unlocked pidfile is stale, whatever pid it names.
  if flock -n "$pidfile" true 2>/dev/null; then continue; fi
  pid=$(cat "$pidfile")
  [ -n "$pid" ] || continue
  # procctl writes its pid before its pidfile becomes visible locked: the pid is the holder's.
  if kill -TERM "$pid" 2>/dev/null; then
    pids+=("$pid"); names+=("$(basename "$pidfile" .pid)")
    echo "stop.sh: SIGTERM to procctl pid $pid ($(basename "$pidfile" .pid))"
  fi
done

deadline=$((SECONDS + wait_for))
left=()
for i in "${!pids[@]}"; do
  while kill -0 "${pids[$i]}" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if kill -0 "${pids[$i]}" 2>/dev/null; then left+=("${names[$i]} (procctl pid ${pids[$i]})"); fi
done
echo "stop.sh: stopped ${#pids[@]} procctl(s) in $run"

if [ ${#left[@]} -gt 0 ]; then
  printf 'stop.sh: still running after %ss: %s\n' "$wait_for" "${left[*]}" >&2
  exit 1
fi
exit 0
