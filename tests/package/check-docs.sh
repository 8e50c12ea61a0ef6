#!/usr/bin/env bash
# The man pages the build made render without a warning and have a NAME line that lexgrog
# reads (what mandb and apropos use); the bash completion the tools print offers their
# subcommands, options and option values.
#
#   tests/package/check-docs.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
status=0
fail() { echo "$*" >&2; status=1; }

echo "== man pages"
for page in procctl.8 checkproc.8 proctab.1 hbwatch-stack.yaml.5 hbwatch.3; do
  file=$build/man/$page
  [ -s "$file" ] || { fail "$file was not built"; continue; }
  lexgrog "$file" || fail "lexgrog cannot read the NAME line of $page"
  warnings=$(MANWIDTH=80 man --warnings -E UTF-8 -l "$file" 2>&1 >/dev/null)
  [ -z "$warnings" ] || fail "man --warnings on $page: $warnings"
  MANWIDTH=80 man -P cat -l "$file" 2>/dev/null | grep -q '^EXIT STATUS\|^RETURN VALUE\|^PROGRAM KEYS' ||
    fail "$page renders without its EXIT STATUS (or RETURN VALUE, PROGRAM KEYS) section"
done

echo "== bash completion"
# complete TOOL WORD... : what the completion offers for the last WORD.
complete_words() {
  local tool=$1; shift
  bash -c 'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); "_hbwatch_${COMP_WORDS[0]}"; echo "${COMPREPLY[*]}"' \
    _ "$build/completion/$tool" "$tool" "$@"
}
expect() {  # EXPECTED TOOL WORD...: every word of EXPECTED is offered
  local expected=$1; shift
  local got
  got=" $(complete_words "$@") "
  for word in $expected; do
    [[ $got == *" $word "* ]] || fail "completing '$*' offered '${got# }', without $word"
  done
}
expect "start status stop" proctab st
expect "--follow --lines --stderr --run-dir" proctab tail main-app --
expect "--json --prometheus --key --watch" proctab --
expect "none kernel user" checkproc --diagnose ""
expect "spare kill" checkproc --stopped ""
expect "--report-only --watch --keep-diagnoses" checkproc --
expect "--check --config --foreground" procctl -c stack.yaml --
expect "--wait" procctl --stop /run/hbwatch --
expect "--max-restarts --pidfile --config --stop" procctl --
# After INTERVAL, -c is the program's (procctl 5 sh -c ...): not procctl's stack mode.
got=$(complete_words procctl 5 sh -c x --)
[[ " $got " != *" --check "* ]] || fail "procctl 5 sh -c x -- offered stack options: $got"
# After PROGRAM, the words are PROGRAM's: procctl's options are not offered.
got=$(complete_words procctl 5 myprog --c)
[ -z "$got" ] || fail "procctl 5 myprog --c offered procctl's options: $got"
# File names come whole, spaces and all, never globbed.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
touch "$scratch/a file.yaml" "$scratch/*"
got=$(cd "$scratch" && bash -c 'source "$1"; COMP_WORDS=(procctl --config ""); COMP_CWORD=2; _hbwatch_procctl; printf "[%s]" "${COMPREPLY[@]}"' _ "$build/completion/procctl")
[ "$got" = "[*][a file.yaml]" ] || fail "completing procctl --config in a directory of 'a file.yaml' and '*' gave $got"
# Every subcommand proctab has.
subcommands=$("$build/bin/proctab" --help | awk '/^Subcommands:/ {on=1; next} on && /^  [a-z]/ {print $1} on && /^$/ {exit}')
[ -n "$subcommands" ] || fail "proctab --help lists no subcommands"
expect "$subcommands" proctab ""
exit $status
