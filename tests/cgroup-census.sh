#!/usr/bin/env bash
# Counts the cgroups under the cgroup v2 hierarchy's hbwatch/ before the suite (`before FILE`)
# and fails after it (`after FILE`) naming each one the run left behind: every procctl, and every
# procctl that follows a SIGKILLed one, must remove what it created.
set -euo pipefail
what=$1 file=$2
root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
if [ -z "$root" ]; then echo "SKIPPED: needs cgroup v2 (none is mounted)"; exit 0; fi
list() { find "$root" -mindepth 2 -maxdepth 2 -type d -path "*/hbwatch/*" -printf '%p\n' 2>/dev/null | sort; }
case $what in
  before) mkdir -p "$(dirname "$file")"; list > "$file"; echo "cgroups under $root/hbwatch before the suite: $(wc -l < "$file")" ;;
  after)
    if [ ! -f "$file" ]; then echo "SKIPPED: needs the census taken before the suite ($file)"; exit 0; fi
    left=$(comm -13 "$file" <(list))
    if [ -n "$left" ]; then
      echo "cgroups the suite created and left behind (each procctl must remove its own):"
      echo "$left" | sed 's/^/  /'
      exit 1
    fi
    echo "cgroups under $root/hbwatch after the suite: $(list | wc -l), none of them new" ;;
  *) echo "usage: $0 before|after FILE" >&2; exit 2 ;;
esac
