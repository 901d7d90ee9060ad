#!/usr/bin/env bash
# Set-up on a fresh Debian 12 machine (as root, or with sudo available):
#   bash bootstrap.sh demo   install, build, run the demo cluster (the main job)
#   bash bootstrap.sh test   install, build, run the whole test suite with ctest: the
#                            suite under ASan+UBSan (build-sanitize), the fuzz targets for a
#                            bounded time (build-fuzz, clang), then the suite (Release) last
# SOJOURN_BUILD_DIR (default build) and SOJOURN_BUILD_TYPE (default Release) may be set; in
# test mode SOJOURN_TEST_STAGES (default "sanitize fuzz") picks the extra stages and
# SOJOURN_FUZZ_SECONDS (default 15) how long each fuzz target runs.
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-}
case "$mode" in demo|test) ;; *) echo "usage: bash bootstrap.sh demo|test" >&2; exit 2 ;; esac

packages=(
  build-essential cmake ninja-build pkg-config
  libboost-dev libcereal-dev nlohmann-json3-dev libcli11-dev
  libluajit-5.1-dev libseccomp-dev libssl-dev doctest-dev
  # The signature tests check that keys made by the openssl command work too.
  openssl
  # The kvm tests run inside a nested QEMU guest where the host has no /dev/kvm (tests/kvm).
  qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils
  # Node identity and addresses (issue 18): the multi-host testbed (tests/multihost) makes
  # network namespaces, veth pairs and a bridge with `ip`, and relays a hand-over with socat.
  iproute2 socat
  # Strong mobility: the heap image's pages are compressed with zstd (sandbox/image), or with
  # LZ4 where the link is fast enough that zstd's sealing costs more than the bytes it saves.
  libzstd-dev liblz4-dev
  # Durable nodes (issue 16): `--data-dir` keeps the kv store and tracked agents in SQLite
  # (agents/store); the sqlite3 command lets a user (and the durable tests) look inside DIR/sojourn.db.
  libsqlite3-dev sqlite3
  # Research experiments (issue 14): `sojourn experiment` and `sojourn trace plot` draw their
  # PNGs with gnuplot from the scripts they write (docs/experiments.md); users run them too.
  gnuplot-nox
)
if [ "$mode" = test ]; then
  # The fuzz build: Debian's clang, its libFuzzer and sanitizer runtimes, and llvm-symbolizer
  # for readable sanitizer reports (docs/security.md, "Fuzzing").
  packages+=(clang-14 libclang-rt-14-dev llvm-14)
  # ---- packaging (issue 18): help2man writes the sojourn(1) man page from --help for the
  # Debian package that package_test builds, installs and removes (dpkg-shlibdeps comes
  # with build-essential's dpkg-dev).
  packages+=(help2man)
  # dashboard (issue 17): the dashboard test loads the page in headless Chromium and checks
  # /metrics with the exposition-format parser of prometheus_client (tests/dashboard).
  packages+=(chromium python3-prometheus-client)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Each stage's wall time, printed before the last ctest run.
timings=()
stage() {
  local name=$1 start=$SECONDS
  shift
  echo "== $name"
  "$@"
  timings+=("$(printf '%-28s %5d s' "$name" $((SECONDS - start)))")
}

build=${SOJOURN_BUILD_DIR:-build}
release_build() {
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${SOJOURN_BUILD_TYPE:-Release}"
  cmake --build "$build" -j "$(nproc)"
}
# The suite under ASan+UBSan (Debug: quick to build); tests that cannot run sanitized report
# themselves skipped, and the kvm_* and microvm_* tests run in the Release suite only.
sanitize_build() {
  cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSOJOURN_SANITIZE=address,undefined \
    -DSOJOURN_BUILD_BENCH=OFF -DSOJOURN_BUILD_SAMPLES=OFF
  cmake --build build-sanitize -j "$(nproc)"
}
# Only the fuzz targets, with every library instrumented for coverage and ASan+UBSan.
fuzz_build() {
  CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSOJOURN_FUZZ=ON \
    -DSOJOURN_FUZZ_SECONDS="${SOJOURN_FUZZ_SECONDS:-15}" -DSOJOURN_BUILD_BENCH=OFF -DSOJOURN_BUILD_SAMPLES=OFF
  cmake --build build-fuzz -j "$(nproc)" --target fuzz_targets
}

stage "release build" release_build
if [ "$mode" = demo ]; then
  exec bash samples/demo.sh "$build"
fi

# A failing stage ends the script there (set -e) with its own ctest summary as the last line;
# when all pass, the Release suite runs last and its summary closes the run.
stages=" ${SOJOURN_TEST_STAGES-sanitize fuzz} "
if [[ $stages == *" sanitize "* ]]; then
  stage "sanitize build" sanitize_build
  stage "sanitize ctest" env UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-sanitize --output-on-failure -j 2
fi
if [[ $stages == *" fuzz "* ]]; then
  stage "fuzz build" fuzz_build
  stage "fuzz run" ctest --test-dir build-fuzz -L fuzz --output-on-failure -V
fi
echo "== stage times (the release ctest follows)"
printf '%s\n' "${timings[@]}"
exec ctest --test-dir "$build" --output-on-failure -j 2
