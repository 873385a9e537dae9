import assert from "node:assert/strict";
import { assertSameBytes, BlockType, SeededRandom, systemClock, testSeed } from "../core/mod.ts";
import { createMetadataService, MemoryKvStore, type MetadataService } from "../metadata/mod.ts";
import { MemoryBlockStore } from "../storage/mod.ts";
import { LeaseKeeper } from "../server/mod.ts";
import type { Device } from "./device.ts";
import { collectGarbage } from "./gc.ts";
import { VolumeService } from "./volumes.ts";

const BLOCK = 16 * 1024;

async function setup() {
  const kv = new MemoryKvStore();
  const mds = createMetadataService(kv, { prefix: "/t/" });
  await mds.cluster.init({
    blockSizeBytes: BLOCK,
    defaultBlockSpec: [{ kind: 0, options: "" }],
    ring: { type: 4, version: 1, replicationFactor: 2, peers: [], attrs: {} },
  });
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 5000 });
  const leases = await LeaseKeeper.start({ leases: mds.leases, clock: systemClock });
  const service = new VolumeService({
    metadata: mds,
    store,
    leases,
    holder: "gc-test",
    clock: systemClock,
  });
  return {
    mds,
    store,
    service,
    async close() {
      await service.close();
      await leases.close();
      await mds.close();
    },
  };
}

async function readAll(device: Device): Promise<Uint8Array> {
  const bytes = new Uint8Array(device.sizeBytes);
  await device.readAt(0, bytes);
  return bytes;
}

async function write(service: VolumeService, name: string, offset: number, data: Uint8Array) {
  const device = await service.openWritable(name);
  try {
    await device.writeAt(offset, data);
  } finally {
    await device.close();
  }
}

Deno.test("gc: a deleted volume's blocks go, other volumes keep theirs", async () => {
  const t = await setup();
  try {
    await t.mds.volumes.createBlockVolume("keep", 4 * BLOCK);
    await t.mds.volumes.createBlockVolume("drop", 4 * BLOCK);
    await write(t.service, "keep", 0, new Uint8Array(4 * BLOCK).fill(1));
    await write(t.service, "drop", 0, new Uint8Array(4 * BLOCK).fill(2));
    const before = t.store.usedBlocks();
    assert.equal((await collectGarbage({ metadata: t.mds, store: t.store })).deleted, 0);
    await t.mds.volumes.deleteVolume("drop");
    const result = await collectGarbage({ metadata: t.mds, store: t.store });
    // Four data blocks, one map chunk and one root.
    assert.equal(result.deleted, 6);
    assert.equal(t.store.usedBlocks(), before - 6);
    const keep = await t.service.openWritable("keep");
    assertSameBytes(await readAll(keep), new Uint8Array(4 * BLOCK).fill(1));
    await keep.close();
  } finally {
    await t.close();
  }
});

Deno.test("gc: blocks only a deleted snapshot saw go; what others see stays", async () => {
  const t = await setup();
  try {
    await t.mds.volumes.createBlockVolume("db", 4 * BLOCK);
    await write(t.service, "db", 0, new Uint8Array(4 * BLOCK).fill(1));
    await t.service.createSnapshot("db", "ones");
    await write(t.service, "db", 0, new Uint8Array(2 * BLOCK).fill(2));
    await t.service.createSnapshot("db", "twos");
    await write(t.service, "db", 0, new Uint8Array(BLOCK).fill(3));
    assert.equal((await collectGarbage({ metadata: t.mds, store: t.store })).deleted, 0);
    await t.mds.snapshots.deleteSnapshot(2, "ones");
    const { deleted } = await collectGarbage({ metadata: t.mds, store: t.store });
    // Blocks 0 and 1 of "ones" (replaced by "twos"), its map chunk and its root.
    assert.equal(deleted, 4);
    const twos = new Uint8Array(4 * BLOCK).fill(1);
    twos.fill(2, 0, 2 * BLOCK);
    assertSameBytes(await readAll(await t.service.openSnapshot("db", "twos")), twos);
    const head = twos.slice();
    head.fill(3, 0, BLOCK);
    const device = await t.service.openWritable("db");
    assertSameBytes(await readAll(device), head);
    await device.close();
  } finally {
    await t.close();
  }
});

Deno.test("gc: a volume created after the listing keeps its blocks", async () => {
  const t = await setup();
  try {
    await t.mds.volumes.createBlockVolume("old", BLOCK);
    const stale = await t.mds.volumes.listVolumes();
    await t.mds.volumes.createBlockVolume("new", 2 * BLOCK);
    await write(t.service, "new", 0, new Uint8Array(2 * BLOCK).fill(5));
    // GC lists volumes, then a volume is created and written before the store is scanned.
    const staleMetadata: MetadataService = Object.create(t.mds);
    Object.defineProperty(staleMetadata, "volumes", {
      value: { ...t.mds.volumes, listVolumes: () => Promise.resolve(stale) },
    });
    const { deleted } = await collectGarbage({ metadata: staleMetadata, store: t.store });
    assert.equal(deleted, 0);
  } finally {
    await t.close();
  }
});

Deno.test("gc: the writer's unflushed blocks are never taken", async () => {
  const t = await setup();
  try {
    await t.mds.volumes.createBlockVolume("db", 4 * BLOCK);
    const device = await t.service.openWritable("db");
    await device.writeAt(0, new Uint8Array(3 * BLOCK).fill(4)); // no flush: no map entry yet
    assert.equal((await collectGarbage({ metadata: t.mds, store: t.store })).deleted, 0);
    await device.flush();
    assertSameBytes(
      (await readAll(device)).subarray(0, 3 * BLOCK),
      new Uint8Array(3 * BLOCK).fill(4),
    );
    await device.close();
  } finally {
    await t.close();
  }
});

Deno.test("gc: a head that has only a base keeps the base's blocks", async () => {
  const t = await setup();
  try {
    await t.mds.volumes.createBlockVolume("db", 2 * BLOCK);
    await write(t.service, "db", 0, new Uint8Array(2 * BLOCK).fill(1));
    await t.service.createSnapshot("db", "s");
    await write(t.service, "db", 0, new Uint8Array(2 * BLOCK).fill(2));
    // Restored, and the snapshot deleted before any writer opened the volume again: the head's
    // contents are its base's, which nothing else names.
    await t.mds.snapshots.restoreSnapshot(2, "s");
    await t.mds.snapshots.deleteSnapshot(2, "s");
    await collectGarbage({ metadata: t.mds, store: t.store });
    const device = await t.service.openWritable("db");
    assertSameBytes(await readAll(device), new Uint8Array(2 * BLOCK).fill(1));
    await device.close();
  } finally {
    await t.close();
  }
});

Deno.test("gc: random histories keep every head and snapshot readable", async () => {
  const seed = testSeed();
  const random = new SeededRandom(seed);
  const t = await setup();
  try {
    const size = 6 * BLOCK;
    await t.mds.volumes.createBlockVolume("db", size);
    const model = new Uint8Array(size);
    const snapshots = new Map<string, Uint8Array>();
    let clone: { name: string; bytes: Uint8Array } | null = null;
    const device = await t.service.openWritable("db");
    for (let step = 0; step < 120; step++) {
      const choice = random.int(10);
      if (choice < 5) {
        const offset = random.int(size - 1);
        const data = random.bytes(Math.min(size - offset, 1 + random.int(2 * BLOCK)));
        await device.writeAt(offset, data);
        model.set(data, offset);
      } else if (choice < 6) {
        const offset = random.int(size / BLOCK) * BLOCK;
        await device.trim(offset, BLOCK);
        model.fill(0, offset, offset + BLOCK);
      } else if (choice < 7) {
        const name = `s${step}`;
        await t.service.createSnapshot("db", name);
        snapshots.set(name, model.slice());
      } else if (choice < 8 && snapshots.size > 0) {
        const names = [...snapshots.keys()].filter((n) => n !== clone?.name);
        const name = names.length === 0 ? undefined : names[random.int(names.length)];
        if (name !== undefined) {
          await t.mds.snapshots.deleteSnapshot(2, name);
          snapshots.delete(name);
        }
      } else if (choice < 9 && clone === null && snapshots.size > 0) {
        const name = [...snapshots.keys()][0]!;
        await t.mds.volumes.createClone("copy", 2, name);
        clone = { name, bytes: snapshots.get(name)! };
      } else {
        await device.flush();
        await collectGarbage({ metadata: t.mds, store: t.store });
      }
      if (step % 10 === 9) {
        const where = `seed ${seed} step ${step}`;
        assertSameBytes(await readAll(device), model, `${where}: head`);
        for (const [name, bytes] of snapshots) {
          assertSameBytes(
            await readAll(await t.service.openSnapshot("db", name)),
            bytes,
            `${where}: ${name}`,
          );
        }
        if (clone !== null) {
          const copy = await t.service.openWritable("copy");
          assertSameBytes(await readAll(copy), clone.bytes, `${where}: clone`);
          await copy.close();
        }
      }
    }
    await device.close();
  } finally {
    await t.close();
  }
});

Deno.test("gc: a cluster node keeps its snapshot blocks whose maps are on other nodes", async () => {
  const t = await setup();
  try {
    await t.mds.volumes.createBlockVolume("db", 4 * BLOCK);
    await write(t.service, "db", 0, new Uint8Array(4 * BLOCK).fill(1));
    await t.service.createSnapshot("db", "ones");
    await write(t.service, "db", 0, new Uint8Array(BLOCK).fill(2));
    // This node holds the snapshot's data blocks; their root and map chunk are elsewhere.
    const node = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 100 });
    for await (const ref of t.store.blockRefs()) {
      if (ref.type === BlockType.Data) await node.putBlock(ref, await t.store.getBlock(ref));
    }
    const held = node.usedBlocks();
    assert.ok(held >= 4);
    const result = await collectGarbage({ metadata: t.mds, store: node, reader: t.store });
    assert.equal(result.deleted, 0, "every block is live, read through the cluster");
    assert.equal(node.usedBlocks(), held);
    // Once the snapshot is gone its replaced block goes from this node too.
    await t.mds.snapshots.deleteSnapshot(2, "ones");
    const after = await collectGarbage({ metadata: t.mds, store: node, reader: t.store });
    assert.equal(after.deleted, 1);
  } finally {
    await t.close();
  }
});
