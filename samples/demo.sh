#!/usr/bin/env bash
# The demo cluster: three `sojourn node` daemons on loopback, each with its own local data,
# then the four paradigms of code mobility between them through the CLI (client-server,
# remote evaluation, code-on-demand, a mobile agent's tour), a node that serves only
# mutual TLS, and the C++ samples.
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
# sets the variable named by $2 to the address it bound. With --http among its flags, it
# also waits for the dashboard and sets http_NAME to its URL.
start_node() {
  local name=$1 var=$2 want="listening on"
  shift 2
  [[ " $* " == *" --http "* ]] && want="dashboard at"
  "$bin/sojourn" node --listen 127.0.0.1:0 --name "$name" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 200); do
    if grep -q "$want" "$work/$name.out" 2>/dev/null; then
      printf -v "$var" '%s' "$(sed -n "s/^node $name listening on //p" "$work/$name.out")"
      printf -v "http_$name" '%s' "$(sed -n "s/^node $name dashboard at \([^ ]*\).*/\1/p" "$work/$name.out")"
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
    [ -n "${here:-}" ] && arg=${arg/#$here\//samples/}
    if [[ $arg =~ ^[A-Za-z0-9_./:=,+-]+$ ]]; then shown+=" $arg"; else shown+=" '${arg//\'/\'\\\'\'}'"; fi
  done
  printf '%s\n' "$shown"
  "$@"
}

here=$(cd "$(dirname "$0")" && pwd)
say "== sojourn demo: three nodes on loopback, each with its own data, exchanging code and agents =="
# Each node also serves its dashboard (--http, port 0 like --listen: the bound one is printed).
start_node a a --data 'catalogue={"disk": 79, "ram": 35}' --data 'readings=[12, 17, 9]' \
  --publish "$here/modules/stats.lua" --http 127.0.0.1:0
start_node b b --data 'catalogue={"disk": 72, "ram": 41}' --data 'readings=[30, 31]' --http 127.0.0.1:0
start_node c c --data 'catalogue={"disk": 88}' --data 'readings=[5, 50, 500, 5000]' --http 127.0.0.1:0
echo "node a listening on $a (publishes module stats)"
echo "node b listening on $b"
echo "node c listening on $c"
echo "dashboards (open in a browser while the demo runs; metrics at /metrics): a $http_a  b $http_b  c $http_c"
# Where each node runs code from peers: microvm where KVM can run the guest, else process.
grep -h "runs code from peers" "$work/a.out" "$work/b.out" "$work/c.out"

say "-- 1. client-server: the service and its data stay at node a; only the answer comes back"
run "$bin/sojourn" call "$a" kv.get '["catalogue"]'
run "$bin/sojourn" call "$b" kv.put '["catalogue", {"disk": 72, "ram": 41, "cpu": 199}]'

say "-- 2. remote evaluation: our code travels to node b's data, runs there, the result comes back"
run "$bin/sojourn" eval "$b" -e 'local c = node.call("kv.get", "catalogue"); return c.disk * 1.2, node.call("node.info").name'
run "$bin/sojourn" eval "$c" --json -e 'local cap = ...; return node.call("kv.get", "catalogue").disk <= cap' --args '[75]'

say "-- 3. code-on-demand: node a's code comes here (hash-checked, cached) and runs on our own data"
run "$bin/sojourn" fetch "$a" stats --cache "$work/cache" --data 'readings=[4, 8, 15, 16, 23, 42]' --args '["readings"]'
echo "(again: the hash is in the cache, so no code is sent)"
run "$bin/sojourn" fetch "$a" stats --cache "$work/cache" --data 'readings=[1, 2]' --args '["readings"]'

say "-- 4. mobile agent: code + state start at a, visit b and c, and report home to a"
run "$bin/sojourn" launch "$here/agents/price_hunter.lua" --at "$a" --itinerary "$b,$c" --state '{"item":"disk"}' --wait

say "-- tracking: a courier agent goes to c and waits there for a message sent through its home"
echo "\$ sojourn launch ${here#$PWD/}/agents/courier.lua --at $a --itinerary $c"
courier=$("$bin/sojourn" launch "$here/agents/courier.lua" --at "$a" --itinerary "$c")
echo "$courier"
for _ in $(seq 100); do
  "$bin/sojourn" ps "$c" 2>/dev/null | grep -q " asleep" && break  # at c, waiting for its message
  sleep 0.05
done
run "$bin/sojourn" locate "$courier" --home "$a"
run "$bin/sojourn" ps "$c"
run "$bin/sojourn" send "$courier" '{"deliver": "two disks"}' --home "$a"
run "$bin/sojourn" wait "$courier" --home "$a"
run "$bin/sojourn" call "$c" kv.get '["delivery"]'

say "-- a runaway chunk is stopped by the sandbox; the node keeps serving"
run "$bin/sojourn" eval "$a" -e 'while true do end' --cpu 1000000 || echo "(exit code $?: the node answered with an error)"
run "$bin/sojourn" info "$a"

say "-- observing: node a's live view in the terminal (sojourn top; without --once it refreshes in place)"
http_addr=${http_a#http://}
run "$bin/sojourn" top "${http_addr%/}" --once

say "-- mutual TLS: a cluster CA, one identity per node and client; a client without one is refused"
run "$bin/sojourn" ca init "$work/ca" --name "demo CA"
run "$bin/sojourn" keygen --name d --ca "$work/ca" --out "$work/d"
run "$bin/sojourn" keygen --name me --ca "$work/ca" --out "$work/me"
start_node d d --tls "$work/d" --data 'catalogue={"disk": 70}'
head -n 1 "$work/d.out"
run "$bin/sojourn" call --tls "$work/me" "$d" kv.get '["catalogue"]'
run "$bin/sojourn" call "$d" kv.get '["catalogue"]' || echo "(exit code $?: node d serves only clients with a certificate of its CA)"

say "-- the four paradigms from C++ (samples/*.cpp)"
"$bin/client_server"
"$bin/remote_eval"
"$bin/code_on_demand"
"$bin/mobile_agent"

say "-- stopping the nodes"
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
wait "${pids[@]}"
pids=()
grep -h "stopped" "$work/a.out" "$work/b.out" "$work/c.out"
say "demo finished"
