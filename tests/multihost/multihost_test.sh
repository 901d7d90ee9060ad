#!/usr/bin/env bash
# The multi-host testbed (issue 18): several network namespaces, each a "host" with one
# interface on a shared bridge and an address from 198.51.100.0/24 (RFC 5737, documentation
# only) and no route out; one `sojourn node` per host listening on 0.0.0.0 with a TLS
# identity from `sojourn ca`/`keygen`. Across them: a call, a remote evaluation, a
# code-on-demand fetch, an agent tour of every host with `locate` and `send` on the way, a
# hand-over through a TCP relay (socat), and a node reached by a name from a hosts file.
#
# usage: multihost_test.sh BUILD_BIN_DIR   (needs root, `ip`, socat; exits 77 = skipped)
set -uo pipefail

bin=${1:?usage: multihost_test.sh BUILD_BIN_DIR}
sojourn="$bin/sojourn"
hosts=4
port=7400
relay_port=7500
net=198.51.100

skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }

[ -x "$sojourn" ] || fail "no sojourn binary at $sojourn"
[ "$(id -u)" = 0 ] || skip "network namespaces need root (run as root, as CI does)"
command -v ip >/dev/null || skip "no 'ip' command (Debian package iproute2)"
command -v socat >/dev/null || skip "no 'socat' for the relay (Debian package socat)"

# Names unique to this run: namespaces sj-mhPID-hN, interfaces short enough for IFNAMSIZ.
tag="mh$$"
ns() { echo "sj-$tag-h$1"; }
bridge_ns="sj-$tag-br"
work=$(mktemp -d /tmp/sj-multihost-XXXXXX)
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for i in $(seq 1 $hosts); do ip netns del "$(ns "$i")" 2>/dev/null; rm -rf "/etc/netns/$(ns "$i")"; done
  ip netns del "$bridge_ns" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ip netns add "$bridge_ns" 2>"$work/netns.err" || skip "cannot make network namespaces: $(cat "$work/netns.err")"
ip -n "$bridge_ns" link add br0 type bridge || fail "cannot make a bridge"
ip -n "$bridge_ns" link set br0 up
for i in $(seq 1 $hosts); do
  n=$(ns "$i")
  ip netns add "$n" || fail "cannot make namespace $n"
  ip link add "v$tag$i" type veth peer name eth0 netns "$n" || fail "cannot make a veth pair for $n"
  ip link set "v$tag$i" netns "$bridge_ns"
  ip -n "$bridge_ns" link set "v$tag$i" master br0 up
  ip -n "$n" addr add "$net.$((10 + i))/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
done
addr() { echo "$net.$((10 + $1)):$port"; }
in_ns() { local n; n=$(ns "$1"); shift; ip netns exec "$n" "$@"; }

# No way out: only the /24 itself is routed in each host.
if in_ns 1 ip route | grep -q default; then fail "host 1 has a default route"; fi

# Identities: one CA, one key per node and one for the client.
"$sojourn" ca init "$work/ca" --name "multihost CA" >/dev/null || fail "sojourn ca init"
for i in $(seq 1 $hosts); do
  "$sojourn" keygen --name "h$i" --ca "$work/ca" --out "$work/h$i" >/dev/null || fail "keygen h$i"
done
"$sojourn" keygen --name client --ca "$work/ca" --out "$work/client" >/dev/null || fail "keygen client"

cat >"$work/lib.lua" <<'EOF'
local M = {}
function M.greet(who) return "hello " .. who end
return M
EOF
# Visits every stop, then parks at the last one until a message comes; returns where it went.
cat >"$work/tour.lua" <<'EOF'
local M = {}
function M.start(s) s.seen = {}; return M.next(s) end
function M.next(s)
  s.seen[#s.seen + 1] = agent.here
  if agent.itinerary[1] then agent.go(agent.itinerary[1], "next") end
  return M.park(s)
end
function M.park(s)
  local m = agent.receive()
  if m == nil then agent.wait("park") end
  s.message = m.text
  return s
end
return M
EOF

for i in $(seq 1 $hosts); do
  mkdir -p "$work/data$i"
  # Started by `ip netns exec` itself (no shell in between), so that $! is the node to stop.
  ip netns exec "$(ns "$i")" "$sojourn" --log-level info node --listen "0.0.0.0:$port" --name "h$i" --tls "$work/h$i" \
    --data-dir "$work/data$i" --publish "lib=$work/lib.lua" --data "where=\"h$i\"" >"$work/node$i.log" 2>&1 &
  pids+=($!)
done
# Each node listens on 0.0.0.0 and advertises its host's address (it says so at start-up).
for i in $(seq 1 $hosts); do
  for _ in $(seq 1 100); do grep -q "advertised as" "$work/node$i.log" && break; sleep 0.1; done
  grep -q "advertised as $(addr "$i")" "$work/node$i.log" || { cat "$work/node$i.log"; fail "node h$i does not advertise $(addr "$i")"; }
done

client=(--tls "$work/client")
from1() { in_ns 1 "$sojourn" "$@"; }

echo "== a call across hosts"
out=$(from1 call "${client[@]}" "$(addr 2)" kv.get '["where"]') || fail "call: $out"
[ "$out" = '"h2"' ] || fail "call: expected \"h2\", got $out"

echo "== node.info names the node id, its TLS key fingerprint"
fp=$("$sojourn" fingerprint "$work/h3/h3.crt") || fail "sojourn fingerprint"
out=$(from1 info "${client[@]}" "$(addr 3)") || fail "info: $out"
grep -q "$fp" <<<"$out" || fail "info of h3 does not name its fingerprint $fp: $out"

echo "== a remote evaluation"
out=$(from1 eval "${client[@]}" "$(addr 3)" -e 'return node.call("kv.get", "where") .. "!"') || fail "eval: $out"
[ "$out" = '"h3!"' ] || fail "eval: expected \"h3!\", got $out"

echo "== code on demand"
out=$(from1 fetch "${client[@]}" --cache "$work/cache" "$(addr 4)" lib) || fail "fetch: $out"
grep -q "greet" <<<"$out" || fail "fetch: the module's table does not come back: $out"

echo "== a node reached by a name from the hosts file"
mkdir -p "/etc/netns/$(ns 1)"
printf '127.0.0.1 localhost\n%s.12 far-node.test\n' "$net" >"/etc/netns/$(ns 1)/hosts"
out=$(from1 call "${client[@]}" "far-node.test:$port" kv.get '["where"]') || fail "call by name: $out"
[ "$out" = '"h2"' ] || fail "call by name: expected \"h2\", got $out"

echo "== an agent tour of every host, through a relay, located and sent a message on the way"
# The relay runs on host 2 and forwards to host 4: the hand-over dials host 2's relay port.
ip netns exec "$(ns 2)" socat "TCP-LISTEN:$relay_port,fork,reuseaddr" "TCP:$net.14:$port" </dev/null >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do in_ns 2 ss -ltn | grep -q ":$relay_port " && break; sleep 0.1; done
relay="$net.12:$relay_port"
id=$(from1 launch "${client[@]}" --at "$(addr 1)" --itinerary "$(addr 2),$(addr 3),$relay" "$work/tour.lua") ||
  fail "launch: $id"
id=$(grep -oE '[0-9a-f]{32}' <<<"$id" | head -1)
[ -n "$id" ] || fail "launch printed no agent id"
# Parked at host 4 (reached through the relay): its home says so.
where=""
for _ in $(seq 1 100); do
  where=$(from1 locate "${client[@]}" --home "$(addr 1)" "$id" 2>&1) && grep -q "$(addr 4)" <<<"$where" && break
  sleep 0.1
done
grep -q "$(addr 4)" <<<"$where" || fail "locate: the agent is not at $(addr 4): $where"
from1 send "${client[@]}" --home "$(addr 1)" "$id" '{"text": "found you"}' >/dev/null || fail "send"
out=$(from1 wait "${client[@]}" --home "$(addr 1)" --json --timeout-ms 20000 "$id") || fail "wait: $out"
for i in 1 2 3 4; do grep -q "$(addr "$i")" <<<"$out" || fail "the tour did not visit $(addr "$i"): $out"; done
grep -q "found you" <<<"$out" || fail "the message did not reach the agent: $out"
grep -q "$net.12:$relay_port\"" <<<"$out" && fail "a hop is named by the relay's address, not the node's: $out"

echo "== a signed evaluation through the relay is addressed to the node behind it (its proven id)"
"$sojourn" keygen --name author --out "$work/author" >/dev/null || fail "keygen author"
out=$(from1 eval "${client[@]}" --sign "$work/author/author.key" "$relay" -e 'return node.call("kv.get", "where")' 2>&1) ||
  fail "a signed eval through the relay failed: $out"
[ "$out" = '"h4"' ] || fail "signed eval through the relay: expected \"h4\", got $out"

echo "PASSED: $hosts hosts"
