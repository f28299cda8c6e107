#!/usr/bin/env bash
# Runs the issue-2 measurement series: every configuration 3 times, the
# shared transport (mux) and the NetworkTransport-per-group baseline (net)
# alternating, and prints each run's line. Usage: ./run.sh [idle|write|all]
set -euo pipefail
cd "$(dirname "$0")"
go build -o /tmp/raftbench ./raftbench
what=${1:-all}
runs=${RUNS:-3}
if [ "$what" = idle ] || [ "$what" = all ]; then
  for g in 64 256; do
    for i in $(seq "$runs"); do
      /tmp/raftbench -mode idle -groups "$g" -transport mux
      /tmp/raftbench -mode idle -groups "$g" -transport net
      /tmp/raftbench -mode idle -groups "$g" -transport mux -commit-timeout 50ms
    done
  done
fi
if [ "$what" = write ] || [ "$what" = all ]; then
  for cfg in "1 1" "64 1" "1 64" "64 64"; do
    set -- $cfg
    for i in $(seq "$runs"); do
      /tmp/raftbench -mode write -groups "$1" -batch "$2" -window 5s -transport mux 2>/dev/null
      /tmp/raftbench -mode write -groups "$1" -batch "$2" -window 5s -transport net 2>/dev/null
    done
  done
fi
if [ "$what" = stability ]; then
  /tmp/raftbench -mode idle -groups 256 -transport mux -window 60s
fi
