/**
 * Garbage collection in a running `torus serve` (its periodic pass, `--gc-interval`): blocks that
 * only a deleted snapshot or a deleted volume could read are deleted and the store's used count
 * drops; and while passes run back to back, volumes created, written, snapshotted and overwritten
 * meanwhile keep every byte (checked after a restart, so the store is what is read). The races of
 * a single pass are unit-tested in src/block/gc_test.ts; this is the whole node.
 */

import assert from "node:assert/strict";
import { type NbdClient } from "../../src/block/mod.ts";
import { SeededRandom, testSeed } from "../../src/core/mod.ts";
import { assertEqualBytes, closeQuietly, E2eNode, e2eTest, MiB, readAll } from "./e2e_support.ts";

const seed = testSeed();
const BLOCK = 512 * 1024;

/** Total of the "deleted N of M blocks" lines serve logged. */
function deletedBlocks(output: string): number {
  let total = 0;
  for (const match of output.matchAll(/gc: deleted (\d+) of \d+ blocks/g)) {
    total += Number(match[1]);
  }
  return total;
}

async function writeAndFlush(client: NbdClient, offset: number, data: Uint8Array): Promise<void> {
  await client.writeAt(offset, data);
  await client.flush();
}

/** Opens `name`, runs `body`, closes (which flushes and unlocks). */
async function withClient(
  node: E2eNode,
  name: string,
  body: (client: NbdClient) => Promise<void>,
): Promise<void> {
  const client = await node.connect(name);
  try {
    await body(client);
  } finally {
    await closeQuietly(client);
  }
}

async function assertVolume(node: E2eNode, name: string, expected: Uint8Array): Promise<void> {
  await withClient(node, name, async (client) => {
    assertEqualBytes(await readAll(client), expected, `volume ${name}`);
  });
}

/** Waits until serve has logged at least `blocks` deleted blocks in total. */
async function waitForDeleted(node: E2eNode, blocks: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (deletedBlocks(node.serve.output()) < blocks) {
    if (Date.now() > deadline) {
      throw new Error(`GC deleted ${deletedBlocks(node.serve.output())} of ${blocks} blocks`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

e2eTest(
  `GC frees what deleted snapshots and volumes held, and keeps volumes written during its ` +
    `passes (seed ${seed})`,
  {},
  async () => {
    const random = new SeededRandom(seed);
    await using node = await E2eNode.start({ args: ["--gc-interval", "50ms"] });
    await node.createVolume("a", "8MiB");
    await node.createVolume("b", "4MiB");
    const oldA = random.bytes(8 * MiB);
    const newA = random.bytes(8 * MiB);
    await withClient(node, "a", (client) => writeAndFlush(client, 0, oldA));
    await node.ctl("block", "snapshot", "create", "a@s");
    // Overwriting every block after the snapshot copies each one into a new generation.
    await withClient(node, "a", (client) => writeAndFlush(client, 0, newA));
    await withClient(node, "b", (client) => writeAndFlush(client, 0, random.bytes(4 * MiB)));
    await node.restart("SIGTERM");
    const usedBefore = node.usedBlocksAtStart();

    await node.ctl("block", "snapshot", "delete", "a@s");
    await node.ctl("volume", "delete", "b");
    // a's 16 old data blocks and b's 8 are garbage now, with their roots and map chunks.
    await waitForDeleted(node, 24);
    await node.restart("SIGTERM");
    const usedAfter = node.usedBlocksAtStart();
    assert.ok(
      usedAfter <= usedBefore - 24,
      `used blocks: ${usedBefore} before, ${usedAfter} after`,
    );
    await assertVolume(node, "a", newA);

    // Volumes come and go while passes run; every byte of the live ones stays.
    await node.createVolume("scratch", "1MiB");
    await withClient(node, "scratch", (client) => writeAndFlush(client, 0, random.bytes(MiB)));
    const churned = await churnDuringGc(node, random);
    // Garbage made after the churn: once it is gone, passes have run over all the churn.
    const deletedBefore = deletedBlocks(node.serve.output());
    await node.ctl("volume", "delete", "scratch");
    await waitForDeleted(node, deletedBefore + 2);
    await node.restart("SIGTERM");
    await assertVolume(node, "a", newA);
    for (const [name, image] of churned) await assertVolume(node, name, image);
    // And after more passes over the restarted node's store.
    await new Promise((resolve) => setTimeout(resolve, 500));
    for (const [name, image] of churned) await assertVolume(node, name, image);
  },
);

/**
 * Creates, writes, snapshots and overwrites volumes while GC passes run every 50 ms: each new
 * volume's blocks appear while passes list and scan, and each deleted snapshot leaves garbage
 * beside live blocks. Returns the images the volumes must have.
 */
async function churnDuringGc(
  node: E2eNode,
  random: SeededRandom,
): Promise<Map<string, Uint8Array>> {
  const volumes = new Map<string, Uint8Array>();
  for (let i = 0; i < 3; i++) {
    const name = `c${i}`;
    await node.createVolume(name, "2MiB");
    const image = new Uint8Array(2 * MiB);
    await withClient(node, name, async (client) => {
      for (let k = 0; k < 8; k++) {
        const offset = random.int(2 * MiB - 70_000);
        const data = random.bytes(1 + random.int(70_000));
        image.set(data, offset);
        await writeAndFlush(client, offset, data);
      }
    });
    // A snapshot, an overwrite, the snapshot deleted: its blocks become garbage while others live.
    await node.ctl("block", "snapshot", "create", `${name}@x`);
    await withClient(node, name, async (client) => {
      const data = random.bytes(BLOCK + 1000);
      image.set(data, 100);
      await writeAndFlush(client, 100, data);
    });
    await node.ctl("block", "snapshot", "delete", `${name}@x`);
    volumes.set(name, image);
  }
  return volumes;
}
