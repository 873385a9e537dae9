/**
 * A volume's new writer fences it at every node (Distributor.fenceVolume, through real TDP servers
 * over FencedStores): an earlier writer's change is refused even at a node, and for a block, the
 * new writer never wrote; a node that cannot be reached is fenced as soon as it answers; a stale
 * writer's own resync carries its token.
 */

import assert from "node:assert/strict";
import { BlockRef, ErrorCode, isTorusError, systemClock } from "../core/mod.ts";
import {
  DialingPeerDirectory,
  Distributor,
  type PeerServer,
  TdpProtocol,
} from "../distributor/mod.ts";
import { createMetadataService, MemoryKvStore, type MetadataService } from "../metadata/mod.ts";
import type { PeerInfo } from "../models/mod.ts";
import { createRing, type Ring, RingType } from "../ring/mod.ts";
import { MemoryBlockStore, patternBlock } from "../storage/mod.ts";
import { FencedStore, MemoryFenceRecords } from "./fenced_store.ts";
import { WatchedStaleMarks } from "./watched_stale_marks.ts";

const BLOCK = 4096;
const CLUSTER = "fence-test";
const uuidOf = (i: number) => `00000000-0000-4000-8000-00000000000${i + 1}`;

interface Node {
  readonly uuid: string;
  readonly store: FencedStore;
  server: PeerServer | null;
  address: string;
}

async function startNodes(count: number): Promise<Node[]> {
  const nodes: Node[] = [];
  for (let i = 0; i < count; i++) {
    const store = await FencedStore.open(
      new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 64 }),
      new MemoryFenceRecords(),
    );
    const node: Node = { uuid: uuidOf(i), store, server: null, address: "" };
    await serve(node, "tdp://127.0.0.1:0");
    nodes.push(node);
  }
  return nodes;
}

async function serve(node: Node, address: string): Promise<void> {
  node.server = await new TdpProtocol().listen(address, {
    identity: { clusterId: CLUSTER, blockSizeBytes: BLOCK, nodeName: node.uuid },
    store: node.store,
  });
  node.address = node.server.address;
}

function ringOf(nodes: readonly Node[]): Ring {
  const peers: PeerInfo[] = nodes.map((node) => ({
    uuid: node.uuid,
    address: node.address,
    lastSeen: 0n,
    totalBlocks: 64n,
    usedBlocks: 0n,
    timedOut: false,
    rebalanceInfo: null,
    protocolVersion: 2n,
  }));
  return createRing(RingType.Ketama, { version: 1, replication: 2, peers });
}

function writer(nodes: readonly Node[], marks: WatchedStaleMarks | undefined): Distributor {
  const ring = ringOf(nodes);
  const peers = new DialingPeerDirectory(
    [new TdpProtocol()],
    (uuid) => nodes.find((node) => node.uuid === uuid)?.address ?? null,
    {
      identity: { clusterId: CLUSTER, blockSizeBytes: BLOCK, nodeName: "writer" },
      callTimeoutMs: 500,
    },
  );
  return new Distributor({
    blockSizeBytes: BLOCK,
    self: null,
    local: null,
    ring: () => ring,
    peers,
    ...(marks ? { staleMarks: marks, minCopies: 1 } : {}),
    readLevel: "block",
    writeLevel: "all",
    readCacheBytes: 0,
    peerTimeoutMs: 300,
    clock: systemClock,
  });
}

async function metadataWithVolume(): Promise<{ mds: MetadataService; volume: number }> {
  const mds = createMetadataService(new MemoryKvStore(), { prefix: "/fence/" });
  await mds.cluster.init({
    blockSizeBytes: BLOCK,
    defaultBlockSpec: [{ kind: 0, options: "" }],
    ring: { type: 4, version: 1, replicationFactor: 2, peers: [], attrs: {} },
  });
  return { mds, volume: (await mds.volumes.createBlockVolume("v", 1 << 20)).id };
}

async function until(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!await condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

Deno.test("fenceVolume: an earlier writer is refused at every node, for blocks the new writer never wrote", async () => {
  const nodes = await startNodes(3);
  const next = writer(nodes, undefined);
  try {
    // The earlier writer (token 3) wrote a block; the new one (token 7) takes the volume over.
    const ref = new BlockRef({ volume: 5, inode: 1n, index: 9n });
    const earlier = writer(nodes, undefined);
    await earlier.putBlock(ref, patternBlock(BLOCK, 1), { fenceToken: 3 });
    await earlier.close();
    await next.fenceVolume(5, 7);
    for (const node of nodes) assert.equal(node.store.tokenOf(5), 7, node.uuid);
    // Every node refuses the earlier token now, whatever the block.
    const other = new BlockRef({ volume: 5, inode: 1n, index: 10n });
    for (const node of nodes) {
      for (const target of [ref, other]) {
        await assert.rejects(
          node.store.putBlock(target, patternBlock(BLOCK, 2), { fenceToken: 3 }),
          (error: unknown) => isTorusError(error, ErrorCode.Locked),
        );
      }
    }
    assert.deepEqual(await next.getBlock(ref), patternBlock(BLOCK, 1));
    // A writer with an older token than a node knows is told so.
    await assert.rejects(
      next.fenceVolume(5, 6),
      (error: unknown) => isTorusError(error, ErrorCode.Locked),
    );
  } finally {
    await next.close();
    for (const node of nodes) await node.server?.close();
  }
});

Deno.test("fenceVolume: a node that cannot be reached is not marked (its copies are good) and is fenced as soon as it answers", async () => {
  const nodes = await startNodes(3);
  const { mds, volume } = await metadataWithVolume();
  const marks = await WatchedStaleMarks.start(mds);
  const next = writer(nodes, marks);
  try {
    const refs = Array.from({ length: 8 }, (_, i) => new BlockRef({ volume, inode: 1n, index: i }));
    const earlier = writer(nodes, undefined);
    for (const [i, ref] of refs.entries()) {
      await earlier.putBlock(ref, patternBlock(BLOCK, i), { fenceToken: 3 });
    }
    await earlier.flush();
    await earlier.close();
    const down = nodes[1]!;
    const address = down.address;
    await down.server!.close();
    await next.fenceVolume(volume, 7);
    assert.equal(down.store.tokenOf(volume), 3, "not reached");
    assert.deepEqual(await mds.staleMarks.list(volume), [], "nothing marked: its copies are good");
    for (const [i, ref] of refs.entries()) {
      assert.deepEqual(await next.getBlock(ref), patternBlock(BLOCK, i));
    }
    await serve(down, address);
    await until(() => down.store.tokenOf(volume) === 7, "the node to be fenced once it answers");
    await assert.rejects(
      down.store.putBlock(refs[0]!, patternBlock(BLOCK, 99), { fenceToken: 3 }),
      (error: unknown) => isTorusError(error, ErrorCode.Locked),
    );
  } finally {
    await next.close();
    await marks.close();
    await mds.close();
    for (const node of nodes) await node.server?.close();
  }
});

Deno.test("fenceVolume: a stale writer's own resync carries its token, so a node a newer writer fenced refuses it", async () => {
  const nodes = await startNodes(3);
  const { mds, volume } = await metadataWithVolume();
  const marks = await WatchedStaleMarks.start(mds);
  const stale = writer(nodes, marks);
  try {
    await stale.takeOver(volume, 3n);
    const ref = new BlockRef({ volume, inode: 1n, index: 2n });
    const down = nodes.find((node) => ringOf(nodes).getHolders(ref).includes(node.uuid))!;
    const address = down.address;
    await down.server!.close();
    await stale.putBlock(ref, patternBlock(BLOCK, 5), { fenceToken: 3 });
    assert.ok(marks.isStale(ref, down.uuid), "the node that was down is marked");
    // A newer writer fenced the node meanwhile (it reached it, the stale writer did not).
    await down.store.putBlock(
      new BlockRef({ volume, inode: 1n, index: 40n }),
      patternBlock(BLOCK, 6),
      {
        fenceToken: 7,
      },
    );
    await serve(down, address);
    await until(
      () => down.store.refusedStaleWriters > 0,
      "the stale writer's resync to be refused",
    );
    assert.equal(await down.store.hasBlock(ref), false, "its copy never landed");
  } finally {
    await stale.close().catch(() => {});
    await marks.close();
    await mds.close();
    for (const node of nodes) await node.server?.close();
  }
});
