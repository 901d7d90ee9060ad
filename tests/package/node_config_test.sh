#!/usr/bin/env bash
# `sojourn node --config FILE`: a node started from a TOML file takes its flags (a repeated one
# as an array), a flag on the command line overrides the file's value, a `[node]` section works
# too, and a misspelt key, a wrong value or a missing file is a usage error (exit 2) that names it.
# Usage: node_config_test.sh SOJOURN_CLI
set -uo pipefail
cli=$1
tmp=$(mktemp -d /tmp/sj-package-config-XXXXXX)
# start_node runs inside $(...), a subshell: the nodes' pids go to a file, not to a variable.
cleanup() {
  local p
  while read -r p; do
    kill "$p" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done < <(cat "$tmp/pids" 2>/dev/null)
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

# start_node LOG NAME ARGS...: runs `sojourn node ARGS` and prints the address it listens on.
start_node() {
  local log=$1 name=$2
  shift 2
  "$cli" node "$@" >"$log" 2>&1 &
  echo $! >>"$tmp/pids"
  for _ in $(seq 100); do
    local address
    address=$(sed -n "s/^node $name listening on //p" "$log")
    if [ -n "$address" ]; then echo "$address"; return 0; fi
    sleep 0.1
  done
  cat "$log" >&2
  return 1
}

cat >"$tmp/a.conf" <<'CONF'
# comments and blank lines are fine

name = "from-file"
listen = ["127.0.0.1:0"]
grace-ms = 500
data = ["k=1", "j={\"x\":2}"]
workers = 3
CONF

# 1. Everything from the file: the name, the listen address, both repeated --data values.
address=$(start_node "$tmp/a.log" from-file --config "$tmp/a.conf") || fail "no node from a.conf"
[ "$("$cli" call "$address" kv.get '["k"]')" = 1 ] || fail "data k from the file"
[ "$("$cli" call "$address" kv.get '["j"]')" = '{"x":2}' ] || fail "data j from the file"
info=$("$cli" info "$address" --json) || fail "info"
echo "$info" | grep -q '"name":"from-file"' || fail "name from the file: $info"

# 2. A command-line flag overrides the file's value; the others still come from the file.
address=$(start_node "$tmp/b.log" from-cli --config "$tmp/a.conf" --name from-cli --data k=5) || fail "no node with --name"
info=$("$cli" info "$address" --json)
echo "$info" | grep -q '"name":"from-cli"' || fail "the CLI's --name did not override: $info"
[ "$("$cli" call "$address" kv.get '["k"]')" = 5 ] || fail "the CLI's --data did not replace the file's"
[ "$("$cli" call "$address" kv.get '["j"]')" = null ] || fail "the file's data list is replaced, not merged"

# 3. The same keys under a [node] section, and top-level log-level.
printf 'log-level = "info"\n[node]\nname = "sectioned"\nlisten = "127.0.0.1:0"\n' >"$tmp/c.conf"
address=$(start_node "$tmp/c.log" sectioned --config "$tmp/c.conf") || fail "no node from a [node] section"
grep -q " info node: sectioned:" "$tmp/c.log" || fail "log-level from the file not applied"

# 4. Bad files: exit 2 and a message naming the problem; no node starts.
printf 'listen = "127.0.0.1:0"\nlisen = "x"\n' >"$tmp/bad.conf"
out=$("$cli" node --config "$tmp/bad.conf" 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q "lisen" || fail "misspelt key: rc $rc: $out"
printf 'listen = "127.0.0.1:0"\nworkers = 0\n' >"$tmp/range.conf"
out=$("$cli" node --config "$tmp/range.conf" 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q -- "--workers" || fail "out-of-range value: rc $rc: $out"
out=$("$cli" node --config "$tmp/missing.conf" 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$out" | grep -q "missing.conf" || fail "missing file: rc $rc: $out"
echo "PASS"
