#!/usr/bin/env bash
# redis-benchmark against cmd/gridkv beside a real redis-server, in the same
# run: redis-server (no persistence), one gridkv node, and a cluster of three
# gridkv processes (the benchmark talks to the first; 2/3 of its keys live
# in groups another node leads, so those commands are forwarded). Each
# target runs `redis-benchmark -t set,get -n N -c 50 -P 1` and `-P 16`,
# ROUNDS times, the targets taking turns; it prints every run's requests/s
# as CSV (round,target,pipeline,test,rps) and then the medians.
#
#   benchmarks/resp/run.sh            # N=200000, ROUNDS=3
#   N=20000 ROUNDS=1 benchmarks/resp/run.sh
#
# Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-200000}
ROUNDS=${ROUNDS:-3}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/gridkv" ./cmd/gridkv

redis-server --port 16379 --save '' --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
pids+=($!)
# One node: a cluster of one, one replica per group.
"$tmp/gridkv" -node-id solo -resp-addr 127.0.0.1:16380 -gossip-addr 127.0.0.1:17380 -admin-addr "" \
  -log-level warn 2>"$tmp/solo.log" &
pids+=($!)
# Three nodes formed together.
seeds=127.0.0.1:17381,127.0.0.1:17382,127.0.0.1:17383
for i in 1 2 3; do
  "$tmp/gridkv" -node-id "n$i" -resp-addr "127.0.0.1:1638$i" -gossip-addr "127.0.0.1:1738$i" -admin-addr "" \
    -seeds "$seeds" -bootstrap-expect 3 -log-level warn 2>"$tmp/n$i.log" &
  pids+=($!)
done

# Ready: a SET answered (the cluster has formed and elected its leaders).
for port in 16379 16380 16381 16382 16383; do
  for _ in $(seq 600); do
    if [ "$(redis-cli -p "$port" SET ready 1 2>/dev/null)" = "OK" ]; then break; fi
    sleep 0.1
  done
  [ "$(redis-cli -p "$port" SET ready 1)" = "OK" ] || { echo "port $port never ready"; cat "$tmp"/*.log; exit 1; }
done

out="$tmp/runs.csv"
for round in $(seq "$ROUNDS"); do
  for target in redis:16379 gridkv-1node:16380 gridkv-3nodes:16381; do
    name=${target%%:*} port=${target##*:}
    for p in 1 16; do
      redis-benchmark -p "$port" -t set,get -n "$N" -c 50 -P "$p" --csv 2>/dev/null |
        awk -F'"' -v r="$round" -v t="$name" -v p="$p" 'NR>1 {print r "," t "," p "," $2 "," $4}' | tee -a "$out"
    done
  done
done
echo "# medians over $ROUNDS rounds (requests/s), and the ratio to redis-server in the same run"
# Sorted by key, then requests/s: the middle row of each key is its median.
sort -t, -k2,2 -k3,3n -k4,4 -k5,5g "$out" | awk -F, '
  { k = $2 "," $3 "," $4; if (k != last) { keys[++nk] = k; last = k }; c[k]++; val[k, c[k]] = $5 }
  END {
    for (i = 1; i <= nk; i++) { k = keys[i]; med[k] = val[k, int((c[k] + 1) / 2)] }
    for (i = 1; i <= nk; i++) { k = keys[i]; split(k, f, ","); r = med["redis," f[2] "," f[3]]
      printf "%s,%s,%.2f\n", k, med[k], (r > 0 ? med[k] / r : 0) }
  }'
