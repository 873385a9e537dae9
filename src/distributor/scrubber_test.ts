/**
 * The scrubber over file stores served by TDP on loopback: a copy whose bytes rotted on disk is
 * found by a pass and replaced by a good copy from another holder; reads are paced.
 */

import assert from "node:assert/strict";
import { systemClock } from "../core/mod.ts";
import { patternBlock, testRef } from "../storage/mod.ts";
import { Scrubber } from "./scrubber.ts";
import { BLOCK, flipByteOf, TestCluster } from "./test_cluster.ts";

function scrubberOf(cluster: TestCluster, index: number, rateBytesPerSecond = 0): Scrubber {
  return new Scrubber({
    self: cluster.uuids[index]!,
    local: cluster.stores[index]!,
    ring: () => cluster.ring,
    peers: cluster.directory(cluster.uuids[index]!),
    clock: systemClock,
    rateBytesPerSecond,
    intervalMs: 60_000,
  });
}

Deno.test("Scrubber: a copy rotted on disk is found and repaired from another holder", async () => {
  const cluster = await TestCluster.start(3, 2, 64, true);
  try {
    const writer = await cluster.distributor();
    const blocks = Array.from({ length: 6 }, (_, i) => testRef(i, 5));
    for (const [i, ref] of blocks.entries()) await writer.putBlock(ref, patternBlock(BLOCK, i));
    await writer.close();
    const ref = blocks[2]!;
    const good = patternBlock(BLOCK, 2);
    const index = cluster.uuids.indexOf(cluster.ring.getHolders(ref)[0]!);
    assert.ok(await flipByteOf(cluster.dirs[index]!, good.subarray(2048, 2100), 5));
    await assert.rejects(cluster.stores[index]!.getBlock(ref), /checksum/);

    const scrubber = scrubberOf(cluster, index);
    await scrubber.pass();
    const progress = scrubber.progress();
    assert.equal(progress.damagedBlocks, 1);
    assert.equal(progress.repairedBlocks, 1);
    assert.equal(progress.scrubbedBlocks, cluster.stores[index]!.usedBlocks());
    assert.deepEqual(await cluster.stores[index]!.getBlock(ref), good);
    // The next pass finds nothing wrong.
    await scrubber.pass();
    assert.equal(scrubber.progress().damagedBlocks, 1);
  } finally {
    await cluster.close();
  }
});

Deno.test("Scrubber: every copy damaged: nothing is made up, the block stays unrepaired", async () => {
  const cluster = await TestCluster.start(2, 2, 64, true);
  try {
    const writer = await cluster.distributor();
    const ref = testRef(1, 6);
    const good = patternBlock(BLOCK, 11);
    await writer.putBlock(ref, good);
    await writer.close();
    for (const dir of cluster.dirs) assert.ok(await flipByteOf(dir, good.subarray(0, 64), 1));
    const scrubber = scrubberOf(cluster, 0);
    await scrubber.pass();
    assert.equal(scrubber.progress().unrepairedBlocks, 1);
    await assert.rejects(cluster.stores[0]!.getBlock(ref), /checksum/);
  } finally {
    await cluster.close();
  }
});

Deno.test("Scrubber: reads keep to the rate", async () => {
  const cluster = await TestCluster.start(2, 2, 64);
  try {
    const writer = await cluster.distributor();
    for (let i = 0; i < 9; i++) await writer.putBlock(testRef(i, 7), patternBlock(BLOCK, i));
    await writer.close();
    const scrubber = scrubberOf(cluster, 0, 16 * BLOCK);
    const startMs = Date.now();
    await scrubber.pass();
    // Nine blocks at 16 a second: the ninth starts 0.5 s after the first.
    assert.ok(Date.now() - startMs >= 450, `${Date.now() - startMs} ms`);
    assert.equal(scrubber.progress().scrubbedBlocks, 9);
  } finally {
    await cluster.close();
  }
});
