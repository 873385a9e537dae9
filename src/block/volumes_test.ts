import assert from "node:assert/strict";
import { assertSameBytes, ErrorCode, isTorusError, systemClock } from "../core/mod.ts";
import { createMetadataService, MemoryKvStore, type MetadataService } from "../metadata/mod.ts";
import { type BlockStore, HeldStore, MemoryBlockStore } from "../storage/mod.ts";
import { LeaseKeeper } from "../server/mod.ts";
import type { Device } from "./device.ts";
import { parseVolumeSpec, VolumeService } from "./volumes.ts";

const BLOCK = 16 * 1024;

interface Node {
  service: VolumeService;
  leases: LeaseKeeper;
  close(): Promise<void>;
}

/** A metadata service with a cluster of BLOCK-byte blocks, and a shared store. */
async function cluster(): Promise<{ mds: MetadataService; store: BlockStore; kv: MemoryKvStore }> {
  const kv = new MemoryKvStore();
  const mds = createMetadataService(kv, { prefix: "/t/", ownsStore: false });
  await mds.cluster.init({
    blockSizeBytes: BLOCK,
    defaultBlockSpec: [{ kind: 0, options: "" }],
    ring: { type: 4, version: 1, replicationFactor: 2, peers: [], attrs: {} },
  });
  return { mds, store: new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 1000 }), kv };
}

/** A process holding volumes: its own metadata connection, lease and identity. */
async function node(
  kv: MemoryKvStore,
  store: BlockStore,
  options: { holder: string; ttlMs?: number; exclusiveHolder?: boolean },
): Promise<Node> {
  const clock = systemClock;
  const mds = createMetadataService(kv, { prefix: "/t/", ownsStore: false, clock });
  const leases = await LeaseKeeper.start({
    leases: mds.leases,
    clock,
    ttlMs: options.ttlMs ?? 30_000,
  });
  const service = new VolumeService({
    metadata: mds,
    store,
    leases,
    holder: options.holder,
    exclusiveHolder: options.exclusiveHolder ?? false,
    clock,
    requestTimeoutMs: 10_000,
  });
  return {
    service,
    leases,
    async close() {
      await service.close();
      await leases.close();
    },
  };
}

function fill(length: number, value: number): Uint8Array {
  return new Uint8Array(length).fill(value);
}

async function readAll(device: Device): Promise<Uint8Array> {
  const bytes = new Uint8Array(device.sizeBytes);
  await device.readAt(0, bytes);
  return bytes;
}

Deno.test("volumes: VOLUME@SNAPSHOT splits at the first @", () => {
  assert.deepEqual(parseVolumeSpec("db"), { volume: "db", snapshot: null });
  assert.deepEqual(parseVolumeSpec("db@s1"), { volume: "db", snapshot: "s1" });
  assert.deepEqual(parseVolumeSpec("db@s@1"), { volume: "db", snapshot: "s@1" });
  assert.throws(() => parseVolumeSpec("@s"), /VOLUME@SNAPSHOT/);
  assert.throws(() => parseVolumeSpec("db@"), /VOLUME@SNAPSHOT/);
});

Deno.test("volumes: written data survives close and reopen; handles share one volume", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("db", 4 * BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  try {
    const first = await a.service.openWritable("db");
    const second = await a.service.openWritable("db");
    await first.writeAt(100, fill(BLOCK, 7));
    const read = new Uint8Array(BLOCK);
    await second.readAt(100, read);
    assertSameBytes(read, fill(BLOCK, 7), "both handles see one volume");
    await first.close();
    assert.equal((await mds.blockVolumes.lockStatus(2)).state, "locked", "one handle left");
    await second.close();
    assert.equal((await mds.blockVolumes.lockStatus(2)).state, "free", "the last one unlocks");
    const again = await a.service.openWritable("db");
    await again.readAt(100, read);
    assertSameBytes(read, fill(BLOCK, 7));
    await again.close();
  } finally {
    await a.close();
  }
});

Deno.test("volumes: an exclusive handle (an AoE target) is the only writer here; others wait their turn", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("db", 4 * BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  const isLocked = (pattern: RegExp) => (error: unknown) =>
    isTorusError(error, "locked") && pattern.test(error.message);
  try {
    const nbd = await a.service.openDevice("db");
    await assert.rejects(
      a.service.openDevice("db", { exclusiveFor: "AoE target e1.2 on eth0" }),
      isLocked(/open for write here \(1 handle, such as NBD connections\)/),
    );
    await nbd.close();
    const target = await a.service.openDevice("db", { exclusiveFor: "AoE target e1.2 on eth0" });
    await target.writeAt(0, fill(BLOCK, 3));
    await assert.rejects(
      a.service.openDevice("db"),
      isLocked(/served here by the AoE target e1.2/),
    );
    await assert.rejects(
      a.service.openDevice("db", { exclusiveFor: "AoE target e1.3 on eth1" }),
      isLocked(/served here by the AoE target e1.2/),
    );
    // Reading the head or a snapshot is no write: allowed.
    await (await a.service.openDevice("db", { readOnly: true })).close();
    await target.close();
    const after = await a.service.openDevice("db");
    assertSameBytes(await readAll(after), new Uint8Array(4 * BLOCK).fill(3, 0, BLOCK));
    await after.close();
  } finally {
    await a.close();
  }
});

Deno.test("volumes: every change of a writer carries its lock's fencing token, a newer one after a takeover", async () => {
  const { mds, kv } = await cluster();
  const store = new HeldStore(new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 1000 }));
  await mds.volumes.createBlockVolume("db", 4 * BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  try {
    const volume = await a.service.openWritable("db");
    await volume.writeAt(100, fill(BLOCK, 7));
    await volume.trim(0, BLOCK);
    await volume.flush();
    await volume.close();
    const first = new Set(store.fenceTokens);
    assert.equal(first.size, 1, `one token for one lock: ${[...first]}`);
    const [token] = first;
    assert.ok(token !== undefined && token > 0);
    store.fenceTokens.length = 0;
    const again = await a.service.openWritable("db");
    await again.writeAt(0, fill(BLOCK, 8));
    await again.close();
    assert.ok(store.fenceTokens.length > 0 && store.fenceTokens.every((t) => t! > token!));
  } finally {
    await a.close();
  }
});

Deno.test("volumes: a second writer is refused while the first holds the lock", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("db", 4 * BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  const b = await node(kv, store, { holder: "node-b" });
  try {
    const device = await a.service.openWritable("db");
    await assert.rejects(b.service.openWritable("db"), (e) => isTorusError(e, ErrorCode.Locked));
    await device.close();
    (await b.service.openWritable("db")).close();
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("volumes: an exclusive holder takes over the locks its dead earlier run left", async () => {
  const { mds, store, kv } = await cluster();
  const db = await mds.volumes.createBlockVolume("db", 4 * BLOCK);
  const logs = await mds.volumes.createBlockVolume("logs", 4 * BLOCK);
  const other = await mds.volumes.createBlockVolume("other", 4 * BLOCK);
  // A run of node-a that died holding two locks (its lease lives on until its TTL), and a live
  // node-b holding a third.
  const deadLease = await mds.leases.grant(30_000);
  await mds.blockVolumes.lock(db.id, { uuid: "node-a", lease: deadLease });
  await mds.blockVolumes.lock(logs.id, { uuid: "node-a", lease: deadLease });
  const liveLease = await mds.leases.grant(30_000);
  await mds.blockVolumes.lock(other.id, { uuid: "node-b", lease: liveLease });
  const locked = (e: unknown) => isTorusError(e, ErrorCode.Locked);

  // Without the guarantee, the same holder name proves nothing: refused.
  const shared = await node(kv, store, { holder: "node-a" });
  try {
    await assert.rejects(shared.service.openWritable("db"), locked);
  } finally {
    await shared.close();
  }
  const restarted = await node(kv, store, { holder: "node-a", exclusiveHolder: true });
  try {
    const device = await restarted.service.openWritable("db");
    await device.writeAt(0, fill(4096, 7));
    await device.close();
    // Revoking the dead run's lease freed its other lock too; another holder's stays.
    assert.deepEqual(await mds.blockVolumes.lockStatus(logs.id), { state: "free" });
    await assert.rejects(restarted.service.openWritable("other"), locked);
    assert.equal((await mds.blockVolumes.lockStatus(other.id)).state, "locked");
  } finally {
    await restarted.close();
  }
});

Deno.test("volumes: releaseLocksOfEarlierRuns frees only this holder's stale locks", async () => {
  const { mds, store, kv } = await cluster();
  const db = await mds.volumes.createBlockVolume("db", 4 * BLOCK);
  const other = await mds.volumes.createBlockVolume("other", 4 * BLOCK);
  await mds.blockVolumes.lock(db.id, { uuid: "node-a", lease: await mds.leases.grant(30_000) });
  await mds.blockVolumes.lock(other.id, { uuid: "node-b", lease: await mds.leases.grant(30_000) });
  const restarted = await node(kv, store, { holder: "node-a", exclusiveHolder: true });
  try {
    await restarted.service.releaseLocksOfEarlierRuns();
    assert.deepEqual(await mds.blockVolumes.lockStatus(db.id), { state: "free" });
    assert.equal((await mds.blockVolumes.lockStatus(other.id)).state, "locked");
  } finally {
    await restarted.close();
  }
});

Deno.test("volumes: snapshots are exact wherever the volume is open", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("db", 4 * BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  const b = await node(kv, store, { holder: "node-b" });
  try {
    // Open nowhere: the metadata service seals the head's contents.
    await b.service.createSnapshot("db", "empty");
    const device = await a.service.openWritable("db");
    await device.writeAt(0, fill(2 * BLOCK, 1));
    // Open here: taken by the volume itself.
    await a.service.createSnapshot("db", "ones");
    await device.writeAt(BLOCK, fill(BLOCK, 2));
    // Open in another process: a request to its writer, answered at a flush point; writes in
    // flight around it land on one side or the other, never inside the snapshot half-done.
    const inFlight = device.writeAt(0, fill(BLOCK, 3));
    await b.service.createSnapshot("db", "twos");
    await inFlight;
    await device.writeAt(0, fill(4 * BLOCK, 9));
    const expectOnes = new Uint8Array(4 * BLOCK);
    expectOnes.fill(1, 0, 2 * BLOCK);
    assertSameBytes(await readAll(await b.service.openSnapshot("db", "ones")), expectOnes);
    const twos = await readAll(await b.service.openSnapshot("db", "twos"));
    assertSameBytes(twos.subarray(BLOCK, 2 * BLOCK), fill(BLOCK, 2));
    const first = twos.subarray(0, BLOCK);
    assert.ok(first.every((v) => v === 1) || first.every((v) => v === 3));
    assertSameBytes(
      await readAll(await b.service.openSnapshot("db", "empty")),
      new Uint8Array(4 * BLOCK),
    );
    const snapshotDevice = await b.service.openSnapshot("db", "ones");
    await assert.rejects(
      snapshotDevice.writeAt(0, fill(1, 1)),
      (e) => isTorusError(e, "read_only"),
    );
    await device.close();
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("volumes: restore brings a snapshot's contents and size back", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("db", 2 * BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  try {
    let device = await a.service.openWritable("db");
    await device.writeAt(0, fill(2 * BLOCK, 5));
    await device.close();
    await a.service.createSnapshot("db", "fives");
    await a.service.growVolume("db", 4 * BLOCK);
    device = await a.service.openWritable("db");
    assert.equal(device.sizeBytes, 4 * BLOCK);
    await device.writeAt(0, fill(4 * BLOCK, 6));
    await assert.rejects(
      mds.snapshots.restoreSnapshot(2, "fives"),
      (e) => isTorusError(e, ErrorCode.Locked),
    );
    await device.close();
    await mds.snapshots.restoreSnapshot(2, "fives");
    device = await a.service.openWritable("db");
    assert.equal(device.sizeBytes, 2 * BLOCK);
    assertSameBytes(await readAll(device), fill(2 * BLOCK, 5));
    // Writing after the restore leaves the snapshot as it was.
    await device.writeAt(0, fill(BLOCK, 8));
    await device.close();
    assertSameBytes(
      await readAll(await a.service.openSnapshot("db", "fives")),
      fill(2 * BLOCK, 5),
    );
  } finally {
    await a.close();
  }
});

Deno.test("volumes: a clone reads its snapshot until it writes its own data", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("gold", 3 * BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  try {
    const gold = await a.service.openWritable("gold");
    await gold.writeAt(0, fill(3 * BLOCK, 4));
    await a.service.createSnapshot("gold", "v1");
    await gold.writeAt(0, fill(3 * BLOCK, 5)); // after the snapshot: not the clone's business
    await mds.volumes.createClone("copy", 2, "v1");
    const copy = await a.service.openWritable("copy");
    assertSameBytes(await readAll(copy), fill(3 * BLOCK, 4));
    // Block by block too, its map now loaded (a read inside one block may be done at once).
    for (let index = 0; index < 3; index++) {
      const one = new Uint8Array(BLOCK);
      await copy.readAt(index * BLOCK, one);
      assertSameBytes(one, fill(3 * BLOCK, 4).subarray(index * BLOCK, (index + 1) * BLOCK));
    }
    await copy.writeAt(BLOCK + 10, fill(20, 7));
    await copy.trim(2 * BLOCK, BLOCK);
    const expected = fill(3 * BLOCK, 4);
    expected.fill(7, BLOCK + 10, BLOCK + 30);
    expected.fill(0, 2 * BLOCK);
    assertSameBytes(await readAll(copy), expected);
    await copy.close();
    const reopened = await a.service.openWritable("copy");
    assertSameBytes(await readAll(reopened), expected);
    await reopened.close();
    assertSameBytes(await readAll(gold), fill(3 * BLOCK, 5));
    assertSameBytes(await readAll(await a.service.openSnapshot("gold", "v1")), fill(3 * BLOCK, 4));
    await gold.close();
  } finally {
    await a.close();
  }
});

Deno.test("volumes: grow reaches the writer wherever it runs", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("db", BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  const b = await node(kv, store, { holder: "node-b" });
  try {
    const device = await a.service.openWritable("db");
    await b.service.growVolume("db", 3 * BLOCK);
    assert.equal(device.sizeBytes, 3 * BLOCK);
    await device.writeAt(2 * BLOCK, fill(BLOCK, 1));
    await assert.rejects(b.service.growVolume("db", BLOCK), (e) => isTorusError(e, "invalid"));
    await device.close();
    await b.service.growVolume("db", 4 * BLOCK);
    const reopened = await a.service.openWritable("db");
    assert.equal(reopened.sizeBytes, 4 * BLOCK);
    const tail = new Uint8Array(2 * BLOCK);
    await reopened.readAt(2 * BLOCK, tail);
    assertSameBytes(tail.subarray(0, BLOCK), fill(BLOCK, 1));
    assertSameBytes(tail.subarray(BLOCK), new Uint8Array(BLOCK));
    await reopened.close();
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("volumes: a lost lease ends the volumes opened under it", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("db", BLOCK);
  const a = await node(kv, store, { holder: "node-a", ttlMs: 900 });
  try {
    const device = await a.service.openWritable("db");
    await device.writeAt(0, fill(10, 1));
    const status = await mds.blockVolumes.lockStatus(2);
    assert.equal(status.state, "locked");
    // The lease expires behind the keeper's back (the store lost it); its next renewal learns it.
    await mds.leases.revoke(a.leases.lease);
    const failed = await waitFor(async () => {
      try {
        await device.writeAt(0, fill(10, 2));
        return false;
      } catch (error) {
        return isTorusError(error, ErrorCode.Locked);
      }
    }, 10_000);
    assert.ok(failed, "writes fail with locked once the lease is known lost");
    await device.close().catch(() => {});
  } finally {
    await a.close();
  }
});

Deno.test("volumes: a read-only view of the head is a temporary snapshot", async () => {
  const { mds, store, kv } = await cluster();
  await mds.volumes.createBlockVolume("db", BLOCK);
  const a = await node(kv, store, { holder: "node-a" });
  try {
    const device = await a.service.openWritable("db");
    await device.writeAt(0, fill(BLOCK, 3));
    const view = await a.service.openDevice("db", { readOnly: true });
    await device.writeAt(0, fill(BLOCK, 4));
    assertSameBytes(await readAll(view), fill(BLOCK, 3));
    assert.equal((await mds.snapshots.listSnapshots(2)).length, 1);
    await view.close();
    assert.deepEqual(await mds.snapshots.listSnapshots(2), []);
    await device.close();
    assert.deepEqual(await a.service.exportNames(), ["db"]);
  } finally {
    await a.close();
  }
});

async function waitFor(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return false;
}
