/**
 * ClusterMember over an in-memory metadata store and real TDP on loopback: members register and
 * join the ring, write and read through their distributors, find a member that came back on
 * another port without waiting for a heartbeat, and unregister when closed.
 */

import assert from "node:assert/strict";
import { BlockRef, isTorusError, systemClock } from "../core/mod.ts";
import { TdpProtocol } from "../distributor/mod.ts";
import { createMetadataService, MemoryKvStore, type MetadataService } from "../metadata/mod.ts";
import { createRing, isModifiable, ringFromMessage, RingType } from "../ring/mod.ts";
import { MemoryBlockStore, patternBlock, testRef } from "../storage/mod.ts";
import { ClusterMember } from "./cluster_member.ts";
import { MemoryFenceRecords } from "./fenced_store.ts";
import { LeaseKeeper } from "./lease_keeper.ts";

const BLOCK = 4096;
/** Member i's UUID. */
const m = (i: number) => `00000000-0000-4000-8000-00000000000${i + 1}`;

async function cluster(): Promise<{ metadata: MetadataService; leases: LeaseKeeper }> {
  const metadata = createMetadataService(new MemoryKvStore(), { prefix: "/member-test/" });
  await metadata.cluster.init({
    blockSizeBytes: BLOCK,
    defaultBlockSpec: [{ kind: 0, options: "" }],
    ring: createRing(RingType.Ketama, { version: 1, replication: 2, peers: [] }).toMessage(),
  });
  const leases = await LeaseKeeper.start({ leases: metadata.leases, clock: systemClock });
  return { metadata, leases };
}

function start(
  metadata: MetadataService,
  leases: LeaseKeeper,
  uuid: string,
  local: MemoryBlockStore,
  heartbeatMs = 600_000,
): Promise<ClusterMember> {
  return ClusterMember.start({
    uuid,
    metadata,
    leases,
    node: { local, fenceRecords: new MemoryFenceRecords(), peerAddress: "tdp://127.0.0.1:0" },
    protocols: [new TdpProtocol()],
    autoJoin: true,
    readLevel: "block",
    writeLevel: "all",
    readCacheBytes: 0,
    rebalanceRateBytesPerSecond: 0,
    clock: systemClock,
    peerTimeoutMs: 500,
    // No heartbeat during the first test: addresses change only when a failed call asks for them.
    heartbeatMs,
  });
}

Deno.test("ClusterMember: join, replicate, find a member on its new port, unregister", async () => {
  const { metadata, leases } = await cluster();
  const stores = [0, 1, 2].map(() =>
    new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 256 })
  );
  const members: ClusterMember[] = [];
  try {
    for (const [i, store] of stores.entries()) {
      members.push(await start(metadata, leases, m(i), store));
    }
    const ring = members[0]!.ring();
    await members[0]!.refreshPeers();
    assert.deepEqual([...members[2]!.ring().memberUuids()].sort(), [m(0), m(1), m(2)]);
    assert.equal(members[2]!.ring().version, 4);
    assert.deepEqual(members[0]!.peers().map((p) => p.uuid), [m(0), m(1), m(2)]);

    const writer = members[0]!.distributor;
    for (let i = 0; i < 24; i++) await writer.putBlock(testRef(i), patternBlock(BLOCK, i));
    await writer.flush();
    const copies = stores.reduce((sum, store) => sum + store.usedBlocks(), 0);
    assert.equal(copies, 48, "two copies of every block");

    // m2 comes back on another port; m1 goes away. Blocks held by m1 and m2 are only at m2 now,
    // whose old address refuses: the failed call makes m0 read the addresses again.
    await members[2]!.close();
    members[2] = await start(metadata, leases, m(2), stores[2]!);
    await members[1]!.close();
    for (let i = 0; i < 24; i++) {
      const holders = ring.getHolders(testRef(i));
      if (holders.includes(m(0))) continue;
      assert.deepEqual(await writer.getBlock(testRef(i)), patternBlock(BLOCK, i), `block ${i}`);
    }
    assert.deepEqual((await metadata.peers.listPeers()).map((p) => p.uuid), [m(0), m(2)]);
  } finally {
    for (const member of members) await member.close().catch(() => {});
    await leases.close();
    await metadata.close();
  }
});

Deno.test("ClusterMember: nodes record the ring they finished applying; a down member is unsettled only when the ring changed since", async () => {
  const { metadata, leases } = await cluster();
  const stores = [0, 1].map(() => new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 64 }));
  const members: ClusterMember[] = [];
  const settled = async (member: ClusterMember, want: readonly string[]) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      await member.refreshPeers();
      if (JSON.stringify([...member.unsettled()].sort()) === JSON.stringify(want)) return;
      if (Date.now() > deadline) assert.fail(`unsettled ${member.unsettled()}, want ${want}`);
      await new Promise((resolve) => setTimeout(resolve, 30));
    }
  };
  try {
    for (const [i, store] of stores.entries()) {
      members.push(await start(metadata, leases, m(i), store, 30));
    }
    await settled(members[0]!, []);
    assert.equal(members[0]!.moving(), false);
    const version = members[0]!.ring().version;
    const recorded = await metadata.peers.balancedRings();
    assert.equal(recorded.get(m(0)), version);
    assert.equal(recorded.get(m(1)), version);
    // m1 goes down: it recorded the current ring, so it keeps no copy the ring puts elsewhere.
    await members[1]!.close();
    members.pop();
    await settled(members[0]!, []);
    // The ring changes while m1 is down (a member added that never ran): both are unsettled.
    await metadata.cluster.updateRing((current) => {
      const ring = ringFromMessage(current);
      assert.ok(isModifiable(ring));
      return ring.addPeers([{
        uuid: m(5),
        address: "tdp://127.0.0.1:1",
        lastSeen: 0n,
        totalBlocks: 64n,
        usedBlocks: 0n,
        timedOut: false,
        rebalanceInfo: null,
        protocolVersion: 2n,
      }]).toMessage();
    });
    await members[0]!.refreshRing();
    // m0 applies it (and records that); m1 and m5 stay unsettled.
    await settled(members[0]!, [m(1), m(5)]);
    assert.equal(members[0]!.moving(), true);
    assert.equal((await metadata.peers.balancedRings()).get(m(0)), members[0]!.ring().version);
  } finally {
    for (const member of members) await member.close().catch(() => {});
    await leases.close();
    await metadata.close();
  }
});

Deno.test("ClusterMember: a node refuses an earlier writer as soon as a new one holds the lock", async () => {
  const { metadata, leases } = await cluster();
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 64 });
  const member = await start(metadata, leases, m(0), store);
  try {
    const fence = member.fence!;
    const { id } = await metadata.volumes.createBlockVolume("v", 1 << 20);
    const ref = new BlockRef({ volume: id, inode: 3n, index: 1n });
    const lease = await metadata.leases.grant(60_000);
    const earlier = await metadata.blockVolumes.lock(id, { uuid: "earlier", lease });
    const earlierToken = Number(earlier.fencingToken);
    await fence.putBlock(ref, patternBlock(BLOCK, 1), { fenceToken: earlierToken });
    // The writer's lease goes (it stopped); a new writer takes the lock and has not written
    // to this node yet. The node learns its token from the metadata service alone.
    await metadata.leases.revoke(lease);
    const newer = await metadata.blockVolumes.lock(id, { uuid: "newer", lease: leases.lease });
    const deadline = Date.now() + 5_000;
    while (fence.tokenOf(id) < Number(newer.fencingToken) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal(fence.tokenOf(id), Number(newer.fencingToken));
    await assert.rejects(
      fence.putBlock(ref, patternBlock(BLOCK, 2), { fenceToken: earlierToken }),
      (error: unknown) => isTorusError(error, "locked"),
    );
    assert.deepEqual(await store.getBlock(ref), patternBlock(BLOCK, 1), "the copy is unchanged");
  } finally {
    await member.close();
    await leases.close();
  }
});
