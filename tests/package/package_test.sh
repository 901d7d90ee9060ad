#!/usr/bin/env bash
# The Debian package end to end, as an operator meets it: cpack builds sojourn_VERSION_amd64.deb
# in a temporary directory, apt-get installs it, a node starts through the installed files (the
# unit's ExecStart line, as the unit's user, with an /etc/sojourn/NAME.conf written here; systemd
# does not run in CI), the installed CLI calls it and evaluates code in the installed guest's
# process jail, then the package is removed and purged and its files must be gone.
# Usage: package_test.sh BUILD_DIR. Exit 77: skipped (the reason on stdout).
set -uo pipefail
build=$1
skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || skip "needs root to install a package"
command -v dpkg >/dev/null && command -v apt-get >/dev/null || skip "no dpkg/apt-get (not a Debian system)"
command -v cpack >/dev/null || skip "no cpack"
if dpkg-query -W -f='${Status}' sojourn 2>/dev/null | grep -q "ok installed"; then
  skip "a sojourn package is installed already; this test does not replace it"
fi

instance=sj-package-test
conf=/etc/sojourn/$instance.conf
tmp=$(mktemp -d /tmp/sj-package-XXXXXX)
node_pid=""
made_etc=0
installed=0
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -f "$conf"
  [ "$made_etc" = 1 ] && rmdir /etc/sojourn 2>/dev/null
  # Whatever happened, leave nothing installed.
  if [ "$installed" = 1 ] || dpkg-query -W -f='${Status}' sojourn 2>/dev/null | grep -q "installed"; then
    dpkg --purge sojourn >/dev/null 2>&1
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

echo "== cpack"
cpack -G DEB -B "$tmp" --config "$build/CPackConfig.cmake" >"$tmp/cpack.log" 2>&1 || { cat "$tmp/cpack.log"; fail "cpack failed"; }
version=$(sed -n 's/^set(CPACK_PACKAGE_VERSION "\(.*\)")$/\1/p' "$build/CPackConfig.cmake")
deb=$tmp/sojourn_${version}_$(dpkg --print-architecture).deb
[ -f "$deb" ] || { ls "$tmp"; fail "no $deb"; }
echo "built $(basename "$deb")"
dpkg-deb -f "$deb" Depends | grep -q "libssl" || fail "Depends lacks the shared libraries: $(dpkg-deb -f "$deb" Depends)"

echo "== install"
installed=1
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" >"$tmp/apt.log" 2>&1; then
  cat "$tmp/apt.log"
  echo "apt-get failed; trying dpkg -i (the dependencies may be present already)"
  dpkg -i "$deb" || fail "the package does not install"
fi
for f in /usr/bin/sojourn /usr/libexec/sojourn/sojourn-guest /usr/lib/systemd/system/sojourn-node@.service \
         /usr/lib/cmake/sojourn/sojournConfig.cmake /usr/lib/cmake/sojourn/sojournTargets.cmake \
         /usr/include/sojourn/agents/node.hpp /usr/share/man/man1/sojourn.1.gz /usr/share/doc/sojourn/deploy.md \
         /usr/share/doc/sojourn/examples/node.conf; do
  [ -e "$f" ] || fail "not installed: $f"
done
getent passwd sojourn >/dev/null || fail "postinst made no sojourn user"
zcat /usr/share/man/man1/sojourn.1.gz | grep -q -- '--config' || fail "the man page lacks --config"

echo "== an application built against the installed library (find_package(sojourn))"
mkdir "$tmp/app"
cat >"$tmp/app/CMakeLists.txt" <<'APP'
cmake_minimum_required(VERSION 3.20)
project(consumer CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(sojourn REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE sojourn::sojourn)
APP
cat >"$tmp/app/main.cpp" <<'APP'
#include <cstdio>
#include "sojourn/core/json.hpp"
int main() {
  auto v = sojourn::value_from_json("[1, 2]");
  if (!v) return 1;
  auto text = sojourn::value_to_json(*v);
  std::puts(text ? text->c_str() : "?");
  return 0;
}
APP
cmake -S "$tmp/app" -B "$tmp/app/build" -DCMAKE_BUILD_TYPE=Release >"$tmp/app.log" 2>&1 &&
  cmake --build "$tmp/app/build" >>"$tmp/app.log" 2>&1 || { cat "$tmp/app.log"; fail "no application builds against the installed library"; }
[ "$("$tmp/app/build/consumer")" = "[1,2]" ] || fail "the application linked to the installed library gave a wrong answer"

unit=/usr/lib/systemd/system/sojourn-node@.service
if command -v systemd-analyze >/dev/null; then
  echo "== systemd-analyze verify"
  systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
fi

echo "== node through the unit's ExecStart line, as its User"
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
user=$(sed -n 's/^User=//p' "$unit")
[ -n "$exec_start" ] && [ -n "$user" ] || fail "the unit has no ExecStart or User"
[ -d /etc/sojourn ] || { mkdir /etc/sojourn; made_etc=1; }
cat >"$conf" <<CONF
name = "$instance"
listen = ["127.0.0.1:0"]
peer-isolation = "process"
grace-ms = 500
log-level = "info"
data = ["greeting=\"hello\""]
CONF
chmod 644 "$conf"
command=${exec_start//%i/$instance}
echo "$user: $command"
# shellcheck disable=SC2086  # the unit's command line, split as systemd splits this simple one
(cd / && exec setpriv --reuid="$user" --regid="$user" --init-groups -- $command) >"$tmp/node.log" 2>&1 &
node_pid=$!
address=""
for _ in $(seq 100); do
  address=$(sed -n "s/^node $instance listening on //p" "$tmp/node.log")
  [ -n "$address" ] && break
  kill -0 "$node_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$address" ] || { cat "$tmp/node.log"; fail "the installed node did not start"; }
echo "listening on $address"

echo "== installed CLI against it"
got=$(/usr/bin/sojourn call "$address" kv.get '["greeting"]') || fail "sojourn call failed"
[ "$got" = '"hello"' ] || fail "kv.get greeting gave '$got' (the config's data= not applied)"
got=$(/usr/bin/sojourn eval "$address" -e "return node.call('kv.get', 'greeting') .. ' ' .. 6 * 7" --json) || fail "sojourn eval failed: $got"
[ "$got" = '{"ok":true,"results":["hello 42"],"isolation":"process"}' ] || fail "eval gave $got"
# The jail ran the installed guest, found from /usr/bin/sojourn (not the build tree's).
grep -q "process jail ready (guest /usr/bin/../libexec/sojourn/sojourn-guest\|process jail ready (guest /usr/libexec/sojourn/sojourn-guest" "$tmp/node.log" || \
  { cat "$tmp/node.log"; fail "the node did not use the installed guest"; }

kill "$node_pid"
wait "$node_pid"
rc=$?
node_pid=""
[ "$rc" -eq 0 ] || { cat "$tmp/node.log"; fail "the node exited $rc on SIGTERM"; }

echo "== remove"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq sojourn >"$tmp/remove.log" 2>&1 || dpkg -r sojourn || fail "remove failed"
for f in /usr/bin/sojourn /usr/libexec/sojourn /usr/lib/systemd/system/sojourn-node@.service /usr/lib/cmake/sojourn \
         /usr/include/sojourn /usr/share/man/man1/sojourn.1.gz /usr/share/doc/sojourn; do
  [ ! -e "$f" ] || fail "left after remove: $f"
done
dpkg --purge sojourn >/dev/null || fail "purge failed"
installed=0
! getent passwd sojourn >/dev/null || fail "purge left the sojourn user"
dpkg-query -W -f='${Status}' sojourn 2>/dev/null | grep -q "installed" && fail "still installed"
echo "PASS"
