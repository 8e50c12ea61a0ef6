#!/usr/bin/env bash
# The whole hbwatch loop on real processes, narrated, in about a minute, on a table key of its
# own (never the production table). Run by `make demo`.
set -euo pipefail
bin=$(cd "${1:-build/bin}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
export HBWATCH_BIN=$bin
export HBWATCH_KEY=0x48444d4f  # "HBDM"
run=$(mktemp -d /tmp/hbwatch-demo-XXXXXX)
t0=$SECONDS
say() { printf '\n\033[1m[%3ds] %s\033[0m\n' $((SECONDS - t0)) "$*"; }
[ -t 1 ] || say() { printf '\n[%3ds] %s\n' $((SECONDS - t0)) "$*"; }
table() { "$bin/proctab" | sed 's/^/    /'; }
cleanup() {
  "$here/scripts/stop.sh" "$run" 20 >/dev/null 2>&1 || true
  "$bin/proctab" destroy --force >/dev/null 2>&1 || true
  rm -rf "$run"
}
trap cleanup EXIT
# Waits up to 30 s for a line matching PATTERN in FILE, then shows it.
await() {
  local file=$1 pattern=$2 deadline=$((SECONDS + 30))
  until grep -q -- "$pattern" "$file" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "    (not seen within 30s: $pattern)"; return 1; }
    sleep 0.1
  done
  grep -- "$pattern" "$file" | tail -n 1 | sed 's/^/    /'
}
ipcrm -M "$HBWATCH_KEY" 2>/dev/null || true

say "hbwatch demo, on table key $HBWATCH_KEY. The stack: procctl runs checkproc every 2 s, and four services, each restarted by its own procctl."
cat > "$run/stack" <<'EOF'
2 $HBWATCH_BIN/checkproc --grace 2s
1 $HBWATCH_BIN/demo_service healthy  --timeout 2s
1 $HBWATCH_BIN/demo_service hangs    --timeout 2s --hang-after 4s
1 $HBWATCH_BIN/demo_service stubborn --timeout 2s --hang-after 6s --ignore-term
1 $HBWATCH_BIN/demo_service crashes  --timeout 2s --crash-after 8s
EOF
sed 's/^/    /' "$run/stack"
"$here/scripts/start.sh" "$run/stack" "$run" | sed 's/^/    /'
sleep 2
say "Every service registered in the shared table and beats every 200 ms:"
table

say "'hangs' stops beating after 4 s. Its timeout is 2 s, so it is hung at 6 s; the next checkproc run sends it SIGTERM:"
await "$run/01-checkproc.out" "'hangs': hung:"
await "$run/01-checkproc.out" "'hangs': exited"
table

say "'stubborn' stops beating after 6 s and ignores SIGTERM; after the 2 s grace checkproc sends SIGKILL:"
await "$run/01-checkproc.out" "'stubborn': hung:"
await "$run/01-checkproc.out" "'stubborn': did not exit within"
await "$run/01-checkproc.out" "'stubborn': exited"

say "'crashes' aborts at 8 s. procctl logs the exit and starts it again; so it did for 'hangs' and 'stubborn':"
await "$run/05-demo_service.log" "was killed by SIGABRT"
await "$run/03-demo_service.log" "started .* as pid .*" >/dev/null
grep -h "started .* as pid" "$run"/0[2-5]-demo_service.log | sed 's/^/    /'
sleep 1.5
say "The restarted services run under new pids ('hangs' and 'stubborn' will hang again: they do so on every run):"
table

say "Now checkproc --watch instead of a scan every 2 s: it wakes at the earliest deadline and acts within milliseconds."
kill -TERM "$(cat "$run/01-checkproc.pid")"
while ! flock -n "$run/01-checkproc.pid" true; do sleep 0.1; done
"$bin/procctl" --pidfile "$run/06-watch.pid" --log "$run/06-watch.log" --stdout "$run/06-watch.out" \
  --stderr "$run/06-watch.out" 1 "$bin/checkproc" --watch --grace 2s | sed 's/^/    /'
"$bin/procctl" --pidfile "$run/07-quick.pid" --log "$run/07-quick.log" --stdout "$run/07-quick.out" \
  --stderr "$run/07-quick.out" 1 "$bin/demo_service" quick --timeout 1s --hang-after 1s | sed 's/^/    /'
await "$run/06-watch.out" "'quick': hung:"
await "$run/06-watch.out" "'quick': exited"
echo "    ('hung: ... 0ms late' means the SIGTERM left within the millisecond of the deadline)"

say "Stopping everything with scripts/stop.sh: each procctl stops its service, frees the entries its services left, and exits."
"$here/scripts/stop.sh" "$run" 20 | sed 's/^/    /'
table
"$bin/proctab" destroy | sed 's/^/    /'

say "Nothing is left behind:"
left=$(pgrep -f "$bin/(procctl|checkproc|demo_service)" || true)
echo "    processes of the demo: ${left:-none}"
if ipcs -m | grep -qi "$HBWATCH_KEY"; then echo "    shared memory at $HBWATCH_KEY: still there!"; exit 1; fi
echo "    shared memory at $HBWATCH_KEY: none"
[ -z "$left" ] || exit 1
say "Done. The logs were in $run (now removed). Read README.md for the details."
