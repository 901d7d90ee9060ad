#!/usr/bin/env bash
# Two builds of sojourn side by side (before/after a change): one node from each build dir's
# bin/, the same bench_roundtrip client and one Redis against both, in rounds that alternate
# the two nodes; then the median over rounds of each row's median, p99 and ratio to Redis.
# Usage: bash bench/run_ab.sh BUILD_A BUILD_B ROUNDS [node flags, e.g. --peer-isolation process]
# Environment: AB_CLIENT (default BUILD_B/bin) picks bench_roundtrip; AB_CLIENT=own runs each
# side's own (a change on the client side: each node is measured with its build's client);
# AB_BENCH_ARGS adds to its arguments (--only rev, say); AB_OUT keeps the CSVs there (default:
# a temp dir).
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n '2,10p' "$0"; exit 2; }
a=$1/bin b=$2/bin rounds=$3
shift 3
client=${AB_CLIENT:-$b}
client_a=$client client_b=$client
[[ $client == own ]] && client_a=$a client_b=$b
for exe in "$a/sojourn" "$b/sojourn" "$client_a/bench_roundtrip" "$client_b/bench_roundtrip"; do
  [[ -x $exe ]] || { echo "run_ab: $exe is missing" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "run_ab: redis-server is missing (Debian package redis-server)" >&2; exit 1; }
out=${AB_OUT:-$(mktemp -d)}
mkdir -p "$out"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
port=$((20000 + RANDOM % 30000))
redis-server --port "$port" --save '' --appendonly no --bind 127.0.0.1 >"$out/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  ( exec 3<>"/dev/tcp/127.0.0.1/$port"; printf 'PING\r\n' >&3; IFS= read -r -t 1 reply <&3; [[ $reply == +PONG* ]] ) 2>/dev/null && break
  sleep 0.05
done
start_node() {  # BIN NAME [flags...]: started here (not in a subshell), so cleanup stops it
  local bin=$1 name=$2
  shift 2
  "$bin/sojourn" node --listen 127.0.0.1:0 --name "$name" "$@" >"$out/$name.out" 2>"$out/$name.err" &
  pids+=($!)
}
node_address() {  # NAME -> the node's address, once it listens
  local name=$1 addr
  for _ in $(seq 200); do
    addr=$(sed -n "s/^node $name listening on //p" "$out/$name.out")
    if [[ -n $addr ]]; then echo "$addr"; return 0; fi
    sleep 0.05
  done
  echo "run_ab: node $name did not start:" >&2
  cat "$out/$name.err" >&2
  return 1
}
start_node "$a" a "$@"
start_node "$b" b "$@"
node_a=$(node_address a)
node_b=$(node_address b)
echo "A: $a ($node_a), B: $b ($node_b), clients: $client_a, $client_b, node flags: $*; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  for side in a b; do
    addr=$node_a bench=$client_a
    [[ $side == b ]] && addr=$node_b bench=$client_b
    # shellcheck disable=SC2086
    "$bench/bench_roundtrip" --sojourn "$addr" --redis "$port" --requests 1000 --warmup 200 --seconds 1 --rounds 4 \
      ${AB_BENCH_ARGS:-} --csv "$out/${side}_$r.csv" >/dev/null
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$(dirname "$0")/ab_summary.py" "$out"
