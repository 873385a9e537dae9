/**
 * A real kernel's NBD driver against `torus serve --nbd` on this host. This host's kernel has no
 * nbd module, so ../shared/tools/vm-blockdev.sh boots Debian's cloud kernel under qemu; its guest
 * reaches the host's loopback as 10.0.2.2. First boot: nbd-client over netlink, a filesystem made,
 * a tree of files written and checksummed, unmounted (the kernel flushes). Then serve is killed
 * with SIGKILL, the volume dumped and fsck'd on the host, serve restarted, and a second boot
 * attaches through the ioctl path (NBD_SET_SOCK/NBD_DO_IT), mounts and finds every file identical.
 * Skipped, saying why, when qemu or the recipe is not available.
 */

import assert from "node:assert/strict";
import { hasCommand } from "../support/packages.ts";
import { ctlOk, type ServeProcess, startServe } from "../support/torus_process.ts";

const root = new URL("../../", import.meta.url).pathname;
const recipe = Deno.env.get("TORUS_VM_BLOCKDEV") ?? `${root}../shared/tools/vm-blockdev.sh`;

function skipReason(): string | null {
  if (Deno.build.os !== "linux") return "not Linux";
  if (Deno.uid() !== 0) return "not root (the VM recipe installs packages)";
  try {
    Deno.statSync(recipe);
  } catch {
    return `no VM recipe at ${recipe}`;
  }
  for (const tool of ["qemu-system-x86_64", "e2fsck"]) {
    if (!hasCommand(tool)) return `${tool} not installed`;
  }
  return null;
}

/** Reads the guest's port and export from the kernel command line the recipe builds. */
const guestPrelude = `#!/bin/sh
P=$(sed -n 's/.*nbdport=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
N=$(sed -n 's/.*nbdname=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
sums() { (cd /mnt && find . -type f | sort | xargs sha256sum | sed 's/^/GUEST: SUM /'); }
`;

/** Boot 1: netlink attach, mkfs, a tree of files, unmount, detach. */
const firstBoot = `${guestPrelude}
nbd-client 10.0.2.2 "$P" /dev/nbd0 -N "$N" -b 4096 -t 60 || { echo "GUEST: FAIL connect"; exit 1; }
echo "GUEST: size $(blockdev --getsize64 /dev/nbd0)"
mke2fs -q -b 4096 /dev/nbd0 || { echo "GUEST: FAIL mke2fs"; exit 1; }
mkdir -p /mnt && mount /dev/nbd0 /mnt || { echo "GUEST: FAIL mount"; exit 1; }
mkdir -p /mnt/tree/a/b /mnt/tree/c
dd if=/dev/urandom of=/mnt/big bs=1M count=3 2>/dev/null
i=1; while [ $i -le 24 ]; do head -c $((i * 1777)) /dev/urandom > /mnt/tree/a/b/f$i; i=$((i + 1)); done
echo hello > /mnt/tree/c/hello
sums
umount /mnt || { echo "GUEST: FAIL umount"; exit 1; }
nbd-client -d /dev/nbd0 >/dev/null 2>&1
echo "GUEST: first boot OK"
`;

/** Boot 2: ioctl attach (-L), mount, checksums, one more file, unmount, detach. */
const secondBoot = `${guestPrelude}
nbd-client 10.0.2.2 "$P" /dev/nbd1 -N "$N" -b 4096 -L || { echo "GUEST: FAIL connect -L"; exit 1; }
i=0; while [ ! -e /sys/block/nbd1/pid ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /mnt && mount /dev/nbd1 /mnt || { echo "GUEST: FAIL mount"; exit 1; }
sums
echo again > /mnt/tree/c/again
umount /mnt || { echo "GUEST: FAIL umount"; exit 1; }
nbd-client -d /dev/nbd1 >/dev/null 2>&1
echo "GUEST: second boot OK"
`;

/** Boots the guest with `script` attached to export `name` of `serve`; its console output. */
async function boot(serve: ServeProcess, name: string, script: string, dir: string) {
  const path = `${dir}/guest-${crypto.randomUUID()}.sh`;
  await Deno.writeTextFile(path, script);
  const output = await new Deno.Command("bash", {
    args: [recipe, "nbd", String(serve.nbd.port), name],
    env: { GUEST_SCRIPT: path, TIMEOUT: "600" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, `the guest failed (exit ${output.code}):\n${text}`);
  return text;
}

/** The `GUEST: SUM <hash>  <path>` lines, sorted. */
function sums(guestOutput: string): string[] {
  return guestOutput.split("\n").filter((line) => line.includes("GUEST: SUM ")).map((line) =>
    line.slice(line.indexOf("GUEST: SUM ")).trim()
  ).sort();
}

/** `e2fsck -fn` of the volume dumped from the stopped node's data dir. */
async function fsckVolume(data: string, name: string, dir: string): Promise<void> {
  const image = `${dir}/${name}.img`;
  await ctlOk(data, ["block", "dump", name, image]);
  const fsck = await new Deno.Command("e2fsck", { args: ["-fn", image], stdout: "piped" })
    .output();
  const text = new TextDecoder().decode(fsck.stdout);
  assert.equal(fsck.code, 0, `e2fsck found problems:\n${text}`);
  await Deno.remove(image);
}

const skip = skipReason();
Deno.test({
  name: skip === null
    ? "guest kernel NBD (netlink and ioctl) on torus serve: ext2 files survive SIGKILL, fsck clean"
    : `guest kernel NBD on torus serve [skipped: ${skip}]`,
  ignore: skip !== null,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "torus-vm-" });
    const data = `${dir}/data`;
    try {
      const first = await startServe(data, { size: "256MiB" });
      let written: string[];
      try {
        await ctlOk(data, ["volume", "create-block", "fs", "64MiB"]);
        const console1 = await boot(first, "fs", firstBoot, dir);
        assert.match(console1, /GUEST: size 67108864/);
        assert.match(console1, /GUEST: first boot OK/);
        written = sums(console1);
        assert.equal(written.length, 26, console1);
      } finally {
        // Everything the guest unmounted was flushed: a kill must not lose any of it.
        await first.kill();
      }
      await fsckVolume(data, "fs", dir);
      await using second = await startServe(data, { size: "256MiB" });
      const console2 = await boot(second, "fs", secondBoot, dir);
      assert.match(console2, /GUEST: second boot OK/);
      assert.deepEqual(sums(console2), written);
      assert.equal(await second.stop(), 0);
      await fsckVolume(data, "fs", dir);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
