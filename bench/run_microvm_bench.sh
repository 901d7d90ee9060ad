#!/usr/bin/env bash
# The microVM start-up benchmark (bench_microvm) beside the process jail: directly where this
# host has a usable /dev/kvm, otherwise inside one boot of the nested QEMU guest of the KVM
# tests (tests/kvm/run_in_qemu.sh), where its figures are emulated and labelled so.
# Usage: bash bench/run_microvm_bench.sh [--runs N]    (default 40 runs per row)
# Environment: SOJOURN_BUILD_DIR (default build); SOJOURN_BENCH_NO_BUILD=1 runs the binaries
# as they are; SOJOURN_BUILD_JOBS (default 2); SOJOURN_KVM_FORCE_QEMU=1 takes the QEMU path.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SOJOURN_BUILD_DIR:-build}
bin=$build/bin

if [[ ${SOJOURN_BENCH_NO_BUILD:-0} != 1 ]]; then
  [[ -f $build/CMakeCache.txt ]] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  # A no-op when up to date; otherwise the figures would describe stale code.
  cmake --build "$build" -j "${SOJOURN_BUILD_JOBS:-2}" --target bench_microvm sojourn-guest kvm_syscall_loop
fi
bench=$(realpath "$bin/bench_microvm")
guest=$(realpath "$bin/sojourn-guest")
loop=$(realpath "$bin/kvm_syscall_loop")
for exe in "$bench" "$guest" "$loop"; do
  [[ -x $exe ]] || { echo "run_microvm_bench: $exe is missing" >&2; exit 1; }
done
args=(--guest "$guest" --loop-guest "$loop" "$@")

# The same test as tests/kvm/run_kvm_tests.sh: kvm_pvm alone cannot run sojourn's guest.
pvm_only=0
if [[ -d /sys/module/kvm_pvm && ! -d /sys/module/kvm_amd && ! -d /sys/module/kvm_intel ]]; then pvm_only=1; fi
if [[ ${SOJOURN_KVM_FORCE_QEMU:-0} != 1 && $pvm_only == 0 && -c /dev/kvm && -r /dev/kvm && -w /dev/kvm ]]; then
  echo "run_microvm_bench: /dev/kvm is usable: running bench_microvm on this host"
  exec "$bench" "${args[@]}"
fi

echo "run_microvm_bench: no usable /dev/kvm here: running bench_microvm in a nested QEMU guest (emulated figures)"
manifest=$(mktemp)
trap 'rm -f "$manifest"' EXIT
{
  echo "test bench_microvm 600"
  echo "exe $bench"
  for a in "${args[@]}"; do echo "arg $a"; done
  echo "file $guest"
  echo "file $loop"
  echo "env SOJOURN_GUEST=$guest"
  echo "env SOJOURN_BENCH_EMULATED=1"
} > "$manifest"
bash tests/kvm/run_in_qemu.sh --manifest "$manifest" --cache-dir "$build/kvm-cache"
