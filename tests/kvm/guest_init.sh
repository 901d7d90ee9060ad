#!/bin/busybox sh
# /init of the nested QEMU guest built by run_in_qemu.sh: loads the KVM modules, runs each test
# of /sojourn/tests.sh with its timeout, prints @@SOJOURN-KVM@@ marker lines that the host parses,
# and reports the verdict through the isa-debug-exit port (0 all passed, 1 a test failed, 2 no KVM).
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp
mount -t devtmpfs devtmpfs /dev
# The kernel found no /dev/console in the initramfs before devtmpfs was mounted: attach it now.
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
M=@@SOJOURN-KVM@@

uptime_s() { cut -d' ' -f1 /proc/uptime; }

verdict() {
  # Let the UART drain (stty applies its setting with TCSADRAIN), or QEMU may exit before the
  # last lines reach the host.
  stty -F /dev/console onlcr 2>/dev/null
  printf "\\$(printf %03o "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
  echo "$M NO-EXIT-PORT"
  poweroff -f
}

echo "$M BOOTED $(uptime_s)"
# Loopback, for tests whose nodes talk TCP on 127.0.0.1.
ip link set lo up 2>/dev/null || echo "$M NO-LOOPBACK"
for m in /lib/modules/sojourn/*.ko; do
  insmod "$m" || echo "$M INSMOD-FAILED ${m##*/}"
done
if [ ! -c /dev/kvm ]; then
  echo "$M NOKVM"
  dmesg | grep -i -E 'kvm|svm|ccp' | tail -n 20
  verdict 2
fi
echo "$M KVM-READY $(uptime_s)"

set -o pipefail
passed=0
failed=0
cd /tmp
# run_test NAME TIMEOUT CMD [ARG...]
run_test() {
  name=$1
  limit=$2
  shift 2
  echo "$M BEGIN $name"
  start=$(uptime_s)
  # Through a pipe, so that tests see no terminal (no colour escapes in CI logs).
  timeout -s KILL "$limit" "$@" 2>&1 | cat
  rc=$?
  took=$(awk -v a="$start" -v b="$(uptime_s)" 'BEGIN { printf "%.2f", b - a }')
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "$M END $name PASS $took"
  elif [ "$rc" -eq 137 ] && awk -v t="$took" -v l="$limit" 'BEGIN { exit !(t >= l - 1) }'; then
    failed=$((failed + 1))
    echo "$M END $name TIMEOUT $took"
  else
    failed=$((failed + 1))
    echo "$M END $name FAIL:$rc $took"
  fi
}

. /sojourn/tests.sh
echo "$M RESULT $passed $failed $(uptime_s)"
if [ "$failed" -eq 0 ]; then verdict 0; else verdict 1; fi
