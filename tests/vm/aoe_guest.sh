#!/bin/sh
# The guest half of tests/vm/aoe_kernel_test.ts: run by ../shared/tools/vm-blockdev.sh
# (`aoe NETNS TAP S.L`, GUEST_SCRIPT=this file) inside Debian's kernel, whose aoe.ko is the
# initiator of `torus aoe` on the host. Busybox only: no mkfs.ext4 here, so the filesystem is
# busybox mke2fs's ext2 (mounted by the kernel's ext4 driver).
#
# 1. The stall region first: it is the first thing written, so the host, which waits for the
#    target's first written MiB, stops the target (SIGSTOP) while it is being written and the
#    driver retransmits.
# 2. Regions at several offsets (odd sectors, odd lengths, the device's last sectors), each
#    written with O_DIRECT, read back with O_DIRECT after a flush and a cache drop, compared.
# 3. An ext2 on the first 64 MiB: files written, sync and flushbufs, unmounted, caches dropped,
#    mounted again and every checksum compared.
# Every region is reported as `GUEST: REGION NAME SECTOR COUNT SHA256` and every file as
# `GUEST: SUM SHA256  ./PATH`, for the host to find them in the volume afterwards. The driver's
# retransmission log (/dev/etherd/err) and debugfs state are printed for the host's report.
# Ends with `GUEST: OK` and exit 0; a failure prints `GUEST: FAIL ...` and exits 1.

SL=$(sed -n 's/.*aoetarget=\([0-9]*\.[0-9]*\).*/\1/p' /proc/cmdline)
D=/dev/etherd/e$SL
FS_KIB=65536

now() { cut -d' ' -f1 /proc/uptime; }
fail() {
  echo "GUEST: FAIL $*"
  dmesg | grep -i aoe | tail -n 20 | sed 's/^/GUEST: dmesg /'
  exit 1
}
drop_caches() {
  blockdev --flushbufs $D || fail "flushbufs"
  echo 3 > /proc/sys/vm/drop_caches
}
# region NAME SECTOR COUNT [BS]: COUNT random sectors written at SECTOR, read back, compared.
region() {
  name=$1 sector=$2 count=$3 bs=${4:-65536}
  dd if=/dev/urandom of=/tmp/$name bs=512 count=$count 2>/dev/null
  started=$(now)
  dd if=/tmp/$name of=$D bs=$bs seek=$((sector * 512)) oflag=seek_bytes,direct 2>/dev/null ||
    fail "write of $name"
  took=$(echo "$(now) $started" | awk '{print $1 - $2}')
  drop_caches
  dd if=$D of=/tmp/$name.back bs=$bs skip=$((sector * 512)) count=$((count * 512)) \
    iflag=skip_bytes,count_bytes,direct 2>/dev/null || fail "read of $name"
  cmp -s /tmp/$name /tmp/$name.back || fail "$name read back differs"
  echo "GUEST: REGION $name $sector $count $(sha256sum /tmp/$name | cut -d' ' -f1) (write ${took}s)"
  rm -f /tmp/$name /tmp/$name.back
}
sums() { (cd /mnt && find ./data -type f | sort | xargs sha256sum); }

insmod /lib/modules/aoe.ko aoe_iflist=eth0 || fail "insmod aoe"
i=0
while [ ! -b $D ] && [ $i -lt 50 ]; do
  [ $((i % 10)) -eq 0 ] && echo 1 > /dev/etherd/discover
  sleep 0.2
  i=$((i + 1))
done
[ -b $D ] || fail "$D not found"
SIZE=$(blockdev --getsize64 $D)
SECTORS=$((SIZE / 512))
echo "GUEST: found $D at $(now)s size=$SIZE"

# 1. The stall region: 8 MiB at 192 MiB (the host stops the target meanwhile).
echo "GUEST: stall region starts at $(now)s"
region stall $((192 * 2048)) $((8 * 2048)) 1048576

# 2. Regions: a whole MiB, odd starts and lengths, the first sectors past the filesystem, the end.
region mib $((80 * 2048)) 2048 1048576
region odd 200001 3
region unaligned 300007 45
region past-fs $((FS_KIB * 2)) 8
region last $((SECTORS - 37)) 37

# 3. A filesystem on the first 64 MiB.
mke2fs -F -b 4096 -L torus-aoe $D $FS_KIB > /tmp/mke2fs.log 2>&1 || {
  cat /tmp/mke2fs.log
  fail "mke2fs"
}
mkdir -p /mnt
mount $D /mnt || fail "mount"
mkdir -p /mnt/data/a/b /mnt/data/c
for size in 0 1 511 4095 4096 65537 1048579; do
  head -c $size /dev/urandom > /mnt/data/a/f$size
done
dd if=/dev/urandom of=/mnt/data/c/big bs=1M count=3 2>/dev/null
i=1
while [ $i -le 20 ]; do
  head -c $((i * 777)) /dev/urandom > /mnt/data/a/b/small$i
  i=$((i + 1))
done
sums > /tmp/sums.before
sync
blockdev --flushbufs $D
umount /mnt || fail "umount"
drop_caches
mount $D /mnt || fail "second mount"
sums > /tmp/sums.after
umount /mnt || fail "second umount"
cmp -s /tmp/sums.before /tmp/sums.after || {
  diff /tmp/sums.before /tmp/sums.after
  fail "checksums differ after remount"
}
sed 's/^/GUEST: SUM /' /tmp/sums.after
sync
blockdev --flushbufs $D

# What the driver saw: its retransmissions (old and new tag) and its state.
timeout 1 cat /dev/etherd/err > /tmp/err 2>/dev/null
echo "GUEST: driver retransmit lines $(grep -c retransmit /tmp/err) (the log keeps 100 at most)"
grep retransmit /tmp/err | head -n 3 | sed 's/^ */GUEST: err /'
grep -v retransmit /tmp/err | head -n 3 | sed 's/^ */GUEST: err /'
if mount -t debugfs none /sys/kernel/debug 2>/dev/null && [ -f /sys/kernel/debug/aoe/e$SL ]; then
  sed 's/^/GUEST: debugfs /' /sys/kernel/debug/aoe/e$SL
fi
echo "GUEST: OK at $(now)s"
