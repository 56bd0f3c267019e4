#!/usr/bin/env bash
# Durable registrations on a 3-node muster cluster, driven by wrk: the
# quick A/B loop behind the cluster experiments in BENCHMARKS.md (the
# figures to compare with etcd come from `muster-bench --cluster 3`).
#
#   crates/muster-bench/wrk/cluster-register.sh [MUSTER_BIN] [SECONDS] [MODE]
#
# MODE is `spread` (21 connections to each node, the default) or `leader`
# (63 connections to the leader). The three agents are pinned to core 0 and
# wrk to core 1, on loopback ports 17801-17803 (HTTP) and 17711-17713
# (cluster), each with a fresh data directory under a temporary directory
# that is removed at the end. Needs `wrk` (apt-get install wrk).
set -euo pipefail

bin=${1:-target/release/muster}
secs=${2:-10}
mode=${3:-spread}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
peers=1=127.0.0.1:17711,2=127.0.0.1:17712,3=127.0.0.1:17713
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for i in 1 2 3; do
  MUSTER_LOG=warn taskset -c 0 "$bin" agent --node-id "$i" --peers "$peers" \
    --cluster-addr "127.0.0.1:1771$i" --http-addr "127.0.0.1:1780$i" \
    --data-dir "$work/d$i" >"$work/n$i.log" 2>&1 &
  pids+=($!)
done

leader=""
for _ in $(seq 1 100); do
  leader=$(curl -sf --noproxy '*' 127.0.0.1:17801/v1/cluster |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"] or "")' 2>/dev/null || true)
  [ -n "$leader" ] && curl -sf --noproxy '*' 127.0.0.1:17802/healthz >/dev/null &&
    curl -sf --noproxy '*' 127.0.0.1:17803/healthz >/dev/null && break
  sleep 0.1
done
[ -n "$leader" ] || { echo "no leader within 10 s" >&2; exit 1; }

if [ "$mode" = leader ]; then
  targets=("$leader:63")
else
  targets=(1:21 2:21 3:21)
fi
drivers=()
for t in "${targets[@]}"; do
  node=${t%%:*} conns=${t##*:}
  taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" -s "$here/put.lua" \
    "http://127.0.0.1:1780$node" >"$work/wrk$node.out" 2>&1 &
  drivers+=($!)
done
wait "${drivers[@]}"

total=$(cat "$work"/wrk*.out | awk '/Requests\/sec/ {s += $2} END {printf "%.0f", s}')
errors=$(cat "$work"/wrk*.out | awk '/Non-2xx/ {s += $NF} /timeout/ {s += $NF} END {print s + 0}')
entries=$(curl -sf --noproxy '*' "127.0.0.1:1780$leader/v1/cluster" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["commit_index"])')
echo "mode=$mode leader=$leader writes/s=$total errors=$errors log entries=$entries"
grep -h "Latency" "$work"/wrk*.out
