#!/bin/sh
# Starts a small tree and writes its pids to $1: a child, a grandchild, and a grandchild that
# daemonizes (double fork plus setsid), leaving the tree. Writes "ready" only once every pid
# is recorded (the backgrounded child reports through a FIFO), then waits.
out=$1
sync="$out.sync"
mkfifo "$sync"
sleep 1001 &
echo $! >> "$out"
sh -c 'sleep 1002 & echo $! >> "$1"; echo recorded > "$2"; wait' tree-child "$out" "$sync" &
echo $! >> "$out"
read recorded < "$sync"   # blocks until the tree child has written its grandchild's pid
rm -f "$sync"
sh -c 'setsid sleep 1003 & echo $! >> "$1"' daemonizer "$out"   # its parent exits at once
echo ready >> "$out"
wait
