#!/usr/bin/env bash
# The whole loop on real processes, through scripts/start.sh and stop.sh around procctl
# --config: a service hangs; checkproc kills it (TERM, or KILL when it ignores TERM); the stack
# restarts it; it beats again; after stop.sh no process of the stack and no slot is left.
set -euo pipefail
bin=$1
scripts=$2
export HBWATCH_BIN=$bin
export HBWATCH_KEY=$(printf '0x48E3%04x' $(( $$ & 0xFFFF )))
run=$(mktemp -d /tmp/hbwatch-e2e-XXXXXX)
cleanup() {
  "$scripts/stop.sh" "$run" 20 >/dev/null 2>&1 || true
  ipcrm -M "$HBWATCH_KEY" 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

fail() { echo "e2e FAILED: $*" >&2; echo "--- logs:" >&2; tail -n 20 "$run"/*.log >&2 || true; exit 1; }
# Waits (up to 30 s) until the command succeeds.
wait_until() {
  local what=$1; shift
  local deadline=$((SECONDS + 30))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting: $what"
    sleep 0.1
  done
  echo "ok: $what"
}
metric() { "$bin/proctab" --prometheus | grep "^$1{name=\"$2\"" || true; }

cat > "$run/stack.yaml" <<STACK
run_dir: $run
log_dir: $run
programs:
  checkproc:
    command: [$bin/checkproc, --watch, --grace, 1s]
    stdout: checkproc.log
    stderr: checkproc.log
  hangs:
    command: [$bin/demo_service, hangs, --timeout, 1s, --hang-after, 1500ms]
    restart_delay: 1s
    stdout: hangs.log
  stubborn:
    command: [$bin/demo_service, stubborn, --timeout, 1s, --hang-after, 1500ms, --ignore-term]
    restart_delay: 1s
    stdout: stubborn.log
STACK
"$scripts/start.sh" "$run/stack.yaml" --log "$run/procctl.log" || fail "start.sh"
checkproc_log=$run/checkproc.log

wait_until "both services registered and beating" sh -c "'$bin/proctab' --json | grep -q '\"name\": \"stubborn\"'"
first_hangs=$(metric hbwatch_entry_beats_total hangs | sed 's/.*pid="\([0-9]*\)".*/\1/')
[ -n "$first_hangs" ] || fail "no entry for hangs"

# 1. it hangs, and 2. it is killed: by TERM, or by KILL when it ignores TERM.
wait_until "checkproc saw 'hangs' hung and sent SIGTERM" grep -q "pid $first_hangs 'hangs': hung: .*SIGTERM sent" "$checkproc_log"
wait_until "'hangs' exited on SIGTERM and its slot was freed" grep -Eq "pid $first_hangs 'hangs': exited .* after SIGTERM; slot (already )?freed" "$checkproc_log"
wait_until "'stubborn' ignored SIGTERM and was killed by SIGKILL" grep -Eq "'stubborn': exited .* \(SIGKILL was needed\); slot (already )?freed" "$checkproc_log"

# 3. the stack restarts it, and 4. the new pid beats again.
wait_until "procctl restarted 'hangs'" sh -c "[ \$(grep -c 'started hangs as pid' '$run/procctl.log') -ge 2 ]"
new_hangs=$(grep 'started hangs as pid' "$run/procctl.log" | sed -n 2p | sed 's/.* as pid \([0-9]*\).*/\1/')
[ "$new_hangs" != "$first_hangs" ] || fail "the restarted service has the old pid"
wait_until "the new pid $new_hangs beats again" sh -c "'$bin/proctab' --prometheus | grep -q '^hbwatch_entry_beats_total{name=\"hangs\",pid=\"$new_hangs\",slot=\"[0-9]*\"} [1-9]'"

# 5. after stop, nothing of the stack is left: no process, no slot, no socket. A logged pid may
# have been reused by anything since (a compiler, another test): only the processes of the
# stack that run now are followed, by pid and start time.
start_time() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }
alive=()
for pid in $(cat "$run/procctl.pid") $(grep -ho 'as pid [0-9]*' "$run/procctl.log" | awk '{print $3}'); do
  case "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" in
    "$bin/"*) alive+=("$pid:$(start_time "$pid")") ;;
  esac
done
[ ${#alive[@]} -ge 3 ] || fail "expected procctl, checkproc and the restarted hangs to be running before stop.sh: ${alive[*]}"
"$scripts/stop.sh" "$run" 20 || fail "stop.sh reported that procctl would not stop"
for entry in "${alive[@]}"; do
  pid=${entry%%:*}
  if [ "$(start_time "$pid")" = "${entry#*:}" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
    fail "pid $pid is still running after stop.sh: $(tr '\0' ' ' < /proc/$pid/cmdline)"
  fi
done
echo "ok: no process of the stack is left"
[ ! -e "$run/control.sock" ] || fail "the control socket is left"
entries=$("$bin/proctab" --json | tr -d ' \n')
[ "$entries" = "[]" ] || fail "slots left in the table after stop: $entries"
echo "ok: no slot is left in the table"
