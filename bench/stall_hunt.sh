#!/usr/bin/env bash
# Many short pipelined REV runs at `process`, pinned to one CPU, looking for a stall:
# a run whose sojourn share overruns its --seconds by much (one request waiting long).
# Usage: bash bench/stall_hunt.sh BUILD_DIR RUNS [CPU]   (prints one line per run)
set -uo pipefail
build=$1; runs=$2; cpu=${3:-0}
bin=$build/bin
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$((20000 + RANDOM % 30000))
taskset -c "$cpu" redis-server --port "$port" --save '' --appendonly no --bind 127.0.0.1 >"$work/redis.log" 2>&1 &
pids+=($!)
sleep 0.3
for i in $(seq "$runs"); do
  taskset -c "$cpu" "$bin/sojourn" node --listen 127.0.0.1:0 --name hunt --peer-isolation process >"$work/node.out" 2>"$work/node.err" &
  node=$!
  addr=""
  for _ in $(seq 100); do
    addr=$(sed -n 's/^node hunt listening on //p' "$work/node.out"); [[ -n $addr ]] && break; sleep 0.05
  done
  out=$(taskset -c "$cpu" "$bin/bench_roundtrip" --sojourn "$addr" --redis "$port" --only rev --requests 1000 --warmup 200 --seconds 1 --rounds 2 2>&1)
  kill -TERM "$node" 2>/dev/null; wait "$node" 2>/dev/null
  pipe=$(echo "$out" | sed -n 's/.*pipelined EVALSHA *sojourn \([0-9]*\) in \([0-9.]*\) s.*/\1 \2/p')
  maxes=$(echo "$out" | sed -n 's/.*API *sojourn n=[0-9]* max=\([0-9]*\) µs.*/\1/p' | tr '\n' ' ')
  echo "run $i load $(cut -d' ' -f1 /proc/loadavg) pipelined: ${pipe:-MISSING} seq max us: $maxes"
  [[ -n $pipe ]] || echo "$out" >&2
done
