/**
 * The rebalancer over real TDP servers on loopback: after each kind of ring change, passes on
 * every node leave every block on exactly the first R peers of its permutation with its bytes;
 * surplus copies go only after the holders confirmed; a newer copy at a holder is never
 * overwritten; a silent holder keeps the surplus in place; copies keep to the rate bound. Also
 * the distributor's writes while blocks are still where the old ring put them.
 */

import assert from "node:assert/strict";
import { type BlockRef, ErrorCode, isTorusError, systemClock } from "../core/mod.ts";
import { isModifiable, type ModifiableRing } from "../ring/mod.ts";
import { type BlockStore, ForwardingStore, patternBlock, testRef } from "../storage/mod.ts";
import type { PeerDirectory } from "./peer_directory.ts";
import type { PeerStore } from "./protocols/protocol.ts";
import { Rebalancer } from "./rebalancer.ts";
import { BLOCK, MemoryStaleMarks, TestCluster } from "./test_cluster.ts";

const BLOCKS = 40;

function refs(): BlockRef[] {
  return Array.from({ length: BLOCKS }, (_, i) => testRef(i, 3));
}

function modifiable(cluster: TestCluster): ModifiableRing {
  assert.ok(isModifiable(cluster.ring));
  return cluster.ring;
}

/** Writes BLOCKS blocks through a client distributor under the current ring. */
async function writeBlocks(cluster: TestCluster): Promise<void> {
  const distributor = await cluster.distributor();
  for (const [i, ref] of refs().entries()) await distributor.putBlock(ref, patternBlock(BLOCK, i));
  await distributor.close();
}

/** Rebalancers of every started peer (members and removed ones alike). */
function rebalancers(
  cluster: TestCluster,
  rateBytesPerSecond = 0,
  isStale?: (ref: BlockRef, uuid: string) => boolean,
): Rebalancer[] {
  return cluster.uuids.map((self, i) =>
    new Rebalancer({
      self,
      local: cluster.stores[i]!,
      ring: () => cluster.ring,
      peers: cluster.directory(self),
      clock: systemClock,
      rateBytesPerSecond,
      batchRefs: 7,
      callTimeoutMs: 500,
      ...(isStale ? { isStale } : {}),
    })
  );
}

/** Passes on every node until one round is complete everywhere and moved nothing. */
async function settle(all: readonly Rebalancer[]): Promise<void> {
  for (let round = 0; round < 5; round++) {
    const before = all.reduce(
      (n, r) => n + r.progress().sentBlocks + r.progress().deletedBlocks,
      0,
    );
    const results = [];
    for (const rebalancer of all) results.push(await rebalancer.pass());
    const after = all.reduce((n, r) => n + r.progress().sentBlocks + r.progress().deletedBlocks, 0);
    if (results.every((r) => r.complete) && after === before) return;
  }
  assert.fail("the rebalancers did not settle in 5 rounds");
}

/** Every block is on exactly its ring holders, with its bytes. */
async function assertPlaced(cluster: TestCluster, changed?: BlockRef): Promise<void> {
  for (const [i, ref] of refs().entries()) {
    if (ref.key === changed?.key) continue;
    const want = [...cluster.ring.getHolders(ref)].sort();
    assert.deepEqual((await cluster.holdersOf(ref)).sort(), want, `holders of ${ref}`);
    for (const uuid of want) {
      assert.deepEqual(await cluster.storeOf(uuid).getBlock(ref), patternBlock(BLOCK, i));
    }
  }
}

function test(name: string, fn: (cluster: TestCluster) => Promise<void>): void {
  Deno.test(`Rebalancer: ${name}`, async () => {
    const cluster = await TestCluster.start(3, 2, 128);
    try {
      await writeBlocks(cluster);
      await fn(cluster);
    } finally {
      await cluster.close();
    }
  });
}

test("a balanced cluster moves nothing", async (cluster) => {
  const all = rebalancers(cluster);
  await settle(all);
  assert.equal(all.reduce((n, r) => n + r.progress().sentBlocks, 0), 0);
  await assertPlaced(cluster);
});

test("a peer added: blocks move to it and leave the peers no longer holders", async (cluster) => {
  const added = await cluster.startPeer();
  cluster.ring = modifiable(cluster).addPeers([added]);
  const all = rebalancers(cluster);
  await settle(all);
  await assertPlaced(cluster);
  assert.ok(cluster.stores[3]!.usedBlocks() > 0, "the new peer holds blocks");
  assert.ok(all.reduce((n, r) => n + r.progress().deletedBlocks, 0) > 0, "surplus deleted");
});

test("a peer removed: its blocks drain off and it ends empty", async (cluster) => {
  cluster.ring = modifiable(cluster).removePeers(["peer-1"]);
  await settle(rebalancers(cluster));
  await assertPlaced(cluster);
  assert.equal(cluster.stores[1]!.usedBlocks(), 0);
});

test("a dead peer forced out: the others bring every block back to 2 copies", async (cluster) => {
  await cluster.stop("peer-2");
  // Its disk is gone with it.
  for await (const ref of cluster.stores[2]!.blockRefs()) await cluster.stores[2]!.deleteBlock(ref);
  cluster.ring = modifiable(cluster).removePeers(["peer-2"]);
  const living = rebalancers(cluster).filter((_, i) => i !== 2);
  await settle(living);
  await assertPlaced(cluster);
});

test("replication raised to 3 and lowered to 1", async (cluster) => {
  cluster.ring = modifiable(cluster).changeReplication(3);
  await settle(rebalancers(cluster));
  await assertPlaced(cluster);
  cluster.ring = modifiable(cluster).changeReplication(1);
  await settle(rebalancers(cluster));
  await assertPlaced(cluster);
  assert.equal(cluster.stores.reduce((n, s) => n + s.usedBlocks(), 0), BLOCKS);
});

test("a holder that already has newer bytes keeps them", async (cluster) => {
  const added = await cluster.startPeer();
  cluster.ring = modifiable(cluster).addPeers([added]);
  // A writer on the new ring put a newer version at the new peer before any rebalancer ran (and,
  // as writers do while nodes are unsettled, at every node that kept a copy).
  const moved = refs().filter((ref) => cluster.ring.getHolders(ref).includes(added.uuid));
  assert.ok(moved.length > 0);
  const newer = patternBlock(BLOCK, 999);
  for (const store of cluster.stores) {
    if (store === cluster.stores[3] || await store.hasBlock(moved[0]!)) {
      await store.putBlock(moved[0]!, newer);
    }
  }
  const all = rebalancers(cluster);
  await settle(all);
  assert.deepEqual(await cluster.stores[3]!.getBlock(moved[0]!), newer);
});

test("a surplus copy whose holder has other bytes stays, and the pass is incomplete", async (cluster) => {
  // A node that lost unflushed changes in a power loss pushed its older copy to a new holder
  // before any writer noticed; this node's copy (the current one) must not go.
  const added = await cluster.startPeer();
  cluster.ring = modifiable(cluster).addPeers([added]);
  const ref = refs().find((r) => cluster.ring.getHolders(r).includes(added.uuid))!;
  const leaving = cluster.uuids.find((uuid, i) =>
    i < 3 && !cluster.ring.getHolders(ref).includes(uuid)
  );
  const leavingIndex = leaving === undefined ? -1 : cluster.uuids.indexOf(leaving);
  if (leavingIndex < 0 || !await cluster.stores[leavingIndex]!.hasBlock(ref)) {
    // Every old holder stays one: pick another block.
    return;
  }
  const current = patternBlock(BLOCK, 4321);
  await cluster.stores[leavingIndex]!.putBlock(ref, current);
  for (const uuid of cluster.ring.getHolders(ref)) {
    await cluster.storeOf(uuid).putBlock(ref, patternBlock(BLOCK, 1234)); // older bytes
  }
  const rebalancer = rebalancers(cluster)[leavingIndex]!;
  assert.equal((await rebalancer.pass()).complete, false);
  assert.deepEqual(await cluster.stores[leavingIndex]!.getBlock(ref), current, "kept");
  assert.ok(rebalancer.progress().differingCopies > 0);
  // Once the holders have the same bytes, the copy goes.
  for (const uuid of cluster.ring.getHolders(ref)) {
    await cluster.storeOf(uuid).putBlock(ref, current);
  }
  await rebalancer.pass();
  assert.equal(await cluster.stores[leavingIndex]!.hasBlock(ref), false);
});

/** A peer whose `hasBlocks` answers "lacking" for everything: a block that arrived after the check. */
class LateAnswers extends ForwardingStore implements PeerStore {
  readonly address: string;
  readonly instance: string | null;
  constructor(inner: PeerStore) {
    super(inner);
    this.address = inner.address;
    this.instance = inner.instance;
  }
  hasBlocks(refs: readonly BlockRef[]): Promise<boolean[]> {
    return Promise.resolve(refs.map(() => false));
  }
  refreshCounts(): Promise<void> {
    return Promise.resolve();
  }
}

/** A store whose reads of `ref` return its bytes and then run `change` (a writer's change). */
class ChangedAfterRead extends ForwardingStore {
  readonly #ref: BlockRef;
  readonly #change: () => Promise<void>;
  constructor(inner: BlockStore, ref: BlockRef, change: () => Promise<void>) {
    super(inner);
    this.#ref = ref;
    this.#change = change;
  }
  override async getBlock(ref: BlockRef): Promise<Uint8Array> {
    const bytes = await super.getBlock(ref);
    if (ref.key === this.#ref.key) await this.#change();
    return bytes;
  }
}

test("a copy that lands after a writer's newer bytes does not replace them", async (cluster) => {
  const added = await cluster.startPeer();
  cluster.ring = modifiable(cluster).addPeers([added]);
  const moved = refs().filter((ref) => cluster.ring.getHolders(ref).includes(added.uuid));
  const newer = patternBlock(BLOCK, 999);
  await cluster.stores[3]!.putBlock(moved[0]!, newer);
  // The writer's change reaches every node that has the block right after the first rebalancer
  // read its copy for the push (a writer sends changes to nodes that may keep copies too): that
  // push carries old bytes.
  let changed = false;
  const change = async () => {
    if (changed) return;
    changed = true;
    for (const store of cluster.stores) {
      if (await store.hasBlock(moved[0]!)) await store.putBlock(moved[0]!, newer);
    }
  };
  const locals = cluster.stores.map((store) => new ChangedAfterRead(store, moved[0]!, change));
  const directory = cluster.directory();
  const peers: PeerDirectory = {
    storeOf: (uuid) => {
      const store = directory.storeOf(uuid);
      return store === null ? null : new LateAnswers(store);
    },
    unreachable: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
  for (const [i, self] of cluster.uuids.entries()) {
    const rebalancer = new Rebalancer({
      self,
      local: locals[i]!,
      ring: () => cluster.ring,
      peers,
      clock: systemClock,
      rateBytesPerSecond: 0,
    });
    assert.equal((await rebalancer.pass()).complete, true);
  }
  assert.deepEqual(await cluster.stores[3]!.getBlock(moved[0]!), newer);
  await assertPlaced(cluster, moved[0]);
});

test("a holder that does not answer: surplus stays, the pass is incomplete", async (cluster) => {
  cluster.ring = modifiable(cluster).removePeers(["peer-1"]);
  await cluster.stop("peer-0");
  const leaving = rebalancers(cluster)[1]!;
  const heldBefore = new Set<string>();
  for await (const ref of cluster.stores[1]!.blockRefs()) heldBefore.add(ref.key);
  const result = await leaving.pass();
  assert.equal(result.complete, false);
  let kept = 0;
  for (const ref of refs()) {
    if (!heldBefore.has(ref.key)) continue;
    if (cluster.ring.getHolders(ref).includes("peer-0")) {
      assert.ok(await cluster.stores[1]!.hasBlock(ref), `${ref}: kept for the silent holder`);
      kept++;
    } else {
      assert.equal(await cluster.stores[1]!.hasBlock(ref), false, `${ref}: confirmed, dropped`);
    }
  }
  assert.ok(kept > 0);
  await cluster.restart("peer-0");
  await settle(rebalancers(cluster));
  await assertPlaced(cluster);
});

test("copies keep to --rebalance-rate", async (cluster) => {
  const added = await cluster.startPeer();
  cluster.ring = modifiable(cluster).addPeers([added]);
  const rate = 16 * BLOCK; // 16 blocks a second
  const all = rebalancers(cluster, rate);
  const startMs = Date.now();
  for (const rebalancer of all) await rebalancer.pass();
  const sent = all.reduce((n, r) => n + r.progress().sentBlocks, 0);
  assert.ok(sent >= 8, `${sent} blocks copied`);
  // Each node paces itself: the busiest one needs (its blocks - 1) / 16 seconds at least.
  const busiest = Math.max(...all.map((r) => r.progress().sentBlocks));
  const elapsedMs = Date.now() - startMs;
  assert.ok(elapsedMs >= (busiest - 1) / 16 * 1000 - 50, `${busiest} blocks in ${elapsedMs} ms`);
});

test("the loop marks the node rebalancing until a pass under the new ring ends", async (cluster) => {
  const all = rebalancers(cluster);
  for (const r of all) r.start();
  try {
    await waitFor(() => all.every((r) => !r.progress().rebalancing));
    const added = await cluster.startPeer();
    cluster.ring = modifiable(cluster).addPeers([added]);
    const late = rebalancers(cluster).slice(3);
    for (const r of late) r.start();
    for (const r of all) r.ringChanged();
    assert.ok(all.some((r) => r.progress().rebalancing), "a ring change is seen at once");
    await waitFor(() => [...all, ...late].every((r) => !r.progress().rebalancing));
    await assertPlaced(cluster);
    for (const r of late) await r.stop();
  } finally {
    for (const r of all) await r.stop();
  }
});

test("writes through the distributor while blocks are still where the old ring put them", async (cluster) => {
  const added = await cluster.startPeer();
  const added2 = await cluster.startPeer();
  cluster.ring = modifiable(cluster).addPeers([added, added2]);
  const distributor = await cluster.distributor({ moving: true, unsettled: () => cluster.uuids });
  try {
    // Range writes of blocks whose new holders lack them (one or both): each holder gets the
    // whole block, never a block of zeros around the range.
    const change = new Uint8Array(512).fill(0xee);
    for (const [i, ref] of refs().entries()) {
      await distributor.writeAt(ref, 1024, change);
      const want = patternBlock(BLOCK, i);
      want.set(change, 1024);
      for (const uuid of cluster.ring.getHolders(ref)) {
        assert.deepEqual(await cluster.storeOf(uuid).getBlock(ref), want, `${ref} at ${uuid}`);
      }
    }
    await distributor.flush();
    assert.ok(distributor.stats.pulledBlocks > 0, "some blocks had no copy at any new holder");
    // The rebalancers then find the holders complete and drop the old copies.
    await settle(rebalancers(cluster));
    for (const [i, ref] of refs().entries()) {
      const want = patternBlock(BLOCK, i);
      want.set(change, 1024);
      for (const uuid of cluster.ring.getHolders(ref)) {
        assert.deepEqual(await cluster.storeOf(uuid).getBlock(ref), want);
      }
      assert.deepEqual(
        (await cluster.holdersOf(ref)).sort(),
        [...cluster.ring.getHolders(ref)].sort(),
      );
    }
  } finally {
    await distributor.close();
  }
});

test("while blocks move, a range write of a block no node has creates it, as in any store", async (cluster) => {
  const distributor = await cluster.distributor({ moving: true });
  try {
    const ref = testRef(1, 9);
    await distributor.writeAt(ref, 512, new Uint8Array(512).fill(3));
    const want = new Uint8Array(BLOCK);
    want.fill(3, 512, 1024);
    assert.deepEqual(
      (await cluster.holdersOf(ref)).sort(),
      [...cluster.ring.getHolders(ref)].sort(),
    );
    assert.deepEqual(await distributor.getBlock(ref), want);
    assert.equal(distributor.stats.pulledBlocks, 0);
  } finally {
    await distributor.close();
  }
});

for (const writeLevel of ["all", "one"] as const) {
  test(`level ${writeLevel}: a writer on an older ring is refused by nodes that know the newer one, reads the ring again, and its change lands on the newer ring's holders`, async (cluster) => {
    const old = cluster.ring;
    const added = await cluster.startPeer();
    cluster.ring = modifiable(cluster).addPeers([added]);
    cluster.nodeRingVersion = cluster.ring.version;
    let seen = old;
    let refreshes = 0;
    const distributor = await cluster.distributor({
      writeLevel,
      ring: () => seen,
      refreshRing: () => {
        refreshes++;
        seen = cluster.ring;
        return Promise.resolve();
      },
    });
    try {
      // A block the added peer now holds with one of its old holders: placed by the old ring,
      // the change would miss the added peer.
      const ref = refs().find((ref) => {
        const holders = cluster.ring.getHolders(ref);
        return holders.includes(added.uuid) && old.getHolders(ref).some((u) => holders.includes(u));
      })!;
      await settle(rebalancers(cluster));
      // The old holder that stays has not seen the new ring: it takes the change (at level one
      // that is the acknowledgement); the one that left refuses it.
      const staying = old.getHolders(ref).find((u) => cluster.ring.getHolders(ref).includes(u))!;
      cluster.laggingNodes.add(staying);
      const newer = patternBlock(BLOCK, 4242);
      await distributor.putBlock(ref, newer);
      await distributor.flush();
      assert.equal(refreshes, 1);
      for (const uuid of cluster.ring.getHolders(ref)) {
        assert.deepEqual(await cluster.storeOf(uuid).getBlock(ref), newer, uuid);
      }
    } finally {
      await distributor.close();
    }
  });
}

/**
 * Ring A, then B with a peer added: a block one of whose A holders (`kept`) is no B holder, which
 * has not dropped its copy yet (no rebalancer ran). Sets the cluster to B.
 */
async function ringAtoB(cluster: TestCluster) {
  const ringA = modifiable(cluster);
  const added = await cluster.startPeer();
  const ringB = ringA.addPeers([added]);
  const ref = refs().find((r) =>
    ringA.getHolders(r).some((u) => !ringB.getHolders(r).includes(u))
  )!;
  const kept = ringA.getHolders(ref).find((u) => !ringB.getHolders(ref).includes(u))!;
  cluster.ring = ringB;
  cluster.nodeRingVersion = ringB.version;
  return { ringA, ringB, added, ref, kept };
}

test("a ring that goes A→B→A: a node that kept its copy under B took B's changes, and serves them when it holds the block again", async (cluster) => {
  const { ringA, ringB, added, ref, kept } = await ringAtoB(cluster);
  // Every node may keep copies B puts elsewhere (none has applied B).
  const writer = await cluster.distributor({ moving: true, unsettled: () => cluster.uuids });
  const newer = patternBlock(BLOCK, 777);
  const range = new Uint8Array(100).fill(0xab);
  try {
    await writer.putBlock(ref, newer);
    await writer.writeAt(ref, 200, range);
    await writer.flush();
  } finally {
    await writer.close();
  }
  newer.set(range, 200);
  for (const uuid of cluster.uuids) {
    const store = cluster.storeOf(uuid);
    if (ringB.getHolders(ref).includes(uuid) || ringA.getHolders(ref).includes(uuid)) {
      assert.deepEqual(await store.getBlock(ref), newer, `${uuid}: every copy has the changes`);
    } else {
      assert.equal(await store.hasBlock(ref), false, `${uuid}: no copy made where there was none`);
    }
  }
  // Back to A: `kept` holds the block again and reads its own copy first.
  cluster.ring = ringB.removePeers([added.uuid]);
  cluster.nodeRingVersion = cluster.ring.version;
  const reader = await cluster.distributor({ self: cluster.uuids.indexOf(kept) });
  try {
    assert.deepEqual(await reader.getBlock(ref), newer);
    assert.equal(reader.stats.localBlocks, 1);
  } finally {
    await reader.close();
  }
});

test("a node that may keep a copy and misses a change is marked before the change counts; its copy goes once a holder has the block", async (cluster) => {
  const { ref, kept } = await ringAtoB(cluster);
  const marks = new MemoryStaleMarks();
  await cluster.stop(kept);
  const writer = await cluster.distributor({
    moving: true,
    unsettled: () => cluster.uuids,
    staleMarks: marks,
    minCopies: 1,
  });
  try {
    const newer = patternBlock(BLOCK, 778);
    await writer.putBlock(ref, newer);
    assert.ok(marks.isStale(ref, kept), "marked before the put returned");
    await writer.flush();
    // Its older copy is passed over by reads.
    assert.deepEqual(await writer.getBlock(ref), newer);
    await cluster.restart(kept);
    await waitFor(() => !marks.isStale(ref, kept));
    assert.equal(await cluster.storeOf(kept).hasBlock(ref), false, "the older copy deleted");
    for (const uuid of cluster.ring.getHolders(ref)) {
      assert.deepEqual(await cluster.storeOf(uuid).getBlock(ref), newer, uuid);
    }
  } finally {
    await writer.close();
  }
});

test("an older copy off the holders stays (marked) while no holder has the block yet", async (cluster) => {
  const { ref, kept } = await ringAtoB(cluster);
  // B's holders lack the block (its newer copy is still on its way, at another old holder), and
  // `kept` was marked by an earlier writer.
  for (const uuid of cluster.ring.getHolders(ref)) {
    const store = cluster.storeOf(uuid);
    if (await store.hasBlock(ref)) await store.deleteBlock(ref);
  }
  const marks = new MemoryStaleMarks();
  await marks.add(ref.volume, kept, [ref]);
  const writer = await cluster.distributor({
    unsettled: () => cluster.uuids,
    staleMarks: marks,
    minCopies: 1,
  });
  try {
    await writer.adoptStaleMarks(ref.volume);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    assert.ok(await cluster.storeOf(kept).hasBlock(ref), "kept while no holder has the block");
    assert.ok(marks.isStale(ref, kept), "still marked");
    // The block reaches a holder: the older copy goes.
    const holder = cluster.ring.getHolders(ref)[0]!;
    await cluster.storeOf(holder).putBlock(ref, patternBlock(BLOCK, 5));
    await waitFor(() => !marks.isStale(ref, kept));
    assert.equal(await cluster.storeOf(kept).hasBlock(ref), false);
  } finally {
    await writer.close();
  }
});

test("a holder that restarted without its unflushed change, and pushed its older copy to a new holder before the writer noticed: the writer rewrites both from the node that took the change", async (cluster) => {
  const ringA = modifiable(cluster);
  const added = await cluster.startPeer();
  const ringB = ringA.addPeers([added]);
  // A block that moves from {lost, kept} to {lost, added}.
  const ref = refs().find((r) => {
    const a = ringA.getHolders(r);
    const b = ringB.getHolders(r);
    return b.includes(added.uuid) && a.some((u) => b.includes(u));
  })!;
  const lost = ringA.getHolders(ref).find((u) => ringB.getHolders(ref).includes(u))!;
  const kept = ringA.getHolders(ref).find((u) => u !== lost)!;
  const writer = await cluster.distributor({ unsettled: () => cluster.uuids });
  try {
    const older = await cluster.storeOf(lost).getBlock(ref);
    const current = patternBlock(BLOCK, 2468);
    await writer.putBlock(ref, current);
    // The ring changes; `lost` loses power before any flush (its copy is the older one again,
    // under a new instance) and its rebalancer pushes that copy to the new holder.
    cluster.ring = ringB;
    await cluster.stop(lost);
    await cluster.storeOf(lost).putBlock(ref, older);
    await cluster.restart(lost);
    await cluster.storeOf(added.uuid).putBlock(ref, older);
    await writer.flush();
    for (const uuid of ringB.getHolders(ref)) {
      assert.deepEqual(await cluster.storeOf(uuid).getBlock(ref), current, uuid);
    }
    assert.deepEqual(await cluster.storeOf(kept).getBlock(ref), current);
  } finally {
    await writer.close();
  }
});

test("while a block moves, when its only copies are marked stale, one of them wins rather than the resync waiting forever", async (cluster) => {
  const { ringB, added, ref, kept } = await ringAtoB(cluster);
  const staying = ringB.getHolders(ref).find((uuid) => uuid !== added.uuid)!;
  // The new holder lacks the block; both copies (the one that stays a holder, and the one that
  // does not) are marked by an earlier writer.
  const marks = new MemoryStaleMarks();
  await marks.add(ref.volume, kept, [ref]);
  await marks.add(ref.volume, staying, [ref]);
  const expected = await cluster.storeOf(staying).getBlock(ref);
  const writer = await cluster.distributor({
    moving: true,
    unsettled: () => cluster.uuids,
    staleMarks: marks,
    minCopies: 1,
  });
  try {
    await writer.adoptStaleMarks(ref.volume);
    await waitFor(() => !marks.isStale(ref, staying) && !marks.isStale(ref, kept));
    await waitFor(() => marks.marked().size === 0);
    assert.deepEqual(await cluster.storeOf(added.uuid).getBlock(ref), expected);
    // The loss of whatever the marks stood for is reported once.
    await assert.rejects(
      writer.flush(),
      (error: unknown) => isTorusError(error, ErrorCode.OutcomeUnknown),
    );
    await writer.flush();
  } finally {
    await writer.close();
  }
});

test("a surplus copy kept for a holder marked stale leaves the pass incomplete", async (cluster) => {
  cluster.ring = modifiable(cluster).removePeers(["peer-1"]);
  const marks = new MemoryStaleMarks();
  let surplus: BlockRef | null = null;
  for await (const held of cluster.stores[1]!.blockRefs()) surplus ??= held;
  assert.ok(surplus !== null);
  const holder = cluster.ring.getHolders(surplus)[0]!;
  await marks.add(surplus.volume, holder, [surplus]);
  const leaving = rebalancers(cluster, 0, (r, uuid) => marks.isStale(r, uuid))[1]!;
  assert.equal((await leaving.pass()).complete, false);
  assert.ok(await cluster.stores[1]!.hasBlock(surplus), "kept: the marked holder confirms nothing");
  await marks.remove(surplus.volume, holder, [surplus]);
  assert.equal((await leaving.pass()).complete, true);
  assert.equal(await cluster.stores[1]!.hasBlock(surplus), false);
});

test("a copy placed by an older ring is refused by a node that knows a newer one", async (cluster) => {
  const old = cluster.ring;
  const added = await cluster.startPeer();
  cluster.ring = modifiable(cluster).addPeers([added]);
  // The nodes know a ring newer still; this rebalancer follows the one before.
  cluster.nodeRingVersion = cluster.ring.version + 1;
  const behind = rebalancers(cluster)[3]!;
  for (const uuid of old.memberUuids()) {
    const lagging = rebalancers(cluster)[cluster.uuids.indexOf(uuid)]!;
    assert.equal((await lagging.pass()).complete, false, `${uuid}: its copies were refused`);
    assert.ok(lagging.progress().failedCalls > 0);
  }
  assert.equal(cluster.stores[3]!.usedBlocks(), 0, "no copy reached the added peer");
  assert.equal((await behind.pass()).complete, true);
});

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail("timed out");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * A peer client that counts block reads and, with `loseCopies`, acts as a holder that restarts
 * right after each put without the copy (it was not flushed): a new instance, and no block.
 */
class WatchedHolder extends ForwardingStore implements PeerStore {
  readonly address: string;
  readonly #peer: PeerStore;
  reads = 0;
  restarts = 0;
  loseCopies = false;
  constructor(peer: PeerStore) {
    super(peer);
    this.#peer = peer;
    this.address = peer.address;
  }
  get instance(): string | null {
    const instance = this.#peer.instance;
    return instance === null ? null : `${instance}/${this.restarts}`;
  }
  override getBlock(ref: BlockRef, options?: { timeoutMs?: number }): Promise<Uint8Array> {
    this.reads++;
    return super.getBlock(ref, options);
  }
  override async putBlock(
    ref: BlockRef,
    data: Uint8Array,
    options?: { ifAbsent?: boolean },
  ): Promise<void> {
    await super.putBlock(ref, data, options);
    if (!this.loseCopies) return;
    await this.#peer.deleteBlock(ref);
    this.restarts++;
  }
  hasBlocks(refs: readonly BlockRef[]): Promise<boolean[]> {
    return this.#peer.hasBlocks(refs);
  }
  refreshCounts(): Promise<void> {
    return this.#peer.refreshCounts();
  }
}

/** A directory handing out one WatchedHolder per peer. */
function watchedDirectory(cluster: TestCluster, self: string): {
  peers: PeerDirectory;
  holders: Map<string, WatchedHolder>;
} {
  const directory = cluster.directory(self);
  const holders = new Map<string, WatchedHolder>();
  const peers: PeerDirectory = {
    storeOf: (uuid) => {
      const store = directory.storeOf(uuid);
      if (store === null) return null;
      let holder = holders.get(uuid);
      if (holder === undefined) holders.set(uuid, holder = new WatchedHolder(store));
      return holder;
    },
    unreachable: () => Promise.resolve(),
    close: () => directory.close(),
  };
  return { peers, holders };
}

function drainingRebalancer(cluster: TestCluster, peers: PeerDirectory): Rebalancer {
  return new Rebalancer({
    self: "peer-1",
    local: cluster.stores[1]!,
    ring: () => cluster.ring,
    peers,
    clock: systemClock,
    rateBytesPerSecond: 0,
    batchRefs: 7,
    callTimeoutMs: 500,
  });
}

test("a drained copy is read back only from holders that did not take it from this node", async (cluster) => {
  cluster.ring = modifiable(cluster).removePeers(["peer-1"]);
  const held = cluster.stores[1]!.usedBlocks();
  assert.ok(held > 0);
  const { peers, holders } = watchedDirectory(cluster, "peer-1");
  try {
    assert.equal((await drainingRebalancer(cluster, peers).pass()).complete, true);
    // Two holders per block now: the other old holder had it (read back), the third took this
    // node's copy (not read back).
    const reads = [...holders.values()].reduce((n, holder) => n + holder.reads, 0);
    assert.equal(reads, held);
    assert.equal(cluster.stores[1]!.usedBlocks(), 0);
    await assertPlaced(cluster);
  } finally {
    await peers.close();
  }
});

test("a holder that restarted without the copy it took: the surplus copy stays", async (cluster) => {
  cluster.ring = modifiable(cluster).removePeers(["peer-1"]);
  const before: BlockRef[] = [];
  for await (const ref of cluster.stores[1]!.blockRefs()) before.push(ref);
  const { peers, holders } = watchedDirectory(cluster, "peer-1");
  try {
    for (const uuid of ["peer-0", "peer-2"]) peers.storeOf(uuid);
    for (const holder of holders.values()) holder.loseCopies = true;
    assert.equal((await drainingRebalancer(cluster, peers).pass()).complete, false);
    for (const ref of before) {
      assert.ok(await cluster.stores[1]!.hasBlock(ref), `${ref}: kept, its new holder lost it`);
    }
  } finally {
    await peers.close();
  }
  await settle(rebalancers(cluster));
  await assertPlaced(cluster);
});
