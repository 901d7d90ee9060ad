#!/usr/bin/env bash
# The demo cluster: two `sojourn node` daemons on loopback, then client-server and
# remote evaluation between them through the CLI and the C++ samples.
# Usage: samples/demo.sh [BUILD_DIR]   (bootstrap.sh demo builds first, then runs this)
set -euo pipefail
build=${1:-build}
bin="$build/bin"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a node in the background (in this shell, so that its pid is ours to stop) and
# sets the variable named by $2 to the address it bound.
start_node() {
  local name=$1
  "$bin/sojourn" node --listen 127.0.0.1:0 --name "$name" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 200); do
    if grep -q "listening on" "$work/$name.out" 2>/dev/null; then
      printf -v "$2" '%s' "$(sed -n "s/^node $name listening on //p" "$work/$name.out")"
      return
    fi
    sleep 0.05
  done
  echo "node $name did not start:" >&2
  cat "$work/$name.err" >&2
  exit 1
}

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold="" plain=""; fi
say() { printf '\n%s%s%s\n' "$bold" "$*" "$plain"; }
# Echoes a command the way one would type it (single quotes where needed), then runs it.
run() {
  local shown="\$" arg
  for arg in "${@/#$bin\//}"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,+-]+$ ]]; then shown+=" $arg"; else shown+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$shown"
  "$@"
}

say "== sojourn demo: nodes on loopback exchanging requests and code =="
start_node a a
start_node b b
echo "node a listening on $a"
echo "node b listening on $b"

say "-- client-server: the service and its data stay at node a"
run "$bin/sojourn" call "$a" kv.put '["price:disk", {"eur": 79, "shop": "a"}]'
run "$bin/sojourn" call "$a" kv.get '["price:disk"]'
run "$bin/sojourn" call "$b" kv.put '["price:disk", {"eur": 72, "shop": "b"}]'

say "-- remote evaluation: the code travels to the data and runs there"
run "$bin/sojourn" eval "$a" -e 'local p = node.call("kv.get", "price:disk"); return p.eur * 1.2, node.call("node.info").name'
run "$bin/sojourn" eval "$b" --json -e 'local cap = ...; local p = node.call("kv.get", "price:disk"); return p.eur <= cap' --args '[75]'

say "-- a runaway chunk is stopped by the sandbox; the node keeps serving"
run "$bin/sojourn" eval "$a" -e 'while true do end' --cpu 1000000 || echo "(exit code $?: the node answered with an error)"
run "$bin/sojourn" info "$a"

say "-- the same paradigms from C++ (samples/client_server.cpp, samples/remote_eval.cpp)"
"$bin/client_server"
"$bin/remote_eval"

say "-- stopping the nodes"
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
wait "${pids[@]}"
pids=()
grep -h "stopped" "$work/a.out" "$work/b.out"
say "demo finished"
