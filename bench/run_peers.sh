#!/usr/bin/env bash
# sojourn side by side with its peers (issue 15), on loopback, in one run: Redis for client-
# server calls and remote evaluation (GET, EVALSHA), Erlang for agent hops (a remote
# spawn(Node, Fun) of a closure carrying the state, and its reply: bench/peers/hop.erl),
# bubblewrap for jail start. Each comparison alternates the two systems in blocks. Prints
# one table; --csv FILE writes it as id,unit,sojourn,peer,peer_name,ratio rows (ratio =
# sojourn/peer: for times lower is better, for throughputs higher is better).
# Usage: bash bench/run_peers.sh [--quick] [--csv FILE] [--pin same|split] [--hops-only]
# --pin places the round-trip comparisons' servers (Redis, the sojourn nodes and their guests)
# on CPU 0 and their client on CPU 0 (same) or CPU 1 (split), identically for both systems:
# unpinned, a loopback round trip on a VM is bimodal (waking an idle vCPU), for Redis too.
# The hop rows follow it: same puts bench_agent_hops and both Erlang VMs (one scheduler each,
# +S 1:1) on CPU 0; split puts the Erlang VM the closure runs on on CPU 0 and the spawning one
# on CPU 1, and bench_agent_hops (its nodes share one process) on CPUs 0-1 (docs/bench.md).
# --hops-only runs only the hop rows (sojourn and Erlang).
# Environment: SOJOURN_BUILD_DIR (default build); SOJOURN_BENCH_NO_BUILD=1 runs the
# binaries as they are; SOJOURN_BUILD_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
csv=""
pin=""
hops_only=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) quick=1 ;;
    --csv) [[ $# -ge 2 ]] || { echo "run_peers: --csv expects a file" >&2; exit 2; }; csv=$2; shift ;;
    --pin) [[ $# -ge 2 && ( $2 == same || $2 == split ) ]] || { echo "run_peers: --pin expects same or split" >&2; exit 2; }; pin=$2; shift ;;
    --hops-only) hops_only=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run_peers: unknown option $1 (usage: bash bench/run_peers.sh [--quick] [--csv FILE] [--pin same|split] [--hops-only])" >&2; exit 2 ;;
  esac
  shift
done

# Prefixes for the round-trip comparisons' servers and client (empty: the kernel places them),
# and for the hops: the Erlang VM a closure is spawned on (the server), the one spawning it
# (the client), and bench_agent_hops, whose three nodes are threads of one process.
server_cpu=()
client_cpu=()
hop_server_cpu=()
hop_client_cpu=()
hop_sojourn_cpu=()
erl_pin_flags=()
if [[ -n $pin ]]; then
  command -v taskset >/dev/null || { echo "run_peers: --pin needs taskset (Debian package util-linux)" >&2; exit 2; }
  [[ $pin == same || $(nproc) -ge 2 ]] || { echo "run_peers: --pin split needs two CPUs" >&2; exit 2; }
  server_cpu=(taskset -c 0)
  if [[ $pin == same ]]; then client_cpu=(taskset -c 0); else client_cpu=(taskset -c 1); fi
  hop_server_cpu=("${server_cpu[@]}")
  hop_client_cpu=("${client_cpu[@]}")
  # One process cannot have its nodes on different CPUs from the outside: split gives it both.
  if [[ $pin == same ]]; then hop_sojourn_cpu=(taskset -c 0); else hop_sojourn_cpu=(taskset -c 0,1); fi
  # One scheduler per VM on its one CPU: more would only take turns on it (and spin while idle).
  erl_pin_flags=(+S 1:1)
fi

build=${SOJOURN_BUILD_DIR:-build}
bin=$build/bin
if [[ ${SOJOURN_BENCH_NO_BUILD:-0} != 1 ]]; then
  [[ -f $build/CMakeCache.txt ]] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build "$build" -j "${SOJOURN_BUILD_JOBS:-2}" --target bench_roundtrip bench_agent_hops bench_jail sojourn_cli sojourn-guest
fi
for exe in bench_roundtrip bench_agent_hops bench_jail sojourn; do
  [[ -x $bin/$exe ]] || { echo "run_peers: $bin/$exe is missing (build it, or unset SOJOURN_BENCH_NO_BUILD)" >&2; exit 1; }
done

if [[ $quick == 1 ]]; then
  rt_args=(--requests 1000 --warmup 200 --seconds 1 --rounds 4)
  hops=200 erl_samples=300 jail_runs=100
else
  rt_args=(--requests 5000 --warmup 500 --seconds 3 --rounds 5)
  hops=400 erl_samples=1000 jail_runs=300
fi

# The peers: Debian packages, installed when missing (as root, or with sudo); a peer that is
# still missing is named, and its rows are left unmeasured.
declare -A peer_package=([redis-server]=redis-server [erl]=erlang-base [erlc]=erlang-base [bwrap]=bubblewrap)
missing_packages=()
for cmd in redis-server erl erlc bwrap; do
  command -v "$cmd" >/dev/null || missing_packages+=("${peer_package[$cmd]}")
done
if [[ ${#missing_packages[@]} -gt 0 ]]; then
  mapfile -t missing_packages < <(printf '%s\n' "${missing_packages[@]}" | sort -u)
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  echo "run_peers: installing ${missing_packages[*]}"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing_packages[@]}"; } >/dev/null; then
    echo "run_peers: could not install ${missing_packages[*]}" >&2
  fi
fi
have_redis=1 have_erlang=1 have_bwrap=1
command -v redis-server >/dev/null || { have_redis=0; echo "run_peers: peer missing: redis-server (Debian package redis-server): cs_* and rev_* rows not measured" >&2; }
{ command -v erl >/dev/null && command -v erlc >/dev/null; } ||
  { have_erlang=0; echo "run_peers: peer missing: erl/erlc (Debian package erlang-base): hop_* rows have no peer" >&2; }
command -v bwrap >/dev/null || { have_bwrap=0; echo "run_peers: peer missing: bwrap (Debian package bubblewrap): jail_start has no peer" >&2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # erl starts epmd as a daemon; stop it only if this run started it.
  [[ ${started_epmd:-0} == 1 ]] && epmd -kill >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rows=()  # "id|unit|sojourn|peer|peer_name"
add_row() { rows+=("$1|$2|$3|${4:-}|${5:-}"); }
csv_value() { awk -F, -v id="$2" -v col="$3" '$1 == id { print $col }' "$1"; }

# --- Redis: CS and REV at the process and trusted levels ------------------------------
start_redis() {
  port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  redis_answers() {
    ( exec 3<>"/dev/tcp/127.0.0.1/$1"; printf 'PING\r\n' >&3; IFS= read -r -t 1 reply <&3; [[ $reply == +PONG* ]] ) 2>/dev/null
  }
  for _ in 1 2 3 4 5; do
    local port=$((20000 + RANDOM % 30000))
    port_taken "$port" && continue
    "${server_cpu[@]}" redis-server --port "$port" --save '' --appendonly no --bind 127.0.0.1 >"$work/redis.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 100); do
      if redis_answers "$port"; then redis_port=$port; return 0; fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -TERM "$pid" 2>/dev/null || true
  done
  echo "run_peers: redis-server did not start:" >&2
  cat "$work/redis.log" >&2
  return 1
}

# Started here, not inside $(...): a node started in a subshell would be missing from
# `pids` (the subshell's copy) and outlive the script.
start_node() {  # NAME [node flags...]
  local name=$1
  shift
  "${server_cpu[@]}" "$bin/sojourn" node --listen 127.0.0.1:0 --name "$name" "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
}
node_address() {  # NAME -> prints the node's address, once it listens
  local name=$1 addr
  for _ in $(seq 200); do
    addr=$(sed -n "s/^node $name listening on //p" "$work/$name.out")
    if [[ -n $addr ]]; then echo "$addr"; return 0; fi
    sleep 0.05
  done
  echo "run_peers: the sojourn node $name did not start:" >&2
  cat "$work/$name.err" >&2
  return 1
}

echo "revision: $(git describe --always --dirty 2>/dev/null || echo unknown), build: $build, $( [[ $quick == 1 ]] && echo quick || echo full ) run"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "round trips: $(case $pin in same) echo "servers and client pinned to CPU 0" ;; split) echo "servers pinned to CPU 0, client to CPU 1" ;; *) echo "unpinned" ;; esac)"
echo "hops: $(case $pin in same) echo "bench_agent_hops and both Erlang VMs (+S 1:1) pinned to CPU 0" ;; split) echo "Erlang VMs (+S 1:1) on CPU 0 (spawned on) and CPU 1 (spawning), bench_agent_hops on CPUs 0-1" ;; *) echo "unpinned" ;; esac)"

if [[ $have_redis == 1 && $hops_only == 0 ]]; then
  start_redis
  redis_name="redis $(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')"
  start_node process --peer-isolation process
  start_node trusted --peer-isolation trusted
  start_node fresh --peer-isolation process --warm-guests 0
  process_node=$(node_address process)
  trusted_node=$(node_address trusted)
  fresh_node=$(node_address fresh)
  for target in process trusted fresh; do
    case $target in process) addr=$process_node ;; trusted) addr=$trusted_node ;; fresh) addr=$fresh_node ;; esac
    echo "== bench_roundtrip: node '$target' ($addr) vs $redis_name"
    "${client_cpu[@]}" "$bin/bench_roundtrip" --sojourn "$addr" --redis "$redis_port" "${rt_args[@]}" --csv "$work/rt_$target.csv" |
      sed -n '/^| /p'
  done
  p=$work/rt_process.csv t=$work/rt_trusted.csv f=$work/rt_fresh.csv
  add_row cs_latency us "$(csv_value "$p" cs_blocking 3)" "$(csv_value "$p" cs_blocking 5)" "$redis_name GET"
  add_row cs_latency_coroutine us "$(csv_value "$p" cs_coroutine 3)" "$(csv_value "$p" cs_coroutine 5)" "$redis_name GET"
  add_row cs_throughput req/s "$(csv_value "$p" cs_throughput 3)" "$(csv_value "$p" cs_throughput 5)" "$redis_name pipelined GET"
  add_row rev_trusted_latency us "$(csv_value "$t" rev_blocking 3)" "$(csv_value "$t" rev_blocking 5)" "$redis_name EVALSHA"
  add_row rev_trusted_throughput req/s "$(csv_value "$t" rev_throughput 3)" "$(csv_value "$t" rev_throughput 5)" "$redis_name pipelined EVALSHA"
  add_row rev_process_latency us "$(csv_value "$p" rev_blocking 3)" "$(csv_value "$p" rev_blocking 5)" "$redis_name EVALSHA"
  add_row rev_process_p99 us "$(csv_value "$p" rev_blocking 4)" "$(csv_value "$p" rev_blocking 6)" "$redis_name EVALSHA"
  add_row rev_process_throughput req/s "$(csv_value "$p" rev_throughput 3)" "$(csv_value "$p" rev_throughput 5)" "$redis_name pipelined EVALSHA"
  add_row rev_process_fresh_latency us "$(csv_value "$f" rev_blocking 3)" "$(csv_value "$f" rev_blocking 5)" "$redis_name EVALSHA"
  add_row rev_process_fresh_throughput req/s "$(csv_value "$f" rev_throughput 3)" "$(csv_value "$f" rev_throughput 5)" "$redis_name pipelined EVALSHA"
fi

# --- Erlang: agent hops ---------------------------------------------------------------
erl_hop() {  # BYTES -> "median_us"
  "${hop_client_cpu[@]}" erl "${erl_pin_flags[@]}" -sname "hopa$$" -setcookie "$cookie" -pa "$work" -noshell -run hop main "peerb$$@$host" "$1" "$erl_samples" |
    awk 'NF == 3 { print $1 }'
}
# The two systems alternate in blocks, two each: sojourn, Erlang, sojourn, Erlang; a row is
# the mean of a system's two block medians (a burst of other load lands in one block, not in
# one system's only figure). Each sojourn row's timed tour follows an untimed one of 20 hops
# (bench_agent_hops' default): a node's first 1 MB hops are several times slower than the
# rest; hop.erl warms up too. 1 MB rows take a quarter of the hops.
sojourn_hops() {  # BLOCK
  echo "== bench_agent_hops $hops --latency-only (block $1 of 2)"
  "${hop_sojourn_cpu[@]}" "$bin/bench_agent_hops" "$hops" --latency-only --csv "$work/hops$1.csv" | sed -n '/agent hop\|state /p'
}
erl_hop_4k=() erl_hop_1m=()
sojourn_hops 1
if [[ $have_erlang == 1 ]]; then
  cookie=sojourn$RANDOM$RANDOM
  epmd -names >/dev/null 2>&1 || started_epmd=1
  host=$(hostname -s)
  erlc -o "$work" bench/peers/hop.erl
  "${hop_server_cpu[@]}" erl "${erl_pin_flags[@]}" -sname "peerb$$" -setcookie "$cookie" -pa "$work" -noshell >"$work/erl.log" 2>&1 &
  pids+=($!)
  sleep 1
  echo "== Erlang $(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().') remote spawn + reply"
  erl_hop_4k+=("$(erl_hop 4096)")
  erl_hop_1m+=("$(erl_hop 1048576)")
fi
sojourn_hops 2
if [[ $have_erlang == 1 ]]; then
  erl_hop_4k+=("$(erl_hop 4096)")
  erl_hop_1m+=("$(erl_hop 1048576)")
  echo "   erlang 4 KB: ${erl_hop_4k[*]} us; 1 MB: ${erl_hop_1m[*]} us"
fi
mean() { printf '%s\n' "$@" | awk 'NF { s += $1; n++ } END { if (n) printf "%.1f", s / n }'; }
sojourn_hop() { mean "$(csv_value "$work/hops1.csv" "$1" 3)" "$(csv_value "$work/hops2.csv" "$1" 3)"; }
echo "   sojourn, blocks 1 and 2: $(for id in hop_trusted_4k hop_process_4k hop_trusted_1m hop_process_1m; do
  printf '%s %s/%s us; ' "$id" "$(csv_value "$work/hops1.csv" $id 3)" "$(csv_value "$work/hops2.csv" $id 3)"; done)"
erl_name="erlang spawn(Node, Fun) + reply"
add_row hop_trusted_4k us "$(sojourn_hop hop_trusted_4k)" "$(mean "${erl_hop_4k[@]}")" "$erl_name"
add_row hop_process_4k us "$(sojourn_hop hop_process_4k)" "$(mean "${erl_hop_4k[@]}")" "$erl_name"
add_row hop_trusted_1m us "$(sojourn_hop hop_trusted_1m)" "$(mean "${erl_hop_1m[@]}")" "$erl_name"
add_row hop_process_1m us "$(sojourn_hop hop_process_1m)" "$(mean "${erl_hop_1m[@]}")" "$erl_name"

# --- bubblewrap: jail start -------------------------------------------------------------
if [[ $hops_only == 0 ]]; then
  echo "== bench_jail --runs $jail_runs"
  "$bin/bench_jail" --runs "$jail_runs" --csv "$work/jail.csv" | sed -n '/^start + run/,/^$/p'
  bwrap_name="bwrap --unshare-all --ro-bind / / true"
  bwrap=""
  [[ $have_bwrap == 1 ]] && bwrap=$(csv_value "$work/jail.csv" bwrap_true 3)
  add_row jail_start us "$(csv_value "$work/jail.csv" jail_cold 3)" "$bwrap" "$bwrap_name"
  add_row jail_start_warm us "$(csv_value "$work/jail.csv" jail_warm 3)" "$bwrap" "$bwrap_name"
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '| %-28s | %-5s | %12s | %12s | %8s | %-40s |\n' id unit sojourn peer ratio peer
printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------------" "-------" "-------------:" "-------------:" "---------:" "------------------------------------------"
[[ -n $csv ]] && echo "id,unit,sojourn,peer,peer_name,ratio" >"$csv"
unmeasured=0
for row in "${rows[@]}"; do
  IFS='|' read -r id unit sojourn peer peer_name <<<"$row"
  ratio=""
  if [[ -n $sojourn && -n $peer ]]; then
    ratio=$(awk -v a="$sojourn" -v b="$peer" 'BEGIN { if (b > 0) printf "%.3f", a / b }')
  else
    unmeasured=1
  fi
  printf '| %-28s | %-5s | %12s | %12s | %8s | %-40s |\n' "$id" "$unit" "${sojourn:--}" "${peer:--}" "${ratio:--}" "${peer_name:--}"
  # peer_name is quoted (RFC 4180): "spawn(Node, Fun)" holds a comma.
  [[ -n $csv ]] && echo "$id,$unit,$sojourn,$peer,\"${peer_name//\"/\"\"}\",$ratio" >>"$csv"
done
[[ $unmeasured == 0 ]] || { echo "run_peers: some rows were not measured (see the messages above)" >&2; exit 1; }
