/**
 * The range part of the BlockStore contract (readAt, writeAt, zeroAt; block_store.ts states the
 * rules). Registered by {@link blockStoreContract} for every engine.
 * @module
 */

import assert from "node:assert/strict";
import { BlockRef, ErrorCode } from "../core/mod.ts";
import type { BlockStore } from "./block_store.ts";
import {
  type ContractFixture,
  patternBlock,
  rejectsWithCode,
  testRef,
} from "./storage_contract.ts";

type Register = (
  behaviour: string,
  body: (fixture: ContractFixture) => Promise<void>,
  needs?: { exactCapacity?: boolean },
) => void;

/** Reads the whole block through readAt. */
async function readAll(store: BlockStore, ref: BlockRef): Promise<Uint8Array> {
  const into = new Uint8Array(store.blockSizeBytes);
  await store.readAt(ref, 0, into);
  return into;
}

/** Registers the range tests. */
export function registerRangeTests(test: Register): void {
  registerRangeDataTests(test);
  registerMustExistTests(test);
  registerRangeBoundsTests(test);
  registerRangeOrderTests(test);
  registerRangeDurabilityTests(test);
  registerCachedReadTests(test);
}

function registerCachedReadTests(test: Register): void {
  test("readCachedAt, where offered, reads what readAt reads or declines", async ({ store }) => {
    if (store.readCachedAt === undefined) return;
    const size = store.blockSizeBytes;
    const whole = patternBlock(size, 41);
    await store.putBlock(testRef(1), whole);
    await store.writeAt(testRef(2), 0, whole.subarray(0, size / 2));
    const ranges: [number, number][] = [[0, size], [0, size / 2], [size / 2, size / 2], [7, 100]];
    for (const ref of [testRef(1), testRef(2)]) {
      for (const [offset, length] of ranges) {
        const expected = new Uint8Array(length);
        await store.readAt(ref, offset, expected);
        const into = new Uint8Array(length).fill(0xaa);
        if (store.readCachedAt(ref, offset, into)) {
          assert.deepEqual(into, expected, `${ref} ${length} bytes at ${offset}`);
        }
      }
    }
    assert.equal(store.readCachedAt(testRef(9), 0, new Uint8Array(size)), false, "absent ref");
    assert.equal(store.readCachedAt(testRef(1), size - 1, new Uint8Array(2)), false, "past end");
    await store.deleteBlock(testRef(1));
    assert.equal(store.readCachedAt(testRef(1), 0, new Uint8Array(size)), false, "deleted");
    await store.close();
    assert.equal(store.readCachedAt(testRef(2), 0, new Uint8Array(size)), false, "closed");
  });
}

function registerRangeDataTests(test: Register): void {
  test("writeAt creates a zero block around the written bytes", async ({ store }) => {
    const size = store.blockSizeBytes;
    const data = patternBlock(100, 1);
    await store.writeAt(testRef(1), 7, data);
    assert.equal(await store.hasBlock(testRef(1)), true);
    assert.equal(store.usedBlocks(), 1);
    const expected = new Uint8Array(size);
    expected.set(data, 7);
    assert.deepEqual(await readAll(store, testRef(1)), expected);
    assert.deepEqual(await store.getBlock(testRef(1)), expected);
    const part = new Uint8Array(10);
    await store.readAt(testRef(1), 100, part);
    assert.deepEqual(part, expected.subarray(100, 110));
  });

  test("writeAt at odd offsets patches only its range", async ({ store }) => {
    const size = store.blockSizeBytes;
    const base = patternBlock(size, 2);
    await store.putBlock(testRef(1), base);
    const expected = base.slice();
    const edits: [number, number][] = [[0, 1], [1, 511], [size - 3, 3], [size >> 1, 700], [5, 0]];
    for (const [i, [offset, length]] of edits.entries()) {
      const length_ = Math.min(length, size - offset);
      const patch = patternBlock(length_, 30 + i);
      await store.writeAt(testRef(1), offset, patch);
      expected.set(patch, offset);
    }
    assert.deepEqual(await readAll(store, testRef(1)), expected);
    assert.equal(store.usedBlocks(), 1);
  });

  test("zeroAt zeroes a range, creating the block when absent", async ({ store }) => {
    const size = store.blockSizeBytes;
    const base = patternBlock(size, 3);
    await store.putBlock(testRef(1), base);
    await store.zeroAt(testRef(1), 3, size - 10);
    const expected = base.slice();
    expected.fill(0, 3, size - 7);
    assert.deepEqual(await readAll(store, testRef(1)), expected);
    await store.zeroAt(testRef(2), 0, 1);
    assert.deepEqual(await readAll(store, testRef(2)), new Uint8Array(size));
    assert.equal(store.usedBlocks(), 2);
  });

  test("fresh resets an existing block before the write", async ({ store }) => {
    const size = store.blockSizeBytes;
    await store.putBlock(testRef(1), patternBlock(size, 4));
    await store.writeAt(testRef(1), 10, new Uint8Array([9, 9]), { fresh: true });
    const expected = new Uint8Array(size);
    expected.set([9, 9], 10);
    assert.deepEqual(await readAll(store, testRef(1)), expected);
    await store.putBlock(testRef(2), patternBlock(size, 5));
    await store.zeroAt(testRef(2), 0, 1, { fresh: true });
    assert.deepEqual(await readAll(store, testRef(2)), new Uint8Array(size));
  });

  test("range calls copy the caller's bytes and fill only the caller's view", async ({ store }) => {
    const data = new Uint8Array([1, 2, 3, 4]);
    const write = store.writeAt(testRef(1), 0, data);
    data.fill(0xee);
    await write;
    const backing = new Uint8Array(12).fill(0x55);
    await store.readAt(testRef(1), 0, backing.subarray(4, 8));
    assert.deepEqual(backing, new Uint8Array([85, 85, 85, 85, 1, 2, 3, 4, 85, 85, 85, 85]));
  });
}

function registerMustExistTests(test: Register): void {
  test("mustExist range writes of an absent ref are not_exist and store nothing", async ({ store }) => {
    const size = store.blockSizeBytes;
    const sector = Math.min(4096, size);
    const mustExist = { mustExist: true };
    await store.putBlock(testRef(9), patternBlock(size, 1));
    // Odd ranges and whole sectors (engines may take different paths for each).
    await rejectsWithCode(
      store.writeAt(testRef(1), 7, new Uint8Array([1, 2, 3]), mustExist),
      ErrorCode.NotExist,
    );
    await rejectsWithCode(
      store.writeAt(testRef(2), 0, new Uint8Array(sector).fill(4), mustExist),
      ErrorCode.NotExist,
    );
    await rejectsWithCode(store.zeroAt(testRef(3), 5, 10, mustExist), ErrorCode.NotExist);
    await rejectsWithCode(store.zeroAt(testRef(4), 0, size, mustExist), ErrorCode.NotExist);
    for (const index of [1, 2, 3, 4]) {
      assert.equal(await store.hasBlock(testRef(index)), false, `ref ${index}`);
      await rejectsWithCode(store.readAt(testRef(index), 0, new Uint8Array(1)), ErrorCode.NotExist);
    }
    assert.equal(store.usedBlocks(), 1);
    const refs: string[] = [];
    for await (const ref of store.blockRefs()) refs.push(ref.key);
    assert.deepEqual(refs, [testRef(9).key]);
    // The refused ref is still free to create.
    await store.writeAt(testRef(1), 0, new Uint8Array([5]));
    assert.equal(store.usedBlocks(), 2);
  });

  test("mustExist range writes change a stored block like any other", async ({ store }) => {
    const size = store.blockSizeBytes;
    const base = patternBlock(size, 2);
    await store.putBlock(testRef(1), base);
    await store.writeAt(testRef(1), 3, new Uint8Array([7, 8, 9]), { mustExist: true });
    await store.zeroAt(testRef(1), size - 100, 50, { mustExist: true });
    const expected = base.slice();
    expected.set([7, 8, 9], 3);
    expected.fill(0, size - 100, size - 50);
    assert.deepEqual(await readAll(store, testRef(1)), expected);
    assert.equal(store.usedBlocks(), 1);
  });

  test("fresh wins over mustExist: an absent ref is created", async ({ store }) => {
    const size = store.blockSizeBytes;
    const both = { fresh: true, mustExist: true };
    await store.writeAt(testRef(1), 10, new Uint8Array([9, 9]), both);
    const expected = new Uint8Array(size);
    expected.set([9, 9], 10);
    assert.deepEqual(await readAll(store, testRef(1)), expected);
    await store.zeroAt(testRef(2), 0, 1, both);
    assert.deepEqual(await readAll(store, testRef(2)), new Uint8Array(size));
    assert.equal(store.usedBlocks(), 2);
  });

  test("mustExist is decided in call order with the ref's other calls", async ({ store }) => {
    const size = store.blockSizeBytes;
    // A put called before it: the ref exists for it.
    const put = store.putBlock(testRef(1), patternBlock(size, 3));
    const patch = store.writeAt(testRef(1), 1, new Uint8Array([1]), { mustExist: true });
    await Promise.all([put, patch]);
    const expected = patternBlock(size, 3);
    expected[1] = 1;
    assert.deepEqual(await readAll(store, testRef(1)), expected);
    // A creating range write called before it: the same.
    const create = store.writeAt(testRef(2), 0, new Uint8Array([2]));
    const zero = store.zeroAt(testRef(2), 1, 1, { mustExist: true });
    await Promise.all([create, zero]);
    const second = new Uint8Array(size);
    second[0] = 2;
    assert.deepEqual(await readAll(store, testRef(2)), second);
    // A delete called before it: the ref is gone for it.
    const gone = store.deleteBlock(testRef(1));
    const refused = store.writeAt(testRef(1), 0, new Uint8Array([3]), { mustExist: true });
    await Promise.all([gone, rejectsWithCode(refused, ErrorCode.NotExist)]);
    assert.equal(await store.hasBlock(testRef(1)), false);
    assert.equal(store.usedBlocks(), 1);
  });
}

function registerRangeBoundsTests(test: Register): void {
  test("ranges outside the block are invalid and change nothing", async ({ store }) => {
    const size = store.blockSizeBytes;
    await store.putBlock(testRef(1), patternBlock(size, 6));
    const cases: [number, number][] = [[-1, 1], [size, 1], [size - 1, 2], [0, size + 1], [
      0.5,
      1,
    ]];
    for (const [offset, length] of cases) {
      await rejectsWithCode(
        store.readAt(testRef(1), offset, new Uint8Array(Math.max(0, length))),
        ErrorCode.Invalid,
      );
      await rejectsWithCode(
        store.writeAt(testRef(1), offset, new Uint8Array(Math.max(0, length))),
        ErrorCode.Invalid,
      );
      await rejectsWithCode(store.zeroAt(testRef(1), offset, length), ErrorCode.Invalid);
    }
    await rejectsWithCode(store.zeroAt(testRef(2), 0, -1), ErrorCode.Invalid);
    assert.deepEqual(await store.getBlock(testRef(1)), patternBlock(size, 6));
    assert.equal(await store.hasBlock(testRef(2)), false);
  });

  test("readAt of a missing ref is not_exist", async ({ store }) => {
    await rejectsWithCode(store.readAt(testRef(1), 0, new Uint8Array(4)), ErrorCode.NotExist);
  });

  test(
    "a range write that needs a new block in a full store is out_of_space",
    async ({ store }) => {
      const total = store.totalBlocks();
      for (let i = 0; i < total; i++) await store.writeAt(testRef(i), 0, new Uint8Array([i]));
      assert.equal(store.usedBlocks(), total);
      await rejectsWithCode(
        store.writeAt(testRef(total), 0, new Uint8Array(1)),
        ErrorCode.OutOfSpace,
      );
      await rejectsWithCode(store.zeroAt(testRef(total), 0, 1), ErrorCode.OutOfSpace);
      // Blocks that exist still take range writes.
      await store.writeAt(testRef(0), 1, new Uint8Array([7]));
      const head = new Uint8Array(2);
      await store.readAt(testRef(0), 0, head);
      assert.deepEqual(head, new Uint8Array([0, 7]));
    },
    { exactCapacity: true },
  );
}

function registerRangeOrderTests(test: Register): void {
  test("range writes of one ref take effect in call order", async ({ store }) => {
    const writes = [1, 2, 3, 4, 5].map((v) =>
      store.writeAt(testRef(1), 0, new Uint8Array(8).fill(v))
    );
    await Promise.all(writes);
    const read = new Uint8Array(8);
    await store.readAt(testRef(1), 0, read);
    assert.deepEqual(read, new Uint8Array(8).fill(5));
  });

  test("puts, range writes and deletes of one ref keep call order", async ({ store }) => {
    const size = store.blockSizeBytes;
    const ops = [
      store.writeAt(testRef(1), 0, new Uint8Array([1])),
      store.putBlock(testRef(1), patternBlock(size, 7)),
      store.writeAt(testRef(1), 1, new Uint8Array([2])),
    ];
    await Promise.all(ops);
    const expected = patternBlock(size, 7);
    expected[1] = 2;
    assert.deepEqual(await readAll(store, testRef(1)), expected);
    const more = [
      store.deleteBlock(testRef(1)),
      store.writeAt(testRef(1), 3, new Uint8Array([3])),
    ];
    await Promise.all(more);
    const fresh = new Uint8Array(size);
    fresh[3] = 3;
    assert.deepEqual(await readAll(store, testRef(1)), fresh);
  });

  test("a read issued after a range write resolved sees it", async ({ store }) => {
    const size = store.blockSizeBytes;
    for (let round = 0; round < 20; round++) {
      const offset = (round * 977) % (size - 16);
      const patch = new Uint8Array(16).fill(round + 1);
      await store.writeAt(testRef(1), offset, patch);
      const read = new Uint8Array(16);
      await store.readAt(testRef(1), offset, read);
      assert.deepEqual(read, patch);
    }
  });

  test("many range writes to many blocks in flight all land", async ({ store }) => {
    const size = store.blockSizeBytes;
    const blocks = Math.min(store.totalBlocks(), 8);
    const sector = Math.min(4096, size);
    const expected = Array.from({ length: blocks }, () => new Uint8Array(size));
    const work: Promise<void>[] = [];
    for (let i = 0; i < blocks * 16; i++) {
      const block = i % blocks;
      const offset = ((i * 7) % (size / sector)) * sector;
      const patch = patternBlock(sector, i);
      expected[block]!.set(patch, offset);
      work.push(store.writeAt(testRef(block), offset, patch));
    }
    await Promise.all(work);
    for (let block = 0; block < blocks; block++) {
      assert.deepEqual(await readAll(store, testRef(block)), expected[block]);
    }
  });
}

function registerRangeDurabilityTests(test: Register): void {
  test("flushed range writes survive a reopen", async (fixture) => {
    if (fixture.reopen === undefined) return; // volatile stores have nothing to reopen
    const { store } = fixture;
    const size = store.blockSizeBytes;
    await store.putBlock(testRef(1), patternBlock(size, 8));
    await store.writeAt(testRef(1), 100, new Uint8Array([1, 2, 3]));
    await store.writeAt(testRef(2), size - 2, new Uint8Array([4, 5]));
    await store.zeroAt(testRef(1), 0, 50);
    await store.writeAt(testRef(3), 0, new Uint8Array([6]));
    await store.deleteBlock(testRef(3));
    await store.flush();
    await store.close();
    const reopened = await fixture.reopen();
    try {
      const first = patternBlock(size, 8);
      first.set([1, 2, 3], 100);
      first.fill(0, 0, 50);
      assert.deepEqual(await readAll(reopened, testRef(1)), first);
      const second = new Uint8Array(size);
      second.set([4, 5], size - 2);
      assert.deepEqual(await readAll(reopened, testRef(2)), second);
      assert.equal(await reopened.hasBlock(testRef(3)), false);
      assert.equal(reopened.usedBlocks(), 2);
    } finally {
      await reopened.close();
    }
  });

  test("refused mustExist writes and ifAbsent puts leave nothing after a reopen", async (fixture) => {
    if (fixture.reopen === undefined) return; // volatile stores have nothing to reopen
    const { store } = fixture;
    const size = store.blockSizeBytes;
    await store.putBlock(testRef(1), patternBlock(size, 10));
    await rejectsWithCode(
      store.putBlock(testRef(1), patternBlock(size, 11), { ifAbsent: true }),
      ErrorCode.Exists,
    );
    await rejectsWithCode(
      store.writeAt(testRef(2), 1, new Uint8Array([1]), { mustExist: true }),
      ErrorCode.NotExist,
    );
    await rejectsWithCode(store.zeroAt(testRef(3), 0, 1, { mustExist: true }), ErrorCode.NotExist);
    await store.flush();
    await store.close();
    const reopened = await fixture.reopen();
    try {
      assert.deepEqual(await readAll(reopened, testRef(1)), patternBlock(size, 10));
      assert.equal(await reopened.hasBlock(testRef(2)), false);
      assert.equal(await reopened.hasBlock(testRef(3)), false);
      assert.equal(reopened.usedBlocks(), 1);
    } finally {
      await reopened.close();
    }
  });

  test("refs of other volumes and types are untouched by range writes", async ({ store }) => {
    const size = store.blockSizeBytes;
    const other = new BlockRef({ type: 2, volume: 2, inode: 3n, index: 1n });
    await store.putBlock(other, patternBlock(size, 9));
    await store.writeAt(testRef(1), 0, new Uint8Array(size).fill(1));
    assert.deepEqual(await store.getBlock(other), patternBlock(size, 9));
  });
}
