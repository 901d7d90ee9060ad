#!/usr/bin/env bash
# The round-trip benchmark, sojourn against Redis on loopback: builds what it needs,
# starts a private redis-server and a `sojourn node` on free ports, runs
# bench_roundtrip against both, and stops them on exit.
# Usage: bash bench/run_roundtrip.sh [bench_roundtrip options, e.g. --requests 2000 --in-flight 32]
# Environment: SOJOURN_BUILD_DIR (default build); SOJOURN_BENCH_NO_BUILD=1 runs the
# binaries as they are; SOJOURN_BUILD_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SOJOURN_BUILD_DIR:-build}
bin=$build/bin

if [[ ${SOJOURN_BENCH_NO_BUILD:-0} != 1 ]]; then
  [[ -f $build/CMakeCache.txt ]] || cmake -S . -B "$build" -G Ninja
  # A no-op when up to date; otherwise the figures would describe stale code.
  cmake --build "$build" -j "${SOJOURN_BUILD_JOBS:-2}" --target bench_roundtrip sojourn_cli
fi
for exe in "$bin/bench_roundtrip" "$bin/sojourn"; do
  [[ -x $exe ]] || { echo "run_roundtrip: $exe is missing" >&2; exit 1; }
done

if ! command -v redis-server >/dev/null; then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  echo "installing redis-server"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
redis_answers() {  # port -> success once redis replies +PONG
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf 'PING\r\n' >&3
    IFS= read -r -t 1 reply <&3
    [[ $reply == +PONG* ]]
  ) 2>/dev/null
}

# Redis cannot pick its own port (0 means "no TCP"): try random free ones; another
# process may take the port between the check and the bind, hence the retries.
redis_port=""
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 30000))
  port_taken "$port" && continue
  redis-server --port "$port" --save '' --appendonly no --bind 127.0.0.1 >"$work/redis.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    if redis_answers "$port"; then redis_port=$port; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [[ -n $redis_port ]] && break
  kill -TERM "$pid" 2>/dev/null || true
done
if [[ -z $redis_port ]]; then
  echo "run_roundtrip: redis-server did not start:" >&2
  cat "$work/redis.log" >&2
  exit 1
fi

# Port 0: the node binds a free port itself and prints it, with no race.
"$bin/sojourn" node --listen 127.0.0.1:0 --name bench >"$work/node.out" 2>"$work/node.err" &
pids+=($!)
node_addr=""
for _ in $(seq 100); do
  node_addr=$(sed -n 's/^node bench listening on //p' "$work/node.out")
  [[ -n $node_addr ]] && break
  sleep 0.05
done
if [[ -z $node_addr ]]; then
  echo "run_roundtrip: the sojourn node did not start:" >&2
  cat "$work/node.err" >&2
  exit 1
fi

echo "revision: $(git describe --always --dirty 2>/dev/null || echo unknown), build: $build"
# Other work on the machine skews sojourn (several threads per request) more than Redis.
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin/bench_roundtrip" --sojourn "$node_addr" --redis "$redis_port" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg) (includes this benchmark's own threads)"
