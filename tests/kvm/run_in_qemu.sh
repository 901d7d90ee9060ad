#!/usr/bin/env bash
# Runs test executables that need /dev/kvm inside ONE boot of a nested QEMU guest: QEMU's
# software emulation (TCG) offers an emulated AMD-V CPU in which the Debian kernel's kvm-amd works.
# Static executables go in as they are; a dynamic one (and any dynamic executable among the
# files) brings the shared libraries and loader `ldd` lists, each at its host path.
# Exits 0 only if every test passed; otherwise non-zero with a message saying what went wrong.
#
#   run_in_qemu.sh [OPTIONS] [EXE [ARG...] [-- EXE [ARG...]]...]
#     --manifest FILE      also run the tests of a manifest written by CMake (tests/kvm)
#     --timeout SEC        per-test timeout for tests named on the command line (default 60);
#                          every per-test timeout (a manifest's too) is multiplied by the time scale
#     --boot-timeout SEC   time allowed until the guest's init runs (default 120)
#     --cache-dir DIR      where the extracted kernel and base initramfs are kept
#                          (default ${XDG_CACHE_HOME:-~/.cache}/sojourn-kvm)
#     --kernel FILE        a bzImage (default: the newest /boot/vmlinuz-* with kvm-amd in /lib/modules)
#     --modules DIR        its /lib/modules/<version> directory
#     --no-pvh             boot the bzImage instead of the uncompressed vmlinux (PVH entry)
#     --verbose            print the kernel's boot messages too
# Environment: SOJOURN_QEMU (default qemu-system-x86_64), SOJOURN_QEMU_CPU (default max; it
# needs SVM: Intel models fail, TCG has no VMX), SOJOURN_QEMU_MEM (default 1G),
# SOJOURN_BUSYBOX (default /bin/busybox). SOJOURN_TEST_TIME_SCALE (default: the host's
# one-minute load average per core, at least 1) is passed to every test in the guest, whose
# load average says nothing of the host's: tests widen the wall-clock limits that are not
# their subject by it (tests/support/time_scale.hpp).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
M=@@SOJOURN-KVM@@

die() { echo "run_in_qemu: $*" >&2; exit 2; }
note() { echo "run_in_qemu: $*"; }

default_timeout=60 boot_timeout=120 kernel="" modules="" pvh=1 verbose=0
cache_dir=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/sojourn-kvm
manifests=() names=() timeouts=() commands=() files=()

# sh_quote WORD: WORD single-quoted for the guest's busybox sh.
sh_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# How much slower than on an idle host the guest runs: QEMU's one vCPU thread competes with
# the host's load (awk: bash has no floating point).
time_scale=${SOJOURN_TEST_TIME_SCALE:-$(awk -v cores="$(nproc)" '{ s = $1 / cores; printf "%.2f", s < 1 ? 1 : s }' /proc/loadavg)}

# scaled_limit SECONDS: a per-test limit widened by the time scale (rounded up), as the tests
# widen theirs: a test given 300 s on an idle host gets 300 s x the scale in a loaded one. The
# scale is held within [1, 32], as tests/support/time_scale.hpp holds it.
scaled_limit() {
  awk -v l="$1" -v s="$time_scale" 'BEGIN { s += 0; if (!(s >= 1)) s = 1; if (s > 32) s = 32;
                                            t = l * s; printf "%d", (t == int(t)) ? t : int(t) + 1 }'
}

# add_test NAME TIMEOUT ENVS(K=V, space-free) EXE [ARG...]   (TIMEOUT: seconds on an idle host)
add_test() {
  local name=$1 limit envs="$(sh_quote "SOJOURN_TEST_TIME_SCALE=$time_scale") $3" exe=$4
  limit=$(scaled_limit "$2")
  shift 4
  [ -f "$exe" ] || die "test executable not found: $exe"
  exe=$(realpath "$exe")
  local cmd="" a
  [ -z "$envs" ] || cmd="env $envs "
  cmd+=$(sh_quote "$exe")
  for a in "$@"; do cmd+=" $(sh_quote "$a")"; done
  names+=("$name") timeouts+=("$limit") commands+=("$cmd") files+=("$exe")
}

read_manifest() {
  local kind rest name="" limit="" exe="" envs="" args=()
  flush() { [ -z "$name" ] || add_test "$name" "$limit" "$envs" "$exe" "${args[@]}"; }
  while IFS= read -r line || [ -n "$line" ]; do
    kind=${line%% *} rest=${line#* }
    case "$kind" in
      test) flush; name=${rest%% *} limit=${rest#* } exe="" envs="" args=() ;;
      exe) exe=$rest ;;
      arg) args+=("$rest") ;;
      file) [ -e "$rest" ] || die "file for $name not found: $rest"; files+=("$(realpath "$rest")") ;;
      env) envs+="$(sh_quote "$rest") " ;;
      "") ;;
      *) die "$1: unknown manifest line: $line" ;;
    esac
  done < "$1"
  flush
}

cli_tests=()
while [ $# -gt 0 ]; do
  case "$1" in
    --manifest) manifests+=("$2"); shift 2 ;;
    --timeout) default_timeout=$2; shift 2 ;;
    --boot-timeout) boot_timeout=$2; shift 2 ;;
    --cache-dir) cache_dir=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --modules) modules=$2; shift 2 ;;
    --no-pvh) pvh=0; shift ;;
    --verbose) verbose=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d;s/^# \{0,1\}//'; exit 0 ;;
    --) shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) cli_tests=("$@"); break ;;
  esac
done
for m in "${manifests[@]}"; do [ -f "$m" ] || die "manifest not found: $m"; read_manifest "$m"; done
# The command line: EXE [ARG...] groups separated by --.
group=()
for word in "${cli_tests[@]}" --; do
  if [ "$word" = -- ]; then
    [ ${#group[@]} -eq 0 ] || add_test "$(basename "${group[0]}")" "$default_timeout" "" "${group[@]}"
    group=()
  else
    group+=("$word")
  fi
done
[ ${#names[@]} -gt 0 ] || die "no tests given (see --help)"

# --- what the guest needs from the host ---
qemu=${SOJOURN_QEMU:-qemu-system-x86_64}
busybox=${SOJOURN_BUSYBOX:-/bin/busybox}
command -v "$qemu" >/dev/null || die "$qemu not found: install the Debian package qemu-system-x86"
[ -x "$busybox" ] && ! readelf -lW "$busybox" | grep -q INTERP ||
  die "no static busybox at $busybox: install the Debian package busybox-static"
command -v cpio >/dev/null || die "cpio not found: install the Debian package cpio"

# kvm_amd_deps MODULES_DIR: the kvm-amd module and its dependencies, in load order.
kvm_amd_deps() {
  local line
  line=$(grep -E '(^|/)kvm-amd\.ko(\.[a-z]+)?:' "$1/modules.dep" 2>/dev/null) || return 1
  local deps=(${line#*:}) i
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do echo "$1/${deps[i]}"; done
  echo "$1/${line%%:*}"
}
if [ -z "$kernel" ]; then
  for k in $(ls /boot/vmlinuz-* 2>/dev/null | sort -rV); do
    if kvm_amd_deps "/lib/modules/${k#/boot/vmlinuz-}" >/dev/null; then kernel=$k; break; fi
  done
  [ -n "$kernel" ] || die "no /boot/vmlinuz-* with kvm-amd in /lib/modules: install the Debian package linux-image-amd64"
fi
[ -r "$kernel" ] || die "kernel not readable: $kernel"
[ -n "$modules" ] || modules=/lib/modules/${kernel##*/vmlinuz-}
module_files=$(kvm_amd_deps "$modules") || die "no kvm-amd module in $modules/modules.dep"

mkdir -p "$cache_dir"
work=$(mktemp -d "$cache_dir/run.XXXXXX")
qpid=""
cleanup() { [ -z "$qpid" ] || kill "$qpid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# extract_vmlinux BZIMAGE OUT: the uncompressed ELF kernel inside a bzImage, located by the boot
# protocol header (setup_sects at 0x1f1, payload_offset/payload_length at 0x248/0x24c).
extract_vmlinux() {
  local setup offset length start magic
  setup=$(od -An -tu1 -j $((0x1f1)) -N1 "$1" | tr -d ' ')
  [ "$setup" -ne 0 ] || setup=4
  offset=$(od -An -tu4 -j $((0x248)) -N4 "$1" | tr -d ' ')
  length=$(od -An -tu4 -j $((0x24c)) -N4 "$1" | tr -d ' ')
  start=$(((setup + 1) * 512 + offset))
  magic=$(od -An -tx1 -j "$start" -N4 "$1" | tr -d ' ')
  local payload=(tail -c "+$((start + 1))" "$1")
  case "$magic" in
    fd377a58) "${payload[@]}" | head -c "$length" | xz -dc --single-stream ;;
    28b52ffd) "${payload[@]}" | head -c "$length" | zstd -dcq ;;
    1f8b*) "${payload[@]}" | head -c "$length" | gzip -dcq ;;
    *) return 1 ;;
  esac > "$2" 2>/dev/null || true
  # Only an ELF with the PVH entry note (Xen note type 18, PHYS32_ENTRY) boots this way.
  [ "$(od -An -tx1 -N4 "$2" | tr -d ' ')" = 7f454c46 ] && readelf -nW "$2" 2>/dev/null | grep -q 'Xen.*0x00000012'
}

boot_kernel=$kernel
if [ "$pvh" -eq 1 ]; then
  vmlinux=$cache_dir/vmlinux-$(sha256sum "$kernel" | cut -c1-16)
  if [ ! -s "$vmlinux" ]; then
    if extract_vmlinux "$kernel" "$work/vmlinux"; then
      mv "$work/vmlinux" "$vmlinux"
    else
      note "could not extract a PVH-bootable vmlinux from $kernel: booting the bzImage (slower)"
      vmlinux=""
    fi
  fi
  [ -z "$vmlinux" ] || boot_kernel=$vmlinux
fi

# Base initramfs (busybox, modules, /init), cached under a key of everything that goes in it.
key=$( { sha256sum "$busybox" "$here/guest_init.sh" $module_files; } | sha256sum | cut -c1-16)
base=$cache_dir/base-$key.cpio
if [ ! -s "$base" ]; then
  stage=$work/base
  mkdir -p "$stage/bin" "$stage/lib/modules/sojourn"
  cp "$busybox" "$stage/bin/busybox"
  cp "$here/guest_init.sh" "$stage/init"
  chmod 755 "$stage/init"
  i=10
  for f in $module_files; do
    out=$stage/lib/modules/sojourn/$i-$(basename "${f%%.ko*}").ko
    case "$f" in *.xz) xz -dc "$f" > "$out" ;; *.zst) zstd -dcq "$f" > "$out" ;; *.gz) gzip -dc "$f" > "$out" ;; *) cp "$f" "$out" ;; esac
    i=$((i + 1))
  done
  (cd "$stage" && find . | cpio -o -H newc -R 0:0 --quiet) > "$work/base.cpio"
  mv "$work/base.cpio" "$base"
fi

# shared_deps FILE: the loader and shared libraries a dynamic ELF FILE needs (absolute paths).
shared_deps() {
  readelf -lW "$1" 2>/dev/null | grep -q INTERP || return 0
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' ||
    die "ldd cannot list the libraries of $1"
}
# The tests, each file at its host path, appended as a second cpio archive; dynamic
# executables bring their libraries (also at their host paths: the loader's search path).
# Each path once: tests share the guest and most of their libraries.
declare -A staged=()
unique=()
for f in "${files[@]}"; do [ -n "${staged[$f]:-}" ] || { staged[$f]=1; unique+=("$f"); }; done
files=("${unique[@]}")
libs=()
for f in "${files[@]}"; do
  [ -f "$f" ] || continue
  while IFS= read -r lib; do [ -n "${staged[$lib]:-}" ] || { staged[$lib]=1; libs+=("$lib"); }; done < <(shared_deps "$f")
done
stage=$work/tests
mkdir -p "$stage/sojourn"
for f in "${files[@]}" "${libs[@]}"; do mkdir -p "$stage$(dirname "$f")"; cp -RL "$f" "$stage$f"; done
for i in "${!names[@]}"; do
  echo "run_test $(sh_quote "${names[i]}") ${timeouts[i]} ${commands[i]}"
done > "$stage/sojourn/tests.sh"
(cd "$stage" && find . | cpio -o -H newc -R 0:0 --quiet) > "$work/tests.cpio"
cat "$base" "$work/tests.cpio" > "$work/initrd"

# --- boot, follow the console, enforce deadlines from the host side too ---
now() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }  # milliseconds
t0=$(now)
note "time scale for the tests' wall-clock limits and their per-test timeouts: $time_scale"
note "booting $(basename "$boot_kernel") with ${#names[@]} test(s) in QEMU (TCG, -cpu ${SOJOURN_QEMU_CPU:-max})"
# A hard limit on QEMU's life, should this script itself be killed (by ctest's timeout, say).
budget=$((boot_timeout + 120))
for l in "${timeouts[@]}"; do budget=$((budget + l + 30)); done
exec {console}< <(exec timeout -s KILL "$budget" "$qemu" -accel tcg -M pc -cpu "${SOJOURN_QEMU_CPU:-max}" -smp 1 -m "${SOJOURN_QEMU_MEM:-1G}" -nographic -no-reboot -net none \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$boot_kernel" -initrd "$work/initrd" \
  -append 'console=ttyS0 quiet panic=-1 mitigations=off' </dev/null 2>&1)
qpid=$!

phase=boot deadline=$((t0 + boot_timeout * 1000)) current="" boot_log=() result=""
declare -A limit_of
for i in "${!names[@]}"; do limit_of[${names[i]}]=${timeouts[i]}; done
failure=""
while :; do
  left=$((deadline - $(now)))
  if [ "$left" -le 0 ] || ! IFS= read -r -t "$((left / 1000)).$(printf %03d $((left % 1000)))" -u "$console" line; then
    if [ "$(now)" -ge "$deadline" ]; then
      case "$phase" in
        boot) failure="QEMU did not boot: the guest's init did not start within ${boot_timeout} s" ;;
        modules) failure="the guest hung while loading the kvm modules" ;;
        test) failure="test $current timed out (the guest stopped answering; limit ${limit_of[$current]} s)" ;;
        *) failure="the guest did not power off after its tests" ;;
      esac
      kill "$qpid" 2>/dev/null || true
    fi
    break
  fi
  line=${line%$'\r'}
  if [[ "$line" != *"$M "* ]]; then
    if [ "$phase" = boot ] && [ "$verbose" -eq 0 ]; then boot_log+=("$line"); else echo "$line"; fi
    continue
  fi
  read -r -a w <<< "${line#*"$M "}"
  case "${w[0]}" in
    BOOTED) phase=modules deadline=$(($(now) + 60000))
            note "guest booted in $((($(now) - t0))) ms (guest uptime ${w[1]} s)" ;;
    INSMOD-FAILED) echo "run_in_qemu: insmod ${w[1]} failed in the guest" ;;
    NOKVM) failure="/dev/kvm did not appear in the guest (kvm-amd did not load; is the CPU model one with SVM?)" ;;
    KVM-READY) phase=between deadline=$(($(now) + 60000)) ;;
    BEGIN) current=${w[1]} phase=test deadline=$(($(now) + (${limit_of[${w[1]}]:-60} + 30) * 1000))
           echo "=== ${w[1]}" ;;
    END) phase=between deadline=$(($(now) + 60000))
         case "${w[2]}" in
           PASS) echo "--- PASS ${w[1]} (${w[3]} s)" ;;
           TIMEOUT) echo "--- FAIL ${w[1]}: timed out after ${w[3]} s (limit ${limit_of[${w[1]}]} s)" ;;
           *) echo "--- FAIL ${w[1]}: exit status ${w[2]#FAIL:} (${w[3]} s)" ;;
         esac ;;
    RESULT) result="${w[1]} ${w[2]}" phase=poweroff deadline=$(($(now) + 30000)) ;;
    NO-EXIT-PORT) echo "run_in_qemu: the guest could not write the isa-debug-exit port" ;;
  esac
done
exec {console}<&-
set +e
if [ -z "$failure" ]; then wait "$qpid"; qrc=$?; else wait "$qpid" 2>/dev/null; qrc=-1; fi
set -e
qpid=""
elapsed=$(($(now) - t0))

if [ -z "$failure" ] && [ "$phase" = boot ]; then
  failure="QEMU exited (status $qrc) before the guest's init started"
elif [ -z "$failure" ] && [ "$phase" = test ] && [ "$qrc" != 3 ]; then
  failure="the guest died during test $current (QEMU exited with status $qrc; a kernel panic exits 0)"
fi
if [ -z "$failure" ]; then
  case "$qrc" in
    1) [ "$result" = "${#names[@]} 0" ] || failure="the guest reported success but its result line was '${result:-missing}'" ;;
    3) failure="$(echo "$result" | cut -d' ' -f2) of ${#names[@]} test(s) failed" ;;
    5) failure="/dev/kvm did not appear in the guest" ;;
    *) failure="QEMU exited with status $qrc without a verdict from the guest (result line: '${result:-missing}')" ;;
  esac
fi
if [ -n "$failure" ]; then
  if [ ${#boot_log[@]} -gt 0 ] && { [ "$phase" = boot ] || [ "$phase" = modules ]; }; then
    echo "run_in_qemu: guest console up to the failure:"; printf '  %s\n' "${boot_log[@]}" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g'
  fi
  echo "run_in_qemu: FAILED: $failure (after $elapsed ms)" >&2
  exit 1
fi
echo "run_in_qemu: all ${#names[@]} test(s) passed in the nested guest ($elapsed ms, boot to poweroff)"
