#!/bin/sh
# Starts a small tree and writes its pids to $1: a child, a grandchild, and a grandchild that
# daemonizes (double fork plus setsid), leaving the tree. Then waits.
out=$1
sleep 1001 &
echo $! >> "$out"
sh -c 'sleep 1002 & echo $! >> "$1"; wait' tree-child "$out" &
echo $! >> "$out"
sh -c 'setsid sleep 1003 & echo $! >> "$1"' daemonizer "$out"   # its parent exits at once
echo ready >> "$out"
wait
