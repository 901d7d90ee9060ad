#!/usr/bin/env bash
# bench_migration_cost --criu inside one boot of the nested QEMU guest of the KVM tests
# (tests/kvm/run_in_qemu.sh), which runs Debian's own kernel: where this host's kernel keeps
# CRIU from running (docs/bench.md, "CRIU beside the strong hop"), the strong hop and CRIU's
# dump and restore of the same heap are measured side by side there. The guest is emulated
# (TCG, one CPU): compare the ratios, not the figures.
# Usage: bash bench/run_migration_cost_in_qemu.sh [BENCH ARGS...]
#        (default: 3 --sizes 1k,64k,1m --criu --criu-rounds 3)
# Environment: SOJOURN_BUILD_DIR (default build); SOJOURN_BENCH_NO_BUILD=1 runs the binaries
# as they are; SOJOURN_BUILD_JOBS (default 2); SOJOURN_QEMU_MEM (default 2G here).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SOJOURN_BUILD_DIR:-build}
bin=$build/bin
if [[ ${SOJOURN_BENCH_NO_BUILD:-0} != 1 ]]; then
  [[ -f $build/CMakeCache.txt ]] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build "$build" -j "${SOJOURN_BUILD_JOBS:-2}" --target bench_migration_cost bench_criu_holder sojourn-guest
fi
bench=$(realpath "$bin/bench_migration_cost")
guest=$(realpath "$bin/sojourn-guest")
holder=$(realpath "$bin/bench_criu_holder")
script=$(realpath bench/run_criu.sh)
for exe in "$bench" "$guest" "$holder"; do
  [[ -x $exe ]] || { echo "run_migration_cost_in_qemu: $exe is missing" >&2; exit 1; }
done
tools=()
for t in bash criu zstd; do
  p=$(command -v "$t") || { echo "run_migration_cost_in_qemu: $t is not installed (apt-get install $t)" >&2; exit 1; }
  tools+=("$(realpath "$p")")
done
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(3 --sizes 1k,64k,1m --criu --criu-rounds 3)

# The guest's kernel (the one run_in_qemu.sh boots) and the modules CRIU's start-up probes
# need there: the guest's init loads only kvm's. nf_tables (CRIU 3.17 stops if it cannot create
# a table), veth and tun (network probes), the socket diag modules (CRIU dumps sockets through
# them), each after what it needs (crc32c before libcrc32c, which nf_tables needs).
kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -rV | head -n 1)
[[ -n $kernel ]] || { echo "run_migration_cost_in_qemu: no /boot/vmlinuz-* (apt-get install linux-image-amd64)" >&2; exit 1; }
moddir=$(realpath "/lib/modules/${kernel#/boot/vmlinuz-}")
modules=()
for m in crypto/crc32c_generic lib/libcrc32c net/netfilter/nfnetlink net/netfilter/nf_tables drivers/net/veth \
         drivers/net/tun net/ipv4/inet_diag net/ipv4/tcp_diag net/ipv4/udp_diag net/unix/unix_diag \
         net/netlink/netlink_diag net/packet/af_packet_diag; do
  if [[ -f $moddir/kernel/$m.ko ]]; then
    modules+=("$moddir/kernel/$m.ko")
  else
    echo "run_migration_cost_in_qemu: no $moddir/kernel/$m.ko (uncompressed): CRIU may stop at its probes" >&2
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
manifest=$work/manifest
prep=$work/prep.sh
{
  echo '#!/usr/bin/env bash'
  echo '# In the guest: the modules CRIU probes for, then the bench.'
  for m in "${modules[@]}"; do echo "insmod '$m' || echo 'insmod $m failed' >&2"; done
  echo 'exec "$@"'
} > "$prep"
{
  echo "test bench_migration_cost 3000"
  echo "exe $(realpath "$(command -v bash)")"
  echo "arg $prep"
  echo "arg $bench"
  for a in "${args[@]}"; do echo "arg $a"; done
  echo "file $prep"
  echo "file $bench"
  for m in "${modules[@]}"; do echo "file $m"; done
  # At their host paths: the bench finds the guest beside itself and runs the script and the
  # holder by the paths it was built with; dynamic ones bring their libraries.
  echo "file $guest"
  echo "file $holder"
  echo "file $script"
  for t in "${tools[@]}"; do echo "file $t"; done
} > "$manifest"
SOJOURN_QEMU_MEM=${SOJOURN_QEMU_MEM:-2G} bash tests/kvm/run_in_qemu.sh --manifest "$manifest" --cache-dir "$build/kvm-cache" \
  --kernel "$kernel" --modules "$moddir"
