#!/usr/bin/env bash
# Starts a stack: one procctl per line of STACKFILE, each with a pidfile, a log and an output
# file in RUNDIR. A line is "INTERVAL COMMAND [ARGS...]", read as shell words ($VARS expand);
# blank lines and # comments are skipped.
#
#   scripts/start.sh scripts/stack.example            # RUNDIR defaults to ./run
#   HBWATCH_BIN=/usr/local/bin scripts/start.sh /etc/hbwatch/stack /run/hbwatch
#
# Exit status: 0 all started; 1 some line failed to start, or names a program that cannot be
# executed (the rest still run); 2 bad usage.
set -uo pipefail
usage() { echo "usage: $0 STACKFILE [RUNDIR]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
stack=$1
run=${2:-./run}
[ -r "$stack" ] || { echo "start.sh: cannot read the stack file $stack" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
# Installed (hbwatch-stack-start), the tools are beside it; in the source tree, in build/bin.
if [ -z "${HBWATCH_BIN:-}" ]; then
  if [ -x "$here/procctl" ]; then HBWATCH_BIN=$here; else HBWATCH_BIN=$here/../build/bin; fi
fi
export HBWATCH_BIN
procctl=$HBWATCH_BIN/procctl
[ -x "$procctl" ] || procctl=$(command -v procctl) || { echo "start.sh: no procctl in $HBWATCH_BIN or on PATH" >&2; exit 2; }
mkdir -p "$run"

status=0 n=0
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  [ -z "${line//[[:space:]]/}" ] && continue
  n=$((n + 1))
  eval "set -- $line"
  interval=$1; shift
  name=$(printf '%02d-%s' "$n" "$(basename "$1")")
  # procctl would retry a program that cannot run forever, with a backoff: say so now instead.
  if ! command -v -- "$1" >/dev/null 2>&1 || { [ -e "$1" ] && [ ! -x "$1" ]; }; then
    echo "start.sh: line $n: cannot execute $1: not found or not executable; not started" >&2
    status=1
    continue
  fi
  if "$procctl" --pidfile "$run/$name.pid" --log "$run/$name.log" \
       --stdout "$run/$name.out" --stderr "$run/$name.out" "$interval" "$@"; then
    :
  else
    echo "start.sh: line $n ($*) did not start; see above" >&2
    status=1
  fi
done < "$stack"
exit $status
