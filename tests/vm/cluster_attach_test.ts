/**
 * `torus blk attach -C ETCD VOLUME` on a real kernel. On this host: etcd, a cluster under a
 * prefix of its own, two `torus serve` nodes at replication 2 with fixed TDP peer ports and a
 * 64 MiB block volume. In the guest (tests/vm/cluster_attach_guest.sh, through the shared tool
 * vm-run.sh): the nodes' peer ports forwarded from the guest's loopback to the host, then the
 * attach — a cluster client in that process, no store — writes through /dev/nbd0 (O_DIRECT, an
 * ext4 with a file, a buffered write sent only by the flush of SIGINT's detach) and exits 0.
 * Back here every byte is read through one node, the filesystem checked and its file compared,
 * and after SIGKILL of that node read again through the other: the kernel's writes went through
 * the guest's cluster client to both nodes.
 *
 * Skipped, saying why in its name, when the VM tool, qemu, the guest kernel or etcd cannot be had.
 */

import assert from "node:assert/strict";
import { closeQuietly, E2eNode, readAll } from "../e2e/e2e_support.ts";
import { freePort } from "../support/etcd.ts";
import { hasCommand } from "../support/packages.ts";
import { etcdAvailable, testEtcd } from "../support/test_etcd.ts";
import { runTorus } from "../support/torus_process.ts";
import { assertGuestOk, makeDataDisk, run, runGuest, vmSkipReason } from "./vm_support.ts";

const MiB = 1024 * 1024;
const VOLUME_SIZE = 64 * MiB;
/** Where the guest writes each file of its data disk on the volume (see the guest script). */
const PATTERN_AT = 40 * MiB;
const TAIL_AT = 56 * MiB;

function skipReason(): string | null {
  if (vmSkipReason !== null) return vmSkipReason;
  if (!etcdAvailable()) return "etcd not installed";
  if (!hasCommand("debugfs")) return "debugfs (e2fsprogs) not installed";
  return null;
}

function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) crypto.getRandomValues(bytes.subarray(at, at + 65536));
  return bytes;
}

function assertSameBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  const at = actual.findIndex((byte, i) => byte !== expected[i]);
  assert.equal(at, -1, `${what}: first difference at byte ${at}`);
}

/** `torus ctl ARGS` with the cluster's metadata flags; fails unless it exits 0. */
async function ctl(meta: readonly string[], ...args: string[]): Promise<string> {
  const result = await runTorus(["ctl", ...args, ...meta]);
  assert.equal(result.code, 0, `torus ctl ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

/** Reads all of `vol` through `node`'s NBD server. */
async function readVolume(node: E2eNode): Promise<Uint8Array> {
  const client = await node.connect("vol");
  try {
    return await readAll(client);
  } finally {
    await closeQuietly(client);
  }
}

const skip = skipReason();

Deno.test({
  name: skip === null
    ? "vm: torus blk attach -C: a cluster client in the guest's attach writes through the " +
      "kernel to two nodes on the host; every byte reads back, also after SIGKILL of one node"
    : `vm: torus blk attach -C on a real kernel (skipped: ${skip})`,
  ignore: skip !== null,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "torus-vm-cluster-attach-" });
    try {
      const pattern = randomBytes(8 * MiB);
      const tail = randomBytes(MiB);
      const file = randomBytes(3 * MiB + 12345);
      const image = await makeDataDisk(work, {
        "pattern.bin": pattern,
        "tail.bin": tail,
        "file.bin": file,
      });

      await using etcd = await testEtcd();
      const prefix = `/torus-vm-${crypto.randomUUID()}/`;
      const meta = ["-C", etcd.endpoint, "--metadata-prefix", prefix];
      await ctl(meta, "init");
      const ports = [freePort(), freePort()];
      const start = (port: number) =>
        E2eNode.start({
          args: [...meta, "--peer-address", `tdp://127.0.0.1:${port}`, "--auto-join"],
        });
      await using a = await start(ports[0]!);
      await using b = await start(ports[1]!);
      assert.match(b.output(), /ring version 3: 2 members/, b.output());
      await ctl(meta, "volume", "create-block", "vol", `${VOLUME_SIZE / MiB}MiB`);

      // The guest reaches this host's loopback as 10.0.2.2 (qemu's user network).
      const etcdPort = etcd.endpoint.slice(etcd.endpoint.lastIndexOf(":") + 1);
      const guest = await runGuest(
        `sh tests/vm/cluster_attach_guest.sh /vmdata 10.0.2.2:${etcdPort} ${prefix} vol ` +
          ports.join(" "),
        { disk: { image, mountPoint: "/vmdata" }, timeoutSeconds: 1200 },
      );
      // Tries of the attach that found etcd too slow for its 3 s (see the guest script).
      for (const note of guest.steps.filter((line) => line.startsWith("VMTEST-NOTE"))) {
        console.warn(note);
      }
      assertGuestOk(guest);

      // The attach has unlocked the volume, or node A could not open it for write.
      const bytes = await readVolume(a);
      assert.equal(bytes.length, VOLUME_SIZE);
      const slice = (at: number, length: number) => bytes.subarray(at, at + length);
      assertSameBytes(slice(PATTERN_AT, pattern.length), pattern, "the O_DIRECT pattern");
      assertSameBytes(slice(TAIL_AT, tail.length), tail, "the write flushed by SIGINT");
      const dump = `${work}/vol.img`;
      await Deno.writeFile(dump, bytes);
      const fsck = await run("e2fsck", ["-f", "-n", dump]);
      assert.equal(fsck.code, 0, `e2fsck of the volume: ${fsck.output}`);
      const copy = `${work}/file.back`;
      const debugfs = await run("debugfs", ["-R", `dump /file.bin ${copy}`, dump]);
      assert.equal(debugfs.code, 0, `debugfs: ${debugfs.output}`);
      assertSameBytes(await Deno.readFile(copy), file, "the file written into the guest's ext4");

      await a.stop("SIGKILL");
      assertSameBytes(await readVolume(b), bytes, "the volume through node B with node A dead");
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
