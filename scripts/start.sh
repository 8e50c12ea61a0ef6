#!/usr/bin/env bash
# Starts a stack: checks CONFIG, then runs `procctl --config CONFIG` in the background, which
# supervises every program in it (see README, "The stack supervisor"). Extra arguments go to
# procctl (for example --log FILE). A thin wrapper: procctl does the work.
#
#   scripts/start.sh scripts/stack.example
#   scripts/start.sh /etc/hbwatch/stack.yaml --log /var/log/hbwatch/procctl.log
#
# Exit status: 0 the stack runs; 1 the config is wrong or procctl could not start (said why);
# 2 bad usage.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 CONFIG [PROCCTL-OPTIONS...]" >&2; exit 2; }
config=$1; shift
[ -r "$config" ] || { echo "start.sh: cannot read the config file $config" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
# Installed (hbwatch-stack-start), procctl is beside it; in the source tree, in build/bin.
if [ -z "${HBWATCH_BIN:-}" ]; then
  if [ -x "$here/procctl" ]; then HBWATCH_BIN=$here; else HBWATCH_BIN=$here/../build/bin; fi
fi
procctl=$HBWATCH_BIN/procctl
[ -x "$procctl" ] || procctl=$(command -v procctl) || { echo "start.sh: no procctl in $HBWATCH_BIN or on PATH" >&2; exit 2; }
"$procctl" --check --config "$config" || exit 1
exec "$procctl" --config "$config" "$@"
