#!/usr/bin/env bash
# CRIU beside sojourn's strong hop (issue 13): Debian's criu dumps and restores a process that
# holds the same LuaJIT heap as bench_migration_cost's strong agent (bench_criu_holder), once per
# size and round. bench_migration_cost --criu runs it and prints its figures beside the hop's;
# it also runs alone. Needs root and `apt-get install criu zstd`.
#
#   bash bench/run_criu.sh HOLDER [--rounds N] KB...
#
# "criu-note,TEXT" lines first (CRIU's version, the kernel, its vDSO mappings), then one CSV
# line per size and round on stdout:
#   criu,KB,ok,DUMP_MS,IMAGE_BYTES,ZSTD_BYTES,ZSTD_MS,RESTORE_MS,RUNNING_MS,
#   criu,KB,refused,,,,,,,REASON
# DUMP_MS: `criu dump` of the waiting process (which it kills); IMAGE_BYTES: the image
# directory's files; ZSTD_BYTES / ZSTD_MS: that directory as one tar through `zstd -1` (the
# level sojourn's heap images use); RESTORE_MS: `criu restore -d` until it returns with the
# process running; RUNNING_MS: from the restore's start to the restored process's answer to
# SIGUSR1 (it walks its heap and writes the total: the heap came back whole). REASON: CRIU's
# own error lines when it cannot dump or restore here. Times are bash's $EPOCHREALTIME (no fork).
set -uo pipefail

die() { echo "run_criu: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: bash bench/run_criu.sh HOLDER [--rounds N] KB..."
holder=$1
shift
rounds=1
sizes=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || die "--rounds expects a number"; rounds=$2; shift ;;
    *) [[ $1 =~ ^[0-9]+$ ]] || die "not a size in KB: $1"; sizes+=("$1") ;;
  esac
  shift
done
[[ -x $holder ]] || die "$holder is not an executable (build bench_criu_holder)"

# stamp VAR: microseconds now into VAR, without a subshell (a fork costs ~2 ms on a busy VM).
stamp() { printf -v "$1" '%s' "${EPOCHREALTIME/./}"; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1000 }'; }
# CRIU's error lines of a log, joined on one line (the CSV's last field). Left out: the
# "exited, status=1" of the iptables probes CRIU runs where iptables is not installed (it goes
# on after them; a process without sockets does not need them).
# The last lines are the ones that stopped it (earlier ones may be probes it went on after).
# SOJOURN_CRIU_SHOW_LOG=1 copies the whole log to stderr.
errors_of() {
  [[ ${SOJOURN_CRIU_SHOW_LOG:-0} != 1 ]] || cat "$1" >&2
  grep -E 'Error|error' "$1" 2>/dev/null | grep -v 'exited, status=1$' | sed -E 's/^\([0-9.]+\) //' | tail -n 4 |
    paste -sd ';' -
}

refuse() {  # KB REASON
  echo "criu,$1,refused,,,,,,,$2"
}

criu_bin=$(command -v criu || true)
work=$(mktemp -d /tmp/sojourn-criu.XXXXXX)
holder_pid=""
cleanup() {
  [[ -n $holder_pid ]] && kill -TERM "$holder_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Waits until FILE exists or SECONDS pass; returns 1 on timeout. BUSY=1 polls without forks
# (a timed wait); otherwise it sleeps between looks (the heap's build takes seconds).
wait_file() {
  local file=$1 busy=${3:-0} now deadline
  stamp now
  deadline=$(( now + $2 * 1000000 ))
  while [[ ! -s $file ]]; do
    stamp now
    (( now < deadline )) || return 1
    [[ $busy == 1 ]] || sleep 0.05
  done
}

one_round() {  # KB ROUND
  local kb=$1 dir=$work/$1-$2
  mkdir -p "$dir/img" "$dir/log"
  # The holder runs in a session of its own with no terminal and no open file: what CRIU
  # dumps without --shell-job and restores without the script's descriptors.
  # Started from a subshell: not a job of this script (whose shell would report it killed).
  ( setsid "$holder" "$kb" "$dir/ready" "$dir/check" </dev/null >/dev/null 2>&1 & )
  wait_file "$dir/ready" $(( 60 + kb / 100 )) || { refuse "$kb" "the holder did not build its heap in time"; return; }
  holder_pid=$(awk '{ print $2 }' "$dir/ready")
  local t0 t1 t2 t3 t4 t5
  stamp t0
  if ! "$criu_bin" dump -t "$holder_pid" -D "$dir/img" -o "$dir/log/dump.log" -v2 >/dev/null 2>&1; then
    refuse "$kb" "criu dump failed: $(errors_of "$dir/log/dump.log")"
    kill -KILL "$holder_pid" 2>/dev/null; holder_pid=""
    return
  fi
  stamp t1
  local image_bytes zstd_bytes
  # (cat and wc, not find -printf: the script also runs on busybox, in the nested QEMU guest.)
  image_bytes=$(cat "$dir"/img/* | wc -c)
  stamp t2
  zstd_bytes=$(tar -C "$dir/img" -cf - . | zstd -1 -q -c | wc -c)
  stamp t3
  if ! "$criu_bin" restore -D "$dir/img" -o "$dir/log/restore.log" -d -v2 >/dev/null 2>&1; then
    refuse "$kb" "criu restore failed: $(errors_of "$dir/log/restore.log")"
    kill -KILL "$holder_pid" 2>/dev/null; holder_pid=""
    return
  fi
  stamp t4
  kill -USR1 "$holder_pid" 2>/dev/null
  if ! wait_file "$dir/check" 60 1; then
    refuse "$kb" "the restored process did not answer within 60 s"
    kill -KILL "$holder_pid" 2>/dev/null; holder_pid=""
    return
  fi
  stamp t5
  local want=$(( kb * 1000 )) got
  got=$(awk '{ print $2 }' "$dir/check")
  kill -TERM "$holder_pid" 2>/dev/null; holder_pid=""
  if [[ $got != "$want" ]]; then
    refuse "$kb" "the restored heap holds $got bytes of strings, not $want"
    return
  fi
  echo "criu,$kb,ok,$(ms_between "$t0" "$t1"),$image_bytes,$zstd_bytes,$(ms_between "$t2" "$t3"),$(ms_between "$t3" "$t4"),$(ms_between "$t3" "$t5"),"
  rm -rf "$dir"
}

# What the rows depend on, as "criu-note,TEXT" lines: CRIU's version and this kernel's vDSO
# mappings (a kernel from 6.13 on splits [vvar] in two, [vvar] and [vvar_vclock]).
if [[ -n $criu_bin ]]; then
  echo "criu-note,$("$criu_bin" --version 2>&1 | head -n 1) on Linux $(uname -r)"
  echo "criu-note,vDSO mappings of a process here: $(grep -oE '\[(vvar[a-z_]*|vdso)\]' /proc/self/maps | paste -sd ' ' -)"
fi

for kb in "${sizes[@]}"; do
  if [[ -z $criu_bin ]]; then refuse "$kb" "criu is not installed (apt-get install criu)"; continue; fi
  if [[ $(id -u) != 0 ]]; then refuse "$kb" "criu needs root here (run the bench as root)"; continue; fi
  for (( r = 1; r <= rounds; ++r )); do one_round "$kb" "$r"; done
done
