/** FencedStore: older writers refused, newer tokens recorded before their first change lands. */

import assert from "node:assert/strict";
import { BlockRef, ErrorCode, isTorusError } from "../core/mod.ts";
import { HeldStore, MemoryBlockStore, testRef } from "../storage/mod.ts";
import {
  FencedStore,
  FileFenceRecords,
  MemoryFenceRecords,
  parseFenceRecords,
} from "./fenced_store.ts";

const BLOCK = 4096;

function memory(): MemoryBlockStore {
  return new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 16 });
}

async function rejectsLocked(promise: Promise<unknown>): Promise<void> {
  const error = await promise.then(() => null, (e: unknown) => e);
  assert.ok(isTorusError(error, ErrorCode.Locked), `expected locked, got ${String(error)}`);
}

Deno.test("FencedStore: a writer older than the newest seen is refused on every change", async () => {
  const records = new MemoryFenceRecords();
  const inner = memory();
  const store = await FencedStore.open(inner, records);
  await store.putBlock(testRef(1), new Uint8Array([1]), { fenceToken: 5 });
  await store.writeAt(testRef(1), 0, new Uint8Array([2]), { fenceToken: 9 });
  await rejectsLocked(store.putBlock(testRef(1), new Uint8Array([3]), { fenceToken: 5 }));
  await rejectsLocked(store.writeAt(testRef(1), 0, new Uint8Array([3]), { fenceToken: 8 }));
  await rejectsLocked(store.zeroAt(testRef(1), 0, 1, { fenceToken: 1 }));
  await rejectsLocked(store.deleteBlock(testRef(1), { fenceToken: 2 }));
  assert.equal((await inner.getBlock(testRef(1)))[0], 2, "no refused change landed");
  assert.equal(store.refusedStaleWriters, 4, "each refusal is counted (/status, /metrics)");
  // The same token and unfenced changes (rebalance, repair) pass; another volume is its own.
  await store.writeAt(testRef(1), 0, new Uint8Array([4]), { fenceToken: 9 });
  await store.writeAt(testRef(1), 0, new Uint8Array([5]));
  const other = new BlockRef({ volume: 3, inode: 1n, index: 0n });
  await store.putBlock(other, new Uint8Array([6]), { fenceToken: 1 });
  assert.equal((await store.getBlock(testRef(1)))[0], 5);
  assert.deepEqual([...records.saved], [[2, 9], [3, 1]]);
});

Deno.test("FencedStore: a new token is durable before its first change reaches the store", async () => {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  const records = new MemoryFenceRecords();
  const slowRecords = {
    load: () => records.load(),
    save: async (tokens: ReadonlyMap<number, number>) => {
      await gate;
      await records.save(tokens);
    },
  };
  const inner = new HeldStore(memory());
  const store = await FencedStore.open(inner, slowRecords);
  const data = new Uint8Array([7]);
  const first = store.putBlock(testRef(1), data, { fenceToken: 3 });
  const second = store.writeAt(testRef(1), 0, new Uint8Array([8]), { fenceToken: 3 });
  data[0] = 0xee; // the caller reuses its buffer while the change waits
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(
    inner.fenceTokens.length,
    0,
    "a change reached the store before its token was saved",
  );
  // Meanwhile an older writer is already refused.
  await rejectsLocked(store.putBlock(testRef(1), new Uint8Array([9]), { fenceToken: 2 }));
  release();
  await Promise.all([first, second]);
  assert.deepEqual(inner.fenceTokens, [3, 3], "both changes, in call order");
  assert.equal((await store.getBlock(testRef(1)))[0], 8);
});

Deno.test("FencedStore: a restarted node still refuses the older writer (file records)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-fence-" });
  try {
    const records = new FileFenceRecords(`${dir}/fences.json`);
    const store = await FencedStore.open(memory(), records);
    await store.putBlock(testRef(1), new Uint8Array([1]), { fenceToken: 2 ** 40 });
    await store.close();
    const again = await FencedStore.open(memory(), new FileFenceRecords(`${dir}/fences.json`));
    assert.equal(again.tokenOf(2), 2 ** 40);
    await rejectsLocked(
      again.putBlock(testRef(1), new Uint8Array([1]), { fenceToken: 2 ** 40 - 1 }),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FencedStore: garbage, truncated and oversized record files are refused with the path", async () => {
  const bad = [
    "",
    "{",
    "[]",
    '{"volumes":[]}',
    '{"volumes":{"x":1}}',
    '{"volumes":{"0":1}}',
    '{"volumes":{"2":-1}}',
    '{"volumes":{"2":1.5}}',
    '{"volumes":{"2":"1"}}',
    '{"volumes":{"02":1}}',
  ];
  for (const text of bad) {
    assert.throws(
      () => parseFenceRecords(new TextEncoder().encode(text), "/x/fences.json"),
      /\/x\/fences\.json/,
      text,
    );
  }
  assert.throws(() => parseFenceRecords(new Uint8Array([0xff, 0xfe]), "/x/f"), /not a JSON/);
  const dir = await Deno.makeTempDir({ prefix: "torus-fence-" });
  try {
    await Deno.writeFile(
      `${dir}/big.json`,
      new Uint8Array(FileFenceRecords.MAX_BYTES + 1).fill(32),
    );
    await assert.rejects(new FileFenceRecords(`${dir}/big.json`).load(), /larger than/);
    assert.deepEqual(await new FileFenceRecords(`${dir}/none.json`).load(), new Map());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function rejectsCompareFailed(promise: Promise<unknown>, message?: RegExp): Promise<void> {
  const error = await promise.then(() => null, (e: unknown) => e);
  assert.ok(
    isTorusError(error, ErrorCode.CompareFailed),
    `expected compare_failed, got ${String(error)}`,
  );
  if (message !== undefined) assert.match(error.message, message);
}

Deno.test("FencedStore: a change placed by an older ring is refused and changes nothing", async () => {
  const records = new MemoryFenceRecords();
  const inner = new HeldStore(memory());
  const store = await FencedStore.open(inner, records, () => 5);
  await store.putBlock(testRef(1), new Uint8Array([1]), { ringVersion: 5, fenceToken: 2 });
  const calls = inner.fenceTokens.length;
  const saves = records.saves;
  const stale = { ringVersion: 4 };
  await rejectsCompareFailed(
    store.putBlock(testRef(1), new Uint8Array([2]), stale),
    /^ring version 4 is older than this node's 5: read the ring again$/,
  );
  await rejectsCompareFailed(store.putBlock(testRef(2), new Uint8Array([2]), stale));
  await rejectsCompareFailed(store.writeAt(testRef(1), 0, new Uint8Array([3]), stale));
  await rejectsCompareFailed(store.writeAt(testRef(3), 0, new Uint8Array([3]), { ringVersion: 1 }));
  await rejectsCompareFailed(store.zeroAt(testRef(1), 0, 1, stale));
  await rejectsCompareFailed(store.deleteBlock(testRef(1), stale));
  // With a newer fencing token too: refused before the fence, so that token is not recorded.
  await rejectsCompareFailed(store.deleteBlock(testRef(1), { ringVersion: 4, fenceToken: 9 }));
  assert.equal(inner.fenceTokens.length, calls, "a refused change reached the store");
  assert.equal(store.refusedStaleRing, 7, "each refusal is counted (/status, /metrics)");
  assert.equal(records.saves, saves, "a refused change recorded its fencing token");
  assert.equal(store.tokenOf(2), 2);
  const expected = new Uint8Array(BLOCK);
  expected[0] = 1;
  assert.deepEqual(await inner.getBlock(testRef(1)), expected);
  assert.equal(await inner.hasBlock(testRef(2)), false);
  assert.equal(await inner.hasBlock(testRef(3)), false);
  assert.equal(inner.usedBlocks(), 1);
});

Deno.test("FencedStore: an equal, newer or absent ring version passes, against the ring of now", async () => {
  let nodeRing = 5;
  const inner = new HeldStore(memory());
  const store = await FencedStore.open(inner, new MemoryFenceRecords(), () => nodeRing);
  await store.putBlock(testRef(1), new Uint8Array([1]), { ringVersion: 5 });
  await store.writeAt(testRef(1), 1, new Uint8Array([2]), { ringVersion: 6 });
  await store.zeroAt(testRef(1), 0, 1, { ringVersion: 0 });
  await store.writeAt(testRef(1), 2, new Uint8Array([3]));
  await store.putBlock(testRef(2), new Uint8Array([4]), { ringVersion: 2 ** 40 });
  await store.deleteBlock(testRef(2), { ringVersion: 5 });
  assert.deepEqual((await inner.getBlock(testRef(1))).subarray(0, 3), new Uint8Array([0, 2, 3]));
  assert.deepEqual(inner.ringVersions, [5, 6, 0, undefined, 2 ** 40, 5], "passed on as given");
  // The node learns a newer ring: what was current a moment ago is now old.
  nodeRing = 7;
  await rejectsCompareFailed(store.zeroAt(testRef(1), 0, 1, { ringVersion: 6 }), /6 .* 7/);
  await store.zeroAt(testRef(1), 0, 2, { ringVersion: 7 });
  await store.deleteBlock(testRef(1), { ringVersion: 8 });
  assert.equal(inner.usedBlocks(), 0);
  // A ring version does not get past the fence: an older token is still refused as locked.
  await store.putBlock(testRef(1), new Uint8Array([1]), { ringVersion: 7, fenceToken: 4 });
  await rejectsLocked(
    store.putBlock(testRef(1), new Uint8Array([1]), { ringVersion: 9, fenceToken: 3 }),
  );
});

Deno.test("FencedStore: reads are never refused for their ring version", async () => {
  const inner = memory();
  const store = await FencedStore.open(inner, new MemoryFenceRecords(), () => 9);
  await inner.putBlock(testRef(1), new Uint8Array([5]));
  const old = { ringVersion: 1 };
  assert.equal((await store.getBlock(testRef(1), old))[0], 5);
  assert.equal(await store.hasBlock(testRef(1), old), true);
  const into = new Uint8Array(1);
  await store.readAt(testRef(1), 0, into, old);
  assert.equal(into[0], 5);
});

Deno.test("FencedStore: without a ring version source no change is refused for its version", async () => {
  const inner = memory();
  const store = await FencedStore.open(inner, new MemoryFenceRecords());
  await store.putBlock(testRef(1), new Uint8Array([1]), { ringVersion: 1 });
  await store.writeAt(testRef(1), 0, new Uint8Array([2]), { ringVersion: 3 });
  await store.zeroAt(testRef(1), 1, 1, { ringVersion: 2 });
  assert.equal((await inner.getBlock(testRef(1)))[0], 2);
  await store.deleteBlock(testRef(1), { ringVersion: 1 });
  assert.equal(inner.usedBlocks(), 0);
});
