#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on a copy of its seed corpus (the tree is never
# written), one target at a time, and fails on any crash, leak, timeout or out-of-memory.
#   bash tests/fuzz/run_fuzz.sh BUILD_DIR/tests/fuzz SECONDS_PER_TARGET [TARGET...]
# SOJOURN_FUZZ_TARGETS (comma-separated) names the targets when none is given; extra
# libFuzzer flags may come in SOJOURN_FUZZ_FLAGS (e.g. "-runs=1000000"). A crashing input is
# kept under BUILD_DIR/fuzz-artifacts/<target>/: add it to corpus/<target>/ with the fix.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: run_fuzz.sh FUZZ_BIN_DIR SECONDS_PER_TARGET [TARGET...]}
seconds=${2:?usage: run_fuzz.sh FUZZ_BIN_DIR SECONDS_PER_TARGET [TARGET...]}
shift 2
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  IFS=, read -r -a targets <<< "${SOJOURN_FUZZ_TARGETS:?no targets named}"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sojourn-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()
total=0
printf '%-20s %12s %8s %6s  %s\n' target execs exec/s cov result
for t in "${targets[@]}"; do
  exe="$bin/$t"
  [ -x "$exe" ] || { echo "$t: no executable at $exe" >&2; failed+=("$t"); continue; }
  [ -d "$here/corpus/$t" ] || { echo "$t: no seed corpus at $here/corpus/$t" >&2; failed+=("$t"); continue; }
  mkdir -p "$work/$t" "$bin/../fuzz-artifacts/$t"
  cp -r "$here/corpus/$t/." "$work/$t/"
  artifacts=$(cd "$bin/../fuzz-artifacts/$t" && pwd)
  log="$work/$t.log"
  # One process at a time (the machine may be shared); -timeout: a single input taking
  # longer is a hang; -rss_limit_mb: a leak or an allocation past the limits is a failure.
  status=ok
  if ! "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
       -artifact_prefix="$artifacts/" ${SOJOURN_FUZZ_FLAGS:-} "$work/$t" > "$log" 2>&1; then
    status=FAILED
    failed+=("$t")
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-20s %12s %8s %6s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$status"
  total=$((total + ${execs:-0}))
  if [ "$status" != ok ]; then
    echo "---- $t: last lines of its log (inputs kept in $artifacts) ----"
    tail -n 60 "$log"
  fi
done
echo "total executions: $total"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}" >&2
  exit 1
fi
