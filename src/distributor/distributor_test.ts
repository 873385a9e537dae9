/**
 * The distributor over real TDP servers on loopback (each over a memory store): the BlockStore
 * contract as a client and as a member node, then placement, write levels, read levels,
 * failures and repair.
 */

import assert from "node:assert/strict";
import { type BlockRef, crc32, ErrorCode, isTorusError } from "../core/mod.ts";
import {
  type BlockCallOptions,
  blockStoreContract,
  patternBlock,
  testRef,
} from "../storage/mod.ts";
import type { PeerDirectory } from "./peer_directory.ts";
import { BLOCK, flipByteOf, holdAll, MemoryStaleMarks, TestCluster } from "./test_cluster.ts";

const capacityReason = "a cluster is full when a holder is, not at an exact count of blocks";

for (const [name, self] of [["a client", undefined], ["member 0", 0]] as const) {
  blockStoreContract(`Distributor as ${name} over 3 TDP peers (R=2)`, async () => {
    const cluster = await TestCluster.start(3);
    return {
      store: await cluster.distributor({ self }),
      // Another process over the same cluster: every flushed change is there.
      reopen: () => cluster.distributor({ self }),
      holdNextIo: () => holdAll(cluster.stores),
      cleanup: () => cluster.close(),
    };
  }, { capacityNotExact: capacityReason });
}

function test(name: string, fn: (cluster: TestCluster) => Promise<void>, files = false): void {
  Deno.test(`Distributor: ${name}`, async () => {
    const cluster = await TestCluster.start(3, 2, 64, files);
    try {
      await fn(cluster);
    } finally {
      await cluster.close();
    }
  });
}

test("every block lands on exactly the ring's holders", async (cluster) => {
  const distributor = await cluster.distributor();
  for (let i = 0; i < 12; i++) await distributor.putBlock(testRef(i), patternBlock(BLOCK, i));
  for (let i = 0; i < 12; i++) {
    await distributor.writeAt(testRef(100 + i), 512, new Uint8Array([i]));
  }
  for (const i of [...Array(12).keys()].flatMap((i) => [i, 100 + i])) {
    const ref = testRef(i);
    assert.deepEqual(
      (await cluster.holdersOf(ref)).sort(),
      [...cluster.ring.getHolders(ref)].sort(),
    );
  }
  await distributor.close();
});

test("level all fails when a holder is down, and names the outcome unknown when others took it", async (cluster) => {
  const distributor = await cluster.distributor({ writeLevel: "all" });
  const ref = testRef(1);
  const [first, second] = cluster.ring.getHolders(ref);
  await cluster.stop(second!);
  const error = await distributor.putBlock(ref, patternBlock(BLOCK, 1)).then(
    () => null,
    (e: unknown) => e,
  );
  assert.ok(isTorusError(error, ErrorCode.OutcomeUnknown), String(error));
  assert.match((error as Error).message, /1 of 2 holders/);
  assert.equal(await cluster.storeOf(first!).hasBlock(ref), true);
  // Reads still find the copy that landed.
  assert.deepEqual(await distributor.getBlock(ref), patternBlock(BLOCK, 1));
  await distributor.close();
});

test("level one returns after one copy; flushes fail until the holder that missed it has it", async (cluster) => {
  const distributor = await cluster.distributor({ writeLevel: "one" });
  const ref = testRef(2);
  const [, second] = cluster.ring.getHolders(ref);
  await cluster.stop(second!);
  await distributor.putBlock(ref, patternBlock(BLOCK, 2));
  for (let i = 0; i < 2; i++) {
    const error = await distributor.flush().then(() => null, (e: unknown) => e);
    assert.ok(isTorusError(error, ErrorCode.Unavailable), String(error));
    assert.match((error as Error).message, new RegExp(`lack copies at ${second}`));
  }
  await cluster.restart(second!);
  await distributor.flush();
  assert.deepEqual(await cluster.storeOf(second!).getBlock(ref), patternBlock(BLOCK, 2));
  assert.equal(distributor.stats.resyncedBlocks, 1);
  await distributor.close();
});

test("a holder that missed a change never serves that block until it has the change", async (cluster) => {
  const distributor = await cluster.distributor({ writeLevel: "all" });
  const ref = testRef(9);
  const [first, second] = cluster.ring.getHolders(ref);
  await distributor.putBlock(ref, patternBlock(BLOCK, 1));
  // The first holder, which reads try first, misses the next change and comes back.
  await cluster.stop(first!);
  const error = await distributor.writeAt(ref, 0, new Uint8Array([7, 7, 7]))
    .then(() => null, (e: unknown) => e);
  assert.ok(isTorusError(error, ErrorCode.OutcomeUnknown), String(error));
  await cluster.restart(first!);
  assert.equal((await cluster.storeOf(first!).getBlock(ref))[0], patternBlock(BLOCK, 1)[0]);
  const read = await distributor.getBlock(ref);
  assert.deepEqual(read.subarray(0, 3), new Uint8Array([7, 7, 7]), "the stale copy was served");
  const range = new Uint8Array(3);
  await distributor.readAt(ref, 0, range);
  assert.deepEqual(range, new Uint8Array([7, 7, 7]));
  await distributor.flush();
  assert.deepEqual(
    await cluster.storeOf(first!).getBlock(ref),
    await cluster.storeOf(second!).getBlock(ref),
  );
  await distributor.close();
});

test("level one with every holder up: both copies are there after the flush", async (cluster) => {
  const distributor = await cluster.distributor({ writeLevel: "one" });
  for (let i = 0; i < 8; i++) await distributor.writeAt(testRef(i), 0, patternBlock(100, i));
  await distributor.flush();
  for (let i = 0; i < 8; i++) assert.equal((await cluster.holdersOf(testRef(i))).length, 2);
  await distributor.close();
});

for (const level of ["block", "seq", "spread"] as const) {
  test(`read level ${level}: a dead holder is passed over`, async (cluster) => {
    const writer = await cluster.distributor();
    for (let i = 0; i < 6; i++) await writer.putBlock(testRef(i), patternBlock(BLOCK, i));
    await writer.flush();
    await cluster.stop(cluster.uuids[0]!);
    const reader = await cluster.distributor({ readLevel: level });
    for (let i = 0; i < 6; i++) {
      assert.deepEqual(await reader.getBlock(testRef(i)), patternBlock(BLOCK, i));
      const into = new Uint8Array(10);
      await reader.readAt(testRef(i), 100, into);
      assert.deepEqual(into, patternBlock(BLOCK, i).subarray(100, 110));
    }
    await writer.close();
    await reader.close();
  });
}

test("a stalled holder costs one deadline, not a hang", async (cluster) => {
  const distributor = await cluster.distributor({ readLevel: "seq" });
  const ref = testRef(3);
  await distributor.putBlock(ref, patternBlock(BLOCK, 3));
  const [first] = cluster.ring.getHolders(ref);
  const hold = cluster.stores[cluster.uuids.indexOf(first!)]!.holdAll();
  try {
    const started = Date.now();
    assert.deepEqual(await distributor.getBlock(ref), patternBlock(BLOCK, 3));
    assert.ok(Date.now() - started < 2_000, `took ${Date.now() - started} ms`);
    // It did not answer: the next reads try it last, without waiting for it again.
    const again = Date.now();
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await distributor.getBlock(ref), patternBlock(BLOCK, 3));
    }
    const tookMs = Date.now() - again;
    // Waiting for it once more would cost its 300 ms deadline per read (1.5 s for five).
    assert.ok(tookMs < 1_000, `the silent holder was waited for again: ${tookMs} ms`);
  } finally {
    hold.release();
    await distributor.close();
  }
});

test("a read is not_exist only when every holder says so; unavailable when one cannot answer", async (cluster) => {
  const distributor = await cluster.distributor();
  const ref = testRef(4);
  const error = await distributor.getBlock(ref).then(() => null, (e: unknown) => e);
  assert.ok(isTorusError(error, ErrorCode.NotExist), String(error));
  await cluster.stop(cluster.ring.getHolders(ref)[0]!);
  const down = await distributor.getBlock(ref).then(() => null, (e: unknown) => e);
  assert.ok(isTorusError(down, ErrorCode.Unavailable), String(down));
  await distributor.close();
});

test("a copy that fails its checksum is passed over and repaired", async (cluster) => {
  const distributor = await cluster.distributor();
  const ref = testRef(5);
  const good = patternBlock(BLOCK, 5);
  await distributor.putBlock(ref, good);
  await distributor.flush();
  // Rot one holder's copy behind the distributor's back.
  const [first, second] = cluster.ring.getHolders(ref);
  const bad = good.slice();
  bad[17]! ^= 0xff;
  await cluster.storeOf(first!).putBlock(ref, bad);
  assert.deepEqual(await distributor.getBlock(ref, { expectedCrc32: crc32(good) }), good);
  await distributor.flush(); // waits for the repair
  assert.deepEqual(await cluster.storeOf(first!).getBlock(ref), good);
  assert.deepEqual(await cluster.storeOf(second!).getBlock(ref), good);
  assert.equal(distributor.stats.repairedBlocks, 1);
  await distributor.close();
});

test("the read cache serves repeated reads and drops a block when it changes", async (cluster) => {
  const distributor = await cluster.distributor({ cacheBytes: 64 * BLOCK });
  const ref = testRef(6);
  await distributor.putBlock(ref, patternBlock(BLOCK, 6));
  await distributor.getBlock(ref);
  await distributor.getBlock(ref);
  assert.equal(distributor.stats.cachedBlocks, 1);
  await distributor.writeAt(ref, 0, new Uint8Array([1, 2, 3]));
  const read = await distributor.getBlock(ref);
  assert.deepEqual(read.subarray(0, 3), new Uint8Array([1, 2, 3]));
  await distributor.close();
});

test("a change waits for a repair of its ref, so the repair never puts back old bytes", async (cluster) => {
  const distributor = await cluster.distributor({ cacheBytes: 64 * BLOCK });
  const ref = testRef(7);
  const good = patternBlock(BLOCK, 7);
  await distributor.putBlock(ref, good);
  const [first] = cluster.ring.getHolders(ref);
  const bad = good.slice();
  bad[0]! ^= 1;
  await cluster.storeOf(first!).putBlock(ref, bad);
  // The read finds the bad copy and starts a repair; the write right after must win.
  const read = distributor.getBlock(ref, { expectedCrc32: crc32(good) });
  await read;
  await distributor.writeAt(ref, 0, new Uint8Array([9, 9]));
  await distributor.flush();
  for (const uuid of cluster.ring.getHolders(ref)) {
    const copy = await cluster.storeOf(uuid).getBlock(ref);
    assert.deepEqual(copy.subarray(0, 2), new Uint8Array([9, 9]), `copy at ${uuid}`);
  }
  await distributor.close();
});

test(
  "bytes flipped in a node's data file: reads return good data and the copy is repaired",
  async (cluster) => {
    const writer = await cluster.distributor();
    const ref = testRef(8);
    const good = patternBlock(BLOCK, 8);
    await writer.putBlock(ref, good);
    await writer.close();
    const [first] = cluster.ring.getHolders(ref);
    const index = cluster.uuids.indexOf(first!);
    // Rot one byte of the second sector of that node's copy, on disk.
    assert.ok(
      await flipByteOf(cluster.dirs[index]!, good.subarray(1024, 1100), 3),
      "copy not found on disk",
    );
    const reader = await cluster.distributor({ self: index });
    const into = new Uint8Array(600);
    await reader.readAt(ref, 1000, into);
    assert.deepEqual(into, good.subarray(1000, 1600));
    await reader.flush(); // waits for the repair
    assert.equal(reader.stats.repairedBlocks, 1);
    assert.deepEqual(await cluster.stores[index]!.getBlock(ref), good);
    await reader.close();
  },
  true,
);

/** Deletes from `uuid`'s store the refs it took: what a power loss does to unflushed changes. */
async function loseUnflushed(cluster: TestCluster, uuid: string, refs: BlockRef[]) {
  const store = cluster.storeOf(uuid);
  for (const ref of refs) await store.deleteBlock(ref).catch(() => {});
}

test("a holder that restarted and lost unflushed changes gets them again before a flush succeeds", async (cluster) => {
  const writer = await cluster.distributor();
  const refs = Array.from({ length: 10 }, (_, i) => testRef(i, 40));
  for (const [i, ref] of refs.entries()) await writer.putBlock(ref, patternBlock(BLOCK, i));
  const victim = cluster.uuids[1]!;
  const held = refs.filter((ref) => cluster.ring.getHolders(ref).includes(victim));
  assert.ok(held.length > 0);
  await cluster.stop(victim);
  await loseUnflushed(cluster, victim, held);
  await cluster.restart(victim);
  await writer.flush();
  for (const [i, ref] of refs.entries()) {
    for (const uuid of cluster.ring.getHolders(ref)) {
      assert.deepEqual(await cluster.storeOf(uuid).getBlock(ref), patternBlock(BLOCK, i), uuid);
    }
  }
  await writer.close();
});

test("both holders restarted and lost unflushed changes: the flush fails", async (cluster) => {
  const writer = await cluster.distributor();
  const ref = testRef(3, 41);
  await writer.putBlock(ref, patternBlock(BLOCK, 3));
  for (const uuid of cluster.ring.getHolders(ref)) {
    await cluster.stop(uuid);
    await loseUnflushed(cluster, uuid, [ref]);
    await cluster.restart(uuid);
  }
  await assert.rejects(writer.flush(), /lack copies|restarted/);
  await writer.close().catch(() => {});
});

test("a copy that fails its checksums never wins when the holders are made to agree", async (cluster) => {
  const writer = await cluster.distributor();
  const ref = testRef(5, 42);
  await writer.putBlock(ref, patternBlock(BLOCK, 1));
  await writer.flush();
  await writer.putBlock(ref, patternBlock(BLOCK, 2));
  // Both holders lose power before a flush: the first's copy of the change comes back torn,
  // the second has the flushed copy only.
  const [first, second] = cluster.ring.getHolders(ref) as [string, string];
  for (const uuid of [first, second]) await cluster.stop(uuid);
  cluster.stores[cluster.uuids.indexOf(first)]!.tear(ref);
  await cluster.storeOf(second).putBlock(ref, patternBlock(BLOCK, 1));
  for (const uuid of [first, second]) await cluster.restart(uuid);
  // The change was never flushed: losing it is allowed (and said once), an unreadable block not.
  await writer.flush().catch(() => {});
  await writer.flush().catch(() => {});
  assert.deepEqual(await writer.getBlock(ref), patternBlock(BLOCK, 1));
  for (const uuid of [first, second]) {
    assert.deepEqual(await cluster.storeOf(uuid).getBlock(ref), patternBlock(BLOCK, 1), uuid);
  }
  await writer.close();
});

test("with durable marks and min copies 1, level all goes on with a holder down; the mark is recorded, and cleared once it is back", async (cluster) => {
  const marks = new MemoryStaleMarks();
  const writer = await cluster.distributor({ staleMarks: marks, minCopies: 1 });
  const refs = Array.from({ length: 8 }, (_, i) => testRef(i, 50));
  const down = cluster.uuids[2]!;
  const onDown = refs.filter((ref) => cluster.ring.getHolders(ref).includes(down));
  assert.ok(onDown.length > 0);
  await cluster.stop(down);
  for (const [i, ref] of refs.entries()) await writer.putBlock(ref, patternBlock(BLOCK, i));
  await writer.flush();
  assert.deepEqual((marks.marked().get(down) ?? []).sort(), onDown.map((r) => r.key).sort());
  assert.ok(writer.stats.degradedWrites >= onDown.length);
  await cluster.restart(down);
  await writer.flush(); // the resync pass writes the holder what it missed
  for (const ref of onDown) {
    assert.deepEqual(
      await cluster.storeOf(down).getBlock(ref),
      patternBlock(BLOCK, refs.indexOf(ref)),
    );
  }
  await writer.close();
  assert.equal(marks.marked().get(down), undefined, "marks removed after the resync");
});

test("without min copies a holder down still fails level all, and marks that cannot be recorded fail the write", async (cluster) => {
  const marks = new MemoryStaleMarks();
  const strict = await cluster.distributor({ staleMarks: marks });
  const down = cluster.uuids[0]!;
  const ref = Array.from({ length: 8 }, (_, i) => testRef(i, 51))
    .find((r) => cluster.ring.getHolders(r).includes(down))!;
  await cluster.stop(down);
  await assert.rejects(strict.putBlock(ref, patternBlock(BLOCK, 1)), /reached 1 of 2/);
  await strict.close().catch(() => {});
  const degraded = await cluster.distributor({ staleMarks: marks, minCopies: 1 });
  marks.failAdds = true;
  await assert.rejects(degraded.putBlock(ref, patternBlock(BLOCK, 2)), /could not be marked/);
  await degraded.close().catch(() => {});
});

test("a writer that stopped with a holder marked stale: reads pass the holder over, and the next writer adopts and clears the marks", async (cluster) => {
  const marks = new MemoryStaleMarks();
  const first = await cluster.distributor({ staleMarks: marks, minCopies: 1 });
  const ref = testRef(1, 52);
  const [a, b] = cluster.ring.getHolders(ref);
  await first.putBlock(ref, patternBlock(BLOCK, 1));
  await first.flush();
  await cluster.stop(b!);
  await first.putBlock(ref, patternBlock(BLOCK, 2)); // b misses it, durably marked
  await first.flush();
  await first.close().catch(() => {}); // b still down: its resync could not run
  await cluster.restart(b!);
  // b still has version 1: a reader that knows the marks never reads it, even when a is gone.
  const reader = await cluster.distributor({ staleMarks: marks, minCopies: 1 });
  assert.deepEqual(await reader.getBlock(ref), patternBlock(BLOCK, 2));
  await cluster.stop(a!);
  await assert.rejects(reader.getBlock(ref), /unavailable|no peer|not stored/i);
  await cluster.restart(a!);
  await reader.close();
  const next = await cluster.distributor({ staleMarks: marks, minCopies: 1 });
  await next.adoptStaleMarks(ref.volume);
  await next.flush();
  assert.deepEqual(await cluster.storeOf(b!).getBlock(ref), patternBlock(BLOCK, 2));
  await next.close();
  assert.equal(marks.marked().size, 0, "the adopted marks are cleared");
});

test("a holder that restarted and lost an unflushed change is not read before the flush notices", async (cluster) => {
  const writer = await cluster.distributor();
  const ref = testRef(5, 42);
  await writer.putBlock(ref, patternBlock(BLOCK, 1));
  await writer.flush();
  await writer.putBlock(ref, patternBlock(BLOCK, 2)); // acknowledged, not flushed
  const [first] = cluster.ring.getHolders(ref); // a client reads the first holder first
  await cluster.stop(first!);
  await cluster.storeOf(first!).putBlock(ref, patternBlock(BLOCK, 1)); // power loss: v2 gone
  await cluster.restart(first!);
  // The client has seen its connection end: the read reaches the restarted server at once.
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(await writer.getBlock(ref), patternBlock(BLOCK, 2), "never the older copy");
  await writer.flush();
  assert.deepEqual(await cluster.storeOf(first!).getBlock(ref), patternBlock(BLOCK, 2));
  await writer.close();
});

test("a flush that failed at a holder keeps it owed: the next flush does not report success while it is down", async (cluster) => {
  const writer = await cluster.distributor();
  const ref = testRef(2, 43);
  await writer.putBlock(ref, patternBlock(BLOCK, 2)); // both holders took it, neither flushed
  const [, second] = cluster.ring.getHolders(ref);
  await cluster.stop(second!);
  await assert.rejects(writer.flush(), /flush failed/);
  await assert.rejects(writer.flush(), /flush failed/, "still owed while the holder is down");
  await cluster.restart(second!);
  await writer.flush();
  await writer.close();
});

test("a mark another process records for a volume this writer took over is adopted at the next flush and resolved", async (cluster) => {
  const marks = new MemoryStaleMarks();
  const writer = await cluster.distributor({ staleMarks: marks, minCopies: 1 });
  const ref = testRef(3, 60);
  const [, b] = cluster.ring.getHolders(ref);
  await writer.takeOver(ref.volume, 5n);
  await writer.putBlock(ref, patternBlock(BLOCK, 7));
  await writer.flush();
  // An earlier writer that resumed marks b (it thinks b lost changes), and b's copy is older.
  await cluster.storeOf(b!).putBlock(ref, patternBlock(BLOCK, 6));
  await marks.add(ref.volume, b!, [ref]);
  await writer.flush();
  await waitUntil(() => !marks.isStale(ref, b!));
  assert.deepEqual(await cluster.storeOf(b!).getBlock(ref), patternBlock(BLOCK, 7));
  await writer.close();
});

test("every holder marked and no record of who took the changes: the holders are made to agree on one copy", async (cluster) => {
  const marks = new MemoryStaleMarks();
  const writer = await cluster.distributor({ staleMarks: marks, minCopies: 1 });
  const ref = testRef(3, 61);
  const [a, b] = cluster.ring.getHolders(ref);
  await cluster.storeOf(a!).putBlock(ref, patternBlock(BLOCK, 1));
  await cluster.storeOf(b!).putBlock(ref, patternBlock(BLOCK, 2));
  await marks.add(ref.volume, a!, [ref]);
  await marks.add(ref.volume, b!, [ref]);
  await writer.takeOver(ref.volume, 5n);
  // Changes may be gone with the copy that lost: the flush says so, once.
  await assert.rejects(
    writer.flush(),
    (error: unknown) => isTorusError(error, ErrorCode.OutcomeUnknown),
  );
  await writer.flush();
  await waitUntil(() => !marks.isStale(ref, a!) && !marks.isStale(ref, b!));
  const copies = [await cluster.storeOf(a!).getBlock(ref), await cluster.storeOf(b!).getBlock(ref)];
  assert.deepEqual(copies[0], copies[1], "the holders agree");
  assert.deepEqual(await writer.getBlock(ref), copies[0]);
  await writer.close();
});

async function waitUntil(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail("timed out");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A change a peer client was asked to send: its bytes and options. */
interface SentChange {
  readonly data: Uint8Array;
  readonly unchangingData: boolean | undefined;
}

/** Records the bytes and options of every putBlock and writeAt sent through `directory`. */
function recordingChanges(directory: PeerDirectory, sent: SentChange[]): PeerDirectory {
  return {
    storeOf(uuid) {
      const store = directory.storeOf(uuid);
      if (store === null) return null;
      return new Proxy(store, {
        get(target, key) {
          const value = Reflect.get(target, key, target);
          // Methods run on the store itself (its private fields are not the proxy's).
          if (typeof value !== "function") return value;
          if (key !== "putBlock" && key !== "writeAt") return value.bind(target);
          return (...args: unknown[]) => {
            const data = args[key === "putBlock" ? 1 : 2] as Uint8Array;
            const options = args[key === "putBlock" ? 2 : 3] as BlockCallOptions | undefined;
            sent.push({ data, unchangingData: options?.unchangingData });
            return (value as (...a: unknown[]) => Promise<void>).apply(target, args);
          };
        },
      });
    },
    unreachable: (uuid) => directory.unreachable(uuid),
    close: () => directory.close(),
  };
}

test("a change's bytes are copied once and that copy goes to every holder as it is", async (cluster) => {
  const sent: SentChange[] = [];
  const distributor = await cluster.distributor({
    wrapPeers: (directory) => recordingChanges(directory, sent),
  });
  const block = patternBlock(BLOCK, 3);
  const range = new Uint8Array([1, 2, 3]);
  await distributor.putBlock(testRef(1), block);
  await distributor.writeAt(testRef(1), 100, range);
  assert.equal(sent.length, 4, "two holders, two changes");
  for (const [changes, callers] of [[sent.slice(0, 2), block], [sent.slice(2), range]] as const) {
    // The copy is the distributor's own: the caller may change its buffer once the call returns.
    assert.notEqual(changes[0]!.data, callers);
    assert.deepEqual(changes[0]!.data, callers);
    assert.equal(changes[1]!.data, changes[0]!.data, "both holders get the one copy");
    assert.ok(changes.every((change) => change.unchangingData === true));
  }
  // And what the caller does with its buffers afterwards changes nothing stored.
  block.fill(0);
  range.fill(0);
  const expected = patternBlock(BLOCK, 3);
  expected.set([1, 2, 3], 100);
  assert.deepEqual(await distributor.getBlock(testRef(1)), expected);
  await distributor.close();
});
