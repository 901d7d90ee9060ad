#!/usr/bin/env bash
# Set-up on a fresh Debian 12 machine (as root, or with sudo available):
#   bash bootstrap.sh demo   install, build, run the demo cluster (the main job)
#   bash bootstrap.sh test   install, build, run the whole test suite with ctest
# SOJOURN_BUILD_DIR (default build) and SOJOURN_BUILD_TYPE (default Release) may be set.
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
)
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

build=${SOJOURN_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${SOJOURN_BUILD_TYPE:-Release}"
cmake --build "$build" -j "$(nproc)"

if [ "$mode" = demo ]; then
  exec bash samples/demo.sh "$build"
fi
exec ctest --test-dir "$build" --output-on-failure -j 2
