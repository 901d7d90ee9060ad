#!/usr/bin/env bash
# The main job (samples/demo.sh: three `sojourn node` daemons, the four paradigms, the C++
# samples) on a machine whose KVM runs the guest: every node must pick the microvm level by
# itself (--peer-isolation auto), and REV and the agents must run there.
#   microvm_demo.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
src=$1 build=$2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
bash "$src/samples/demo.sh" "$build" >"$out" 2>&1
rc=$?
cat "$out"
fail() { echo "microvm_demo: FAILED: $*" >&2; exit 1; }
[ "$rc" -eq 0 ] || fail "the demo exited with status $rc"
grep -q "demo finished" "$out" || fail "the demo did not finish"
for node in a b c; do
  grep -q "^node $node runs code from peers at 'microvm'" "$out" || fail "node $node did not pick the microvm level"
done
# eval --json says where the chunk ran; the agent's itinerary lists each hop's level.
grep -q '"isolation":"microvm"' "$out" || fail "no remote evaluation ran in a microVM"
hops=$(grep -c "microvm" "$out")
[ "$hops" -ge 6 ] || fail "only $hops lines mention microvm (the tour's hops should)"
echo "microvm_demo: the demo ran with every node at the microvm level"
