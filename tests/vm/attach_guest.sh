# Runs inside the guest of tests/vm/attach_test.ts (shared/tools/vm-run.sh: a Debian kernel with
# nbd.ko, busybox, this project at its host path, deno on PATH). Usage: sh attach_guest.sh DISK
# where DISK is the mounted data disk holding tools/ (mke2fs and e2fsck with their libraries).
#
# Proves `torus blk` on a real kernel: attach a volume of a local `torus serve --nbd` found
# through serve.json, mkfs.ext4 + mount + write a tree of files; SIGTERM of attach flushes
# (buffered writes reach the volume) and detaches cleanly; reattach, fsck clean and files
# identical; a snapshot attached read-only refuses writes and shows the snapshot's files;
# `torus blk nbd detach` from another process, SIGINT. Deno starts slowly under emulation, so
# every torus process counts: seven.
# Prints VMTEST-STEP lines as it goes and VMTEST-OK at the end; exits non-zero on the first
# failure with a VMTEST-FAIL line.

DISK=${1:?data disk mount point}
D=$DISK/torus-data
W=/tmp/vmtest
TOOLS=$DISK/tools
mkdir -p $W $W/a $W/b

# Not a shell function: `$!` of a backgrounded function is a subshell, and SIGTERM must reach Deno.
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
    [ $n -le 900 ] || fail "no '$2' in $1 after 900 s"
    sleep 1
  done
}
# expect_exit PID CODE WHAT
expect_exit() {
  wait "$1"
  rc=$?
  [ $rc -eq "$2" ] || fail "$3 exited $rc, expected $2"
}
sysfs() { cat "/sys/block/$1/$2" 2>/dev/null || echo "(none)"; }

step "serve"
$TORUS serve --data-dir $D --size 256MiB --nbd 127.0.0.1:0 >$W/serve.log 2>&1 &
SERVE=$!
wait_for $W/serve.log "Ready." $SERVE
$TORUS ctl volume create-block vol 128MiB --data-dir $D >$W/create.log 2>&1 ||
  fail "volume create-block"

step "attach vol through serve.json (blk nbd attach)"
$TORUS blk nbd attach --data-dir $D vol /dev/nbd0 >$W/attach1.log 2>&1 &
A1=$!
wait_for $W/attach1.log "Attached" $A1
grep -q "to /dev/nbd0 (128 MiB, read-write, 4096-byte blocks" $W/attach1.log ||
  fail "attach line: $(cat $W/attach1.log)"
[ "$(sysfs nbd0 size)" = 262144 ] || fail "nbd0 has $(sysfs nbd0 size) sectors, not 262144"
[ "$(sysfs nbd0 queue/logical_block_size)" = 4096 ] || fail "nbd0 block size"
[ "$(sysfs nbd0 ro)" = 0 ] || fail "nbd0 is read-only"
[ "$(sysfs nbd0 pid)" != "(none)" ] || fail "nbd0 has no pid: not running"

step "mkfs.ext4, mount, write a tree of files"
fs_tool mke2fs -q -F -t ext4 /dev/nbd0 || fail "mkfs.ext4"
mount -t ext4 /dev/nbd0 $W/a || fail "mount"
mkdir -p $W/a/dir/sub
i=1
while [ $i -le 8 ]; do
  dd if=/dev/urandom of=$W/a/dir/file$i bs=4k count=$((i * 37)) 2>/dev/null || fail "write"
  i=$((i + 1))
done
echo "small file" >$W/a/dir/sub/small
(cd $W/a && find . -type f | sort | xargs sha256sum) >$W/sums
umount $W/a || fail "umount"

step "SIGTERM flushes buffered writes and detaches"
dd if=/dev/urandom of=$W/tail bs=64k count=16 2>/dev/null
# Buffered (no fsync) past the filesystem's data: the page cache holds it, and attach's open
# device keeps it from being synced on close; only the flush of the SIGTERM detach sends it to
# the server before the disconnect. The reattach below reads it back.
dd if=$W/tail of=/dev/nbd0 bs=64k seek=1600 2>/dev/null || fail "buffered write"
kill -TERM $A1
expect_exit $A1 0 "attach after SIGTERM"
grep -q "Received SIGTERM" $W/attach1.log || fail "no SIGTERM line"
grep -q "^Detached /dev/nbd0.$" $W/attach1.log || fail "no Detached line: $(cat $W/attach1.log)"
[ "$(sysfs nbd0 pid)" = "(none)" ] || fail "nbd0 still running after SIGTERM"
$TORUS ctl block snapshot create vol@s1 --data-dir $D >$W/snapshot.log 2>&1 ||
  fail "snapshot create"

step "reattach vol (first free device) and vol@s1 read-only (original form) side by side"
$TORUS blk attach --data-dir $D vol >$W/attach2.log 2>&1 &
A2=$!
$TORUS blk nbd --data-dir $D vol@s1 /dev/nbd1 >$W/attach3.log 2>&1 &
A3=$!
wait_for $W/attach2.log "Attached" $A2
wait_for $W/attach3.log "Attached" $A3
grep -q "to /dev/nbd0 (128 MiB, read-write" $W/attach2.log || fail "reattach did not pick nbd0"
grep -q "to /dev/nbd1 (128 MiB, read-only" $W/attach3.log || fail "snapshot attach line"
[ "$(sysfs nbd1 ro)" = 1 ] || fail "the snapshot's device is not read-only"

step "the buffered write is there; fsck and compare the reattached volume"
dd if=/dev/nbd0 of=$W/tail.back bs=64k skip=1600 count=16 2>/dev/null
cmp $W/tail $W/tail.back || fail "the buffered write before SIGTERM is not in the volume"
fs_tool e2fsck -n -f /dev/nbd0 >$W/fsck0.log 2>&1 || fail "e2fsck of vol: $(cat $W/fsck0.log)"
mount -t ext4 /dev/nbd0 $W/a || fail "remount"
(cd $W/a && sha256sum -c -s $W/sums) || fail "files differ after reattach"
echo "written after the snapshot" >$W/a/after
umount $W/a || fail "umount"

step "the snapshot: writes refused, fsck clean, the snapshot's files"
if dd if=/dev/zero of=/dev/nbd1 bs=4k count=1 oflag=direct 2>$W/ro.log; then
  fail "a write to the read-only snapshot device succeeded"
fi
grep -q -e "Operation not permitted" -e "Read-only file system" $W/ro.log ||
  fail "unexpected error writing the snapshot: $(cat $W/ro.log)"
fs_tool e2fsck -n -f /dev/nbd1 >$W/fsck1.log 2>&1 || fail "e2fsck of the snapshot"
mount -t ext4 -o ro /dev/nbd1 $W/b || fail "mount the snapshot"
(cd $W/b && sha256sum -c -s $W/sums) || fail "the snapshot's files differ"
[ ! -e $W/b/after ] || fail "the snapshot shows a file written after it"
umount $W/b

step "detach from another process (blk nbd detach), SIGINT for the snapshot"
$TORUS blk nbd detach /dev/nbd0 >$W/detach.log 2>&1 || fail "detach"
expect_exit $A2 0 "attach after detach"
grep -q "the connection ended" $W/attach2.log || fail "attach did not report the detach"
kill -INT $A3
expect_exit $A3 0 "attach of the snapshot after SIGINT"
grep -q "^Detached /dev/nbd1.$" $W/attach3.log || fail "no Detached line for the snapshot"
[ "$(sysfs nbd0 pid)" = "(none)" ] || fail "nbd0 still running after detach"
[ "$(sysfs nbd1 pid)" = "(none)" ] || fail "nbd1 still running after SIGINT"

kill -TERM $SERVE
expect_exit $SERVE 0 "serve"
echo "VMTEST-OK"
