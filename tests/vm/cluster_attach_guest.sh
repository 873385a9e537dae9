# Runs inside the guest of tests/vm/cluster_attach_test.ts (shared/tools/vm-run.sh: a Debian
# kernel with nbd.ko, busybox, this project at its host path, deno on PATH). Usage:
#   sh cluster_attach_guest.sh DISK ETCD PREFIX VOLUME PEER_PORT...
# DISK is the mounted data disk: tools/ (mke2fs with its libraries), pattern.bin (written with
# O_DIRECT at 40 MiB), tail.bin (written buffered at 56 MiB just before SIGINT) and file.bin
# (copied into an ext4 made over the first 32 MiB). ETCD is the host's etcd as the guest reaches
# it (10.0.2.2:PORT); the cluster's nodes run on the host and registered tdp://127.0.0.1:PORT,
# so each PEER_PORT of the guest's loopback is forwarded to the host (tcp_forward.ts).
#
# Proves `torus blk attach -C` on a real kernel: the cluster client in the attach process serves
# the volume to /dev/nbd0, the kernel's writes go through it to the nodes, and SIGINT flushes
# (buffered writes reach the nodes), detaches, unlocks and exits 0. The host then reads the
# volume through the nodes and checks every byte.
# Prints VMTEST-STEP lines as it goes and VMTEST-OK at the end; exits non-zero on the first
# failure with a VMTEST-FAIL line.

DISK=${1:?data disk mount point}
ETCD=${2:?etcd endpoint}
PREFIX=${3:?metadata prefix}
VOLUME=${4:?volume}
shift 4
W=/tmp/vmtest
TOOLS=$DISK/tools
mkdir -p $W $W/mnt

# Not a shell function: `$!` of a backgrounded function is a subshell, and SIGINT must reach Deno.
TORUS="deno run -A main.ts"
fs_tool() { LD_LIBRARY_PATH=$TOOLS/lib MKE2FS_CONFIG=$TOOLS/mke2fs.conf "$TOOLS/bin/$@"; }
step() { echo "VMTEST-STEP: $*"; }
fail() {
  echo "VMTEST-FAIL: $*"
  for f in $W/*.log; do echo "--- $f"; cat "$f"; done
  exit 1
}
# wait_for FILE TEXT PID: until FILE contains TEXT; fails when PID exits first.
wait_for() {
  n=0
  until grep -q "$2" "$1"; do
    kill -0 "$3" 2>/dev/null || { wait "$3"; fail "process $3 exited ($?) before printing '$2'"; }
    n=$((n + 1))
    [ $n -le 600 ] || fail "no '$2' in $1 after 600 s"
    sleep 1
  done
}
sysfs() { cat "/sys/block/$1/$2" 2>/dev/null || echo "(none)"; }

step "forward the nodes' peer ports ($*) to the host"
ROUTES=""
for port in "$@"; do ROUTES="$ROUTES 127.0.0.1:$port=10.0.2.2:$port"; done
deno run -A tests/vm/tcp_forward.ts $ROUTES >$W/forward.log 2>&1 &
FORWARD=$!
wait_for $W/forward.log "Forwarding." $FORWARD

step "attach -C $ETCD $VOLUME"
# Opening the metadata gives etcd 3 s to answer its first call (METADATA_CONNECT_TIMEOUT_MS, no
# flag): under emulation gRPC's first connection sometimes takes longer. That failure, and only
# that, is tried again, twice at most; a VMTEST-NOTE line says so.
try=1
while :; do
  $TORUS blk attach -C "$ETCD" --metadata-prefix "$PREFIX" "$VOLUME" >$W/attach.log 2>&1 &
  ATTACH=$!
  n=0
  until grep -q "Attached" $W/attach.log || ! kill -0 $ATTACH 2>/dev/null; do
    n=$((n + 1))
    [ $n -le 600 ] || fail "no 'Attached' in $W/attach.log after 600 s"
    sleep 1
  done
  grep -q "Attached" $W/attach.log && break
  wait $ATTACH
  rc=$?
  if [ $try -ge 3 ] || ! grep -q "etcd at .* unreachable within" $W/attach.log; then
    fail "attach exited $rc before it attached"
  fi
  echo "VMTEST-NOTE: attach try $try: $(cat $W/attach.log)"
  try=$((try + 1))
done
grep -q "to /dev/nbd0 (64 MiB, read-write, 4096-byte blocks" $W/attach.log ||
  fail "attach line: $(cat $W/attach.log)"
[ "$(sysfs nbd0 size)" = 131072 ] || fail "nbd0 has $(sysfs nbd0 size) sectors, not 131072"
[ "$(sysfs nbd0 pid)" != "(none)" ] || fail "nbd0 has no pid: not running"

step "O_DIRECT write of the pattern at 40 MiB, read back with O_DIRECT"
dd if=$DISK/pattern.bin of=/dev/nbd0 bs=1M seek=40 oflag=direct conv=fsync 2>$W/dd.log ||
  fail "write the pattern: $(cat $W/dd.log)"
dd if=/dev/nbd0 of=$W/pattern.back bs=1M skip=40 count=8 iflag=direct 2>$W/dd.log ||
  fail "read the pattern: $(cat $W/dd.log)"
cmp $DISK/pattern.bin $W/pattern.back || fail "the pattern reads back different"

step "mkfs.ext4 over the first 32 MiB, mount, copy a file in, umount"
fs_tool mke2fs -q -F -t ext4 /dev/nbd0 32M || fail "mkfs.ext4"
mount -t ext4 /dev/nbd0 $W/mnt || fail "mount"
cp $DISK/file.bin $W/mnt/file.bin || fail "copy the file in"
umount $W/mnt || fail "umount"

step "a buffered write at 56 MiB, then SIGINT: flush, detach, unlock, exit 0"
# No fsync: the page cache holds it, and attach's open device keeps it from being synced on
# close; only the flush of the SIGINT detach sends it to the cluster before the disconnect.
dd if=$DISK/tail.bin of=/dev/nbd0 bs=64k seek=896 2>$W/dd.log || fail "buffered write"
kill -INT $ATTACH
wait $ATTACH
rc=$?
[ $rc -eq 0 ] || fail "attach exited $rc after SIGINT"
grep -q "Received SIGINT" $W/attach.log || fail "no SIGINT line"
grep -q "^Detached /dev/nbd0.$" $W/attach.log || fail "no Detached line"
[ "$(sysfs nbd0 pid)" = "(none)" ] || fail "nbd0 still running after SIGINT"
sed 's/^/attach: /' $W/attach.log

kill $FORWARD
wait $FORWARD
echo "VMTEST-OK"
