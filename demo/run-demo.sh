#!/usr/bin/env bash
# The whole hbwatch loop on real processes, narrated, in about 12 seconds, on a table key of its
# own (never the production table): one procctl --config runs the stack from a config file;
# checkproc --watch stops what hangs; the stack brings it back; an operator restarts a program
# by name, reloads an edited config and tails a program's output. Run by `make demo`.
set -euo pipefail
bin=$(cd "${1:-build/bin}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
export HBWATCH_BIN=$bin
export HBWATCH_KEY=0x48444d4f  # "HBDM"
run=$(mktemp -d /tmp/hbwatch-demo-XXXXXX)
t0=$SECONDS
say() { printf '\n\033[1m[%3ds] %s\033[0m\n' $((SECONDS - t0)) "$*"; }
[ -t 1 ] || say() { printf '\n[%3ds] %s\n' $((SECONDS - t0)) "$*"; }
indent() { sed 's/^/    /'; }
table() { "$bin/proctab" | indent; }
status() { "$bin/proctab" status --run-dir "$run" | indent || true; }
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
  grep -- "$pattern" "$file" | tail -n 1 | indent
}
# A live process's start time (field 22 of /proc/PID/stat, read after the name, which may hold
# spaces); nothing for a process that is gone or a zombie.
start_time() {
  local rest
  rest=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 0
  set -- $rest
  [ "$1" = Z ] || echo "${20}"
}
pid_of() { "$bin/proctab" status "$1" --json --run-dir "$run" | sed -n 's/.*"pid": \([0-9]*\).*/\1/p'; }
ipcrm -M "$HBWATCH_KEY" 2>/dev/null || true

say "hbwatch demo, on table key $HBWATCH_KEY. The stack is one config file, run by one procctl:"
cat > "$run/stack.yaml" <<STACK
run_dir: $run
log_dir: $run
programs:
  checkproc:
    command: [$bin/checkproc, --watch, --grace, 2s, --diagnoses, $run/diagnoses]
    stdout: checkproc.log
    stderr: checkproc.log
  healthy:
    command: [$bin/demo_service, healthy, --timeout, 2s]
    ready: beat
    after: [checkproc]
    stdout: healthy.log
  hangs:
    command: [$bin/demo_service, hangs, --timeout, 2s, --hang-after, 4s]
    ready: beat
    after: [healthy]
    restart_delay: 1s
  stubborn:
    command: [$bin/demo_service, stubborn, --timeout, 2s, --hang-after, 6s, --ignore-term]
    after: [healthy]
    restart_delay: 1s
  crashes:
    command: [$bin/demo_service, crashes, --timeout, 2s, --crash-after, 8s]
    after: [healthy]
    restart_delay: 1s
    stdout: crashes.log
    stderr: crashes.log
STACK
sed -n '/^programs:/,$p' "$run/stack.yaml" | indent
"$here/scripts/start.sh" "$run/stack.yaml" --log "$run/procctl.log" | indent
await "$run/procctl.log" "crashes is ready" >/dev/null
await "$run/procctl.log" "hangs is ready (its first heartbeat)"
say "Every program started in the order of its 'after' list; 'proctab status' joins each with its heartbeat entry:"
status

say "'hangs' stops beating after 4 s. Its timeout is 2 s: checkproc --watch wakes at its deadline and sends SIGTERM:"
await "$run/checkproc.log" "'hangs': hung:"
await "$run/checkproc.log" "'hangs': exited"
say "Before its SIGTERM, checkproc kept what 'hangs' was doing: 'proctab diagnosis hangs' (the first lines):"
"$bin/proctab" diagnosis hangs --diagnoses "$run/diagnoses" | head -n 12 | indent

say "'stubborn' stops beating after 6 s and ignores SIGTERM; after the 2 s grace checkproc sends SIGKILL:"
await "$run/checkproc.log" "'stubborn': hung:"
await "$run/checkproc.log" "'stubborn': did not exit within"
await "$run/checkproc.log" "'stubborn': exited"

say "'crashes' aborts at 8 s. The stack restarts each program by its own policy:"
await "$run/procctl.log" "crashes was killed by SIGABRT" >/dev/null
await "$run/procctl.log" "started crashes as pid" >/dev/null
# One file, read once: its lines in the order they happened.
grep -h "crashes was killed by SIGABRT\|started \(hangs\|stubborn\|crashes\) as pid" "$run/procctl.log" | indent
await "$run/procctl.log" "hangs is ready" >/dev/null
status

say "A restart by name, at runtime: 'proctab restart healthy' (a new pid; the others keep theirs):"
before=$(pid_of healthy)
"$bin/proctab" restart healthy --run-dir "$run" | indent
deadline=$((SECONDS + 30))
until after=$(pid_of healthy) && [ -n "$after" ] && [ "$after" != "$before" ]; do
  [ $SECONDS -lt $deadline ] || { echo "    (healthy did not come back within 30s)"; exit 1; }
  sleep 0.1
done
echo "    healthy: pid $before -> $after"

say "A reload: the config is edited (healthy's timeout 2s -> 3s, and a new program, reporter); only what changed restarts:"
sed -i 's/healthy, --timeout, 2s\]/healthy, --timeout, 3s]/' "$run/stack.yaml"
cat >> "$run/stack.yaml" <<STACK
  reporter:
    command: [$bin/demo_service, reporter, --timeout, 5s, --every, 1s]
    stdout: reporter.log
STACK
crashes_before=$(pid_of crashes)
"$bin/proctab" reload --run-dir "$run" | indent
await "$run/procctl.log" "reporter is ready" >/dev/null
await "$run/procctl.log" "healthy is ready" >/dev/null
status
echo "    crashes kept its pid across the reload: $crashes_before -> $(pid_of crashes)"

say "A program's output, through the control socket: 'proctab tail healthy -n 3':"
"$bin/proctab" tail healthy -n 3 --run-dir "$run" | indent
say "The heartbeat table itself ('proctab'):"
table

# Every process the demo started, by pid and start time (a pid alone may be reused): procctl,
# and each program it started, checkproc included.
started_processes=()
for pid in $(cat "$run/procctl.pid") $(grep -ho 'as pid [0-9]*' "$run/procctl.log" | awk '{print $3}'); do
  start=$(start_time "$pid")
  [ -n "$start" ] && started_processes+=("$pid:$start")
done

say "Stopping the stack with scripts/stop.sh: procctl stops every program in reverse order and frees their entries."
"$here/scripts/stop.sh" "$run" 20 | indent
grep -h "stopping every program\|every program is stopped" "$run/procctl.log" | indent
table
"$bin/proctab" destroy | indent

say "Nothing is left behind:"
left=()
for entry in "${started_processes[@]}"; do
  pid=${entry%%:*}
  [ "$(start_time "$pid")" = "${entry#*:}" ] && left+=("$pid")
done
# And anything else running the demo's programs that was never logged.
for pid in $(pgrep -f "^$bin/(procctl|checkproc|demo_service)( |\$)" || true); do
  [ -n "$(start_time "$pid")" ] && [[ " ${left[*]} " != *" $pid "* ]] && left+=("$pid")
done
if [ ${#left[@]} -gt 0 ]; then
  echo "    processes of the demo still alive:"
  for pid in "${left[@]}"; do echo "      pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)"; done
  exit 1
fi
echo "    processes of the demo: none (${#started_processes[@]} checked by pid and start time, procctl included)"
if ipcs -m | grep -qi "$HBWATCH_KEY"; then echo "    shared memory at $HBWATCH_KEY: still there!"; exit 1; fi
echo "    shared memory at $HBWATCH_KEY: none"
if [ -e "$run/control.sock" ]; then echo "    the control socket is still there!"; exit 1; fi
echo "    control socket: none"
say "Done. The logs were in $run (now removed). Read README.md for the details."
