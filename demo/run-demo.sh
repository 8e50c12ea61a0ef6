#!/usr/bin/env bash
# A short look at the library on real processes, on a table key of its own: two services
# register and beat; one is stopped gracefully, one by SIGTERM's default action.
set -euo pipefail
bin=${1:-build/bin}
export HBWATCH_KEY=${HBWATCH_KEY:-0x48444d4f}  # "HBDM": never the production table
say() { printf '\n[demo %s] %s\n' "$(date +%T)" "$*"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ipcrm -M "$HBWATCH_KEY" 2>/dev/null || true
}
trap cleanup EXIT

say "starting two services that register at key $HBWATCH_KEY and beat every 200ms"
"$bin/demo_service" order-svc --timeout 3s --graceful & pids+=($!)
"$bin/demo_service" billing-svc --timeout 5s & pids+=($!)
sleep 1
say "the table is one System V segment; ipcs -m shows it:"
ipcs -m | awk -v k="$HBWATCH_KEY" 'NR<=3 || tolower($1)==tolower(k)'
say "stopping order-svc gracefully (SIGTERM, it releases its slot) and billing-svc by SIGTERM's default action"
kill -TERM "${pids[@]}"
wait "${pids[@]}" 2>/dev/null || true
pids=()
say "removing the demo table; nothing is left behind:"
ipcrm -M "$HBWATCH_KEY"
ipcs -m | awk -v k="$HBWATCH_KEY" 'tolower($1)==tolower(k) {found=1} END {print found ? "segment still there!" : "no segment at " k}'
