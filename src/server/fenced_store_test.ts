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
