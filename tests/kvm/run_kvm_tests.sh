#!/usr/bin/env bash
# The ctest entry kvm_tests: runs the KVM tests of a manifest directly where this host has a
# usable /dev/kvm, otherwise inside a nested QEMU guest (run_in_qemu.sh). Never skips: when
# neither is possible it fails and says what is missing.
#   run_kvm_tests.sh --manifest FILE [--cache-dir DIR]
# SOJOURN_KVM_FORCE_QEMU=1 takes the QEMU path even on a KVM host.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# kvm_pvm (a paravirtual KVM without hardware virtualization) runs only PVM-aware guest
# kernels: sojourn's ring-3 guest loads there but its first syscall never leaves ring 3.
pvm_only=0
if [ -d /sys/module/kvm_pvm ] && [ ! -d /sys/module/kvm_amd ] && [ ! -d /sys/module/kvm_intel ]; then pvm_only=1; fi
if [ "${SOJOURN_KVM_FORCE_QEMU:-0}" = 1 ] || [ "$pvm_only" = 1 ] || [ ! -c /dev/kvm ] || [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  if [ "${SOJOURN_KVM_FORCE_QEMU:-0}" = 1 ]; then
    echo "kvm_tests: SOJOURN_KVM_FORCE_QEMU=1: running the KVM tests in a nested QEMU guest"
  elif [ "$pvm_only" = 1 ]; then
    echo "kvm_tests: /dev/kvm is kvm_pvm (no kvm_amd or kvm_intel), which cannot run sojourn's guest: running the KVM tests in a nested QEMU guest"
  elif [ -e /dev/kvm ]; then
    echo "kvm_tests: /dev/kvm exists but this user cannot open it read-write: running the KVM tests in a nested QEMU guest"
  else
    echo "kvm_tests: no /dev/kvm on this host: running the KVM tests in a nested QEMU guest"
  fi
  exec bash "$here/run_in_qemu.sh" "$@"
fi

manifest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --manifest) manifest=$2; shift 2 ;;
    --cache-dir) shift 2 ;;
    *) echo "kvm_tests: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -f "$manifest" ] || { echo "kvm_tests: manifest not found: $manifest" >&2; exit 2; }

echo "kvm_tests: /dev/kvm is usable: running the KVM tests directly on this host" \
  "(kvm modules: $(ls /sys/module 2>/dev/null | grep -E '^kvm' | tr '\n' ' '))"
passed=0 failed=0 names=()
run_one() {  # NAME TIMEOUT ENV-ARRAY-NAME EXE [ARG...]
  local name=$1 limit=$2 rc=0; shift 2
  echo "=== $name"
  local start=$SECONDS
  timeout -s KILL "$limit" "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1)); echo "--- PASS $name ($((SECONDS - start)) s)"
  elif [ "$rc" -eq 137 ] && [ $((SECONDS - start)) -ge $((limit - 1)) ]; then
    failed=$((failed + 1)); names+=("$name"); echo "--- FAIL $name: timed out after $limit s"
  else
    failed=$((failed + 1)); names+=("$name"); echo "--- FAIL $name: exit status $rc"
  fi
}
name="" limit="" exe="" envs=() args=()
flush() { [ -z "$name" ] || run_one "$name" "$limit" env "${envs[@]}" "$exe" "${args[@]}"; }
while IFS= read -r line || [ -n "$line" ]; do
  kind=${line%% *} rest=${line#* }
  case "$kind" in
    test) flush; name=${rest%% *} limit=${rest#* } exe="" envs=() args=() ;;
    exe) exe=$rest ;;
    arg) args+=("$rest") ;;
    env) envs+=("$rest") ;;
    file|"") ;;
    *) echo "kvm_tests: unknown manifest line: $line" >&2; exit 2 ;;
  esac
done < "$manifest"
flush
if [ $((passed + failed)) -eq 0 ]; then
  echo "kvm_tests: FAILED: the manifest $manifest lists no test" >&2
  exit 1
fi
if [ "$failed" -ne 0 ]; then
  echo "kvm_tests: FAILED: $failed of $((passed + failed)) test(s): ${names[*]}" >&2
  exit 1
fi
echo "kvm_tests: all $passed test(s) passed"
