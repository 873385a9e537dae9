/**
 * The BlockStore contract suite (block_store.ts states the rules): every implementation's test
 * file calls {@link blockStoreContract} with a factory, and the same tests run against it.
 *
 * The factory returns a fresh, empty store with a capacity of 8 to 64 blocks (tests fill it) and
 * a block size of at least 512 bytes; `reopen` (for persistent stores) opens the same store again
 * after the test closed it; `holdNextIo` (for stores that do I/O) holds the store's next I/O
 * operation, so a call is really in flight while the test acts; `cleanup` removes what the
 * factory made. A store whose calls settle when called says why in `callsSettleAtOnce`: the
 * tests that need a call in flight are then registered as ignored, with that reason.
 * @module
 */

import assert from "node:assert/strict";
import { BlockRef, crc32, ErrorCode, isTorusError } from "../core/mod.ts";
import type { BlockStore } from "./block_store.ts";
import { registerRangeTests } from "./storage_contract_ranges.ts";

/** What a contract factory returns. */
export interface ContractFixture {
  store: BlockStore;
  /** Opens the same store again; only called after `store.close()` resolved. */
  reopen?: () => Promise<BlockStore>;
  /** Holds the store's next I/O operation until released (stores that do I/O). */
  holdNextIo?: () => IoHold;
  cleanup(): Promise<void>;
}

/** An I/O operation of the store held at a gate. */
export interface IoHold {
  /** Resolves once the store's next I/O operation started and waits at the gate. */
  arrived: Promise<void>;
  /** I/O operations the store started after the held one (they are not held). */
  laterOperations(): number;
  /** Lets the held operation go on. */
  release(): void;
}

/** What the contract needs to know about a store before its tests run. */
export interface ContractOptions {
  /** Why no call of this store can be in flight (each settles when called), if so. */
  callsSettleAtOnce?: string;
  /**
   * Why this store does not fill at exactly `totalBlocks()` blocks, if so (a cluster is full
   * when one holder is): the tests that fill it to the last block are then ignored.
   */
  capacityNotExact?: string;
}

/** Builds a fresh fixture. */
export type ContractFactory = () => Promise<ContractFixture>;

/** A ref of test volume 2, INode 3, as the original's volume and INode ids start at 2. */
export function testRef(index: number, inode = 3): BlockRef {
  return new BlockRef({ volume: 2, inode: BigInt(inode), index: BigInt(index) });
}

/** A full block whose bytes depend on `seed` (so versions differ everywhere). */
export function patternBlock(sizeBytes: number, seed: number): Uint8Array {
  const block = new Uint8Array(sizeBytes);
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < sizeBytes; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    block[i] = x >>> 24;
  }
  return block;
}

/** Asserts that `promise` rejects with a TorusError of `code`. */
export async function rejectsWithCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isTorusError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

function throwsWithCode(fn: () => unknown, code: ErrorCode): void {
  assert.throws(fn, (error: unknown) => isTorusError(error, code));
}

async function collect(refs: AsyncIterable<BlockRef>): Promise<string[]> {
  const keys: string[] = [];
  for await (const ref of refs) keys.push(ref.key);
  return keys.sort();
}

/** Runs `body` on a fresh fixture and always cleans up. */
async function withStore(
  factory: ContractFactory,
  body: (fixture: ContractFixture) => Promise<void>,
): Promise<void> {
  const fixture = await factory();
  try {
    await body(fixture);
  } finally {
    await fixture.store.close().catch(() => {});
    await fixture.cleanup();
  }
}

/** Registers the contract tests for the stores `factory` makes. */
export function blockStoreContract(
  name: string,
  factory: ContractFactory,
  options: ContractOptions = {},
): void {
  const test: Register = (behaviour, body, needs = {}) => {
    const reason = needs.callInFlight
      ? options.callsSettleAtOnce
      : needs.exactCapacity
      ? options.capacityNotExact
      : undefined;
    Deno.test({
      name: `${name}: ${behaviour}${reason === undefined ? "" : ` (ignored: ${reason})`}`,
      ignore: reason !== undefined,
      fn: () => withStore(factory, body),
    });
  };
  registerDataTests(test);
  registerLookupTests(test);
  registerCapacityTests(test);
  registerLifecycleTests(test);
  registerConcurrencyTests(test);
  registerSameRefTests(test);
  registerIfAbsentTests(test);
  registerRangeTests(test);
}

type Register = (
  behaviour: string,
  body: (fixture: ContractFixture) => Promise<void>,
  needs?: { callInFlight?: boolean; exactCapacity?: boolean },
) => void;

function registerDataTests(test: Register): void {
  test("a written block reads back byte-identical", async ({ store }) => {
    const data = patternBlock(store.blockSizeBytes, 1);
    await store.putBlock(testRef(1), data);
    assert.deepEqual(await store.getBlock(testRef(1)), data);
    assert.equal(await store.hasBlock(testRef(1)), true);
  });

  test("mutating the caller's buffers never changes the stored block", async ({ store }) => {
    const data = patternBlock(store.blockSizeBytes, 2);
    const original = data.slice();
    const put = store.putBlock(testRef(1), data);
    data.fill(0xee); // after the call, before it resolves
    await put;
    const read = await store.getBlock(testRef(1));
    assert.deepEqual(read, original);
    read.fill(0x11);
    assert.deepEqual(await store.getBlock(testRef(1)), original);
    const again = await store.getBlock(testRef(1));
    assert.notEqual(again.buffer, read.buffer);
  });

  test("a short block is zero-padded to the block size", async ({ store }) => {
    // A full block first, so a store reusing buffers must clear the old tail.
    await store.putBlock(testRef(9), patternBlock(store.blockSizeBytes, 3));
    await store.putBlock(testRef(1), new Uint8Array([1, 2, 3]));
    const read = await store.getBlock(testRef(1));
    assert.equal(read.length, store.blockSizeBytes);
    assert.deepEqual(read.subarray(0, 3), new Uint8Array([1, 2, 3]));
    assert.ok(read.subarray(3).every((b) => b === 0));
    await store.putBlock(testRef(2), new Uint8Array(0));
    assert.ok((await store.getBlock(testRef(2))).every((b) => b === 0));
  });

  test("an oversized block is invalid and stores nothing", async ({ store }) => {
    const data = new Uint8Array(store.blockSizeBytes + 1);
    await rejectsWithCode(store.putBlock(testRef(1), data), ErrorCode.Invalid);
    assert.equal(await store.hasBlock(testRef(1)), false);
    assert.equal(store.usedBlocks(), 0);
  });

  test("putting an existing ref replaces its bytes, using no extra capacity", async ({ store }) => {
    await store.putBlock(testRef(1), patternBlock(store.blockSizeBytes, 4));
    const second = patternBlock(store.blockSizeBytes, 5);
    await store.putBlock(testRef(1), second);
    assert.deepEqual(await store.getBlock(testRef(1)), second);
    assert.equal(store.usedBlocks(), 1);
  });
}

function registerLookupTests(test: Register): void {
  test("missing refs: get and delete throw not_exist, has answers false", async ({ store }) => {
    await rejectsWithCode(store.getBlock(testRef(7)), ErrorCode.NotExist);
    await rejectsWithCode(store.deleteBlock(testRef(7)), ErrorCode.NotExist);
    assert.equal(await store.hasBlock(testRef(7)), false);
    await store.putBlock(testRef(7), patternBlock(store.blockSizeBytes, 6));
    await store.deleteBlock(testRef(7));
    await rejectsWithCode(store.getBlock(testRef(7)), ErrorCode.NotExist);
    await rejectsWithCode(store.deleteBlock(testRef(7)), ErrorCode.NotExist);
    assert.equal(await store.hasBlock(testRef(7)), false);
  });

  test("refs differing in one field are different blocks", async ({ store }) => {
    const refs = [
      testRef(1),
      testRef(1, 4),
      new BlockRef({ volume: 3, inode: 3n, index: 1n }),
      new BlockRef({ type: 1, volume: 2, inode: 3n, index: 1n }),
    ];
    for (const [i, ref] of refs.entries()) {
      await store.putBlock(ref, patternBlock(store.blockSizeBytes, 10 + i));
    }
    for (const [i, ref] of refs.entries()) {
      assert.deepEqual(await store.getBlock(ref), patternBlock(store.blockSizeBytes, 10 + i));
    }
  });

  test("expectedCrc32: a match returns the block, else block_unavailable", async ({ store }) => {
    const data = patternBlock(store.blockSizeBytes, 7);
    await store.putBlock(testRef(1), data);
    const crc = crc32(data);
    assert.deepEqual(await store.getBlock(testRef(1), { expectedCrc32: crc }), data);
    await rejectsWithCode(
      store.getBlock(testRef(1), { expectedCrc32: (crc + 1) >>> 0 }),
      ErrorCode.BlockUnavailable,
    );
    // The stored block is still there for callers with the right expectation.
    assert.deepEqual(await store.getBlock(testRef(1)), data);
  });

  test("an aborted signal stops a call before it starts", async ({ store }) => {
    const signal = AbortSignal.abort();
    await assert.rejects(store.putBlock(testRef(1), new Uint8Array(1), { signal }));
    await assert.rejects(store.getBlock(testRef(1), { signal }));
    assert.equal(await store.hasBlock(testRef(1)), false);
  });
}

async function fill(store: BlockStore, first = 0): Promise<number> {
  const total = store.totalBlocks();
  for (let i = first; i < total; i++) {
    await store.putBlock(testRef(i), patternBlock(store.blockSizeBytes, i));
  }
  return total;
}

function registerCapacityTests(test: Register): void {
  test("a put of a new ref beyond capacity throws out_of_space", async ({ store }) => {
    const total = await fill(store);
    assert.ok(total >= 8, "contract fixtures hold at least 8 blocks");
    assert.equal(store.usedBlocks(), total);
    await rejectsWithCode(store.putBlock(testRef(total), new Uint8Array(1)), ErrorCode.OutOfSpace);
    assert.equal(store.usedBlocks(), total);
  }, { exactCapacity: true });

  test("replacing a block in a full store succeeds", async ({ store }) => {
    const total = await fill(store);
    for (let round = 0; round < 3; round++) {
      const data = patternBlock(store.blockSizeBytes, 100 + round);
      await store.putBlock(testRef(round), data);
      assert.deepEqual(await store.getBlock(testRef(round)), data);
    }
    assert.equal(store.usedBlocks(), total);
  }, { exactCapacity: true });

  test("a delete frees capacity for a new block", async ({ store }) => {
    const total = await fill(store);
    await store.deleteBlock(testRef(0));
    assert.equal(store.usedBlocks(), total - 1);
    await store.putBlock(testRef(total), patternBlock(store.blockSizeBytes, 200));
    assert.equal(store.usedBlocks(), total);
    assert.deepEqual(await store.getBlock(testRef(total)), patternBlock(store.blockSizeBytes, 200));
    for (let i = 1; i < total; i++) {
      assert.deepEqual(await store.getBlock(testRef(i)), patternBlock(store.blockSizeBytes, i));
    }
  }, { exactCapacity: true });

  test("usedBlocks counts stored refs and totalBlocks stays fixed", async ({ store }) => {
    const total = store.totalBlocks();
    assert.equal(store.usedBlocks(), 0);
    await store.putBlock(testRef(1), new Uint8Array(1));
    await store.putBlock(testRef(2), new Uint8Array(1));
    await store.putBlock(testRef(2), new Uint8Array(2));
    assert.equal(store.usedBlocks(), 2);
    await store.deleteBlock(testRef(1));
    assert.equal(store.usedBlocks(), 1);
    assert.equal(store.totalBlocks(), total);
  });

  test("blockRefs is a snapshot taken when the iteration starts", async ({ store }) => {
    for (let i = 0; i < 5; i++) await store.putBlock(testRef(i), new Uint8Array([i]));
    assert.deepEqual(
      await collect(store.blockRefs()),
      [0, 1, 2, 3, 4].map((i) => testRef(i).key).sort(),
    );
    const seen: string[] = [];
    for await (const ref of store.blockRefs()) {
      if (seen.length === 0) {
        await store.deleteBlock(testRef(4));
        await store.putBlock(testRef(5), new Uint8Array([5]));
      }
      seen.push(ref.key);
    }
    assert.deepEqual(seen.sort(), [0, 1, 2, 3, 4].map((i) => testRef(i).key).sort());
    assert.deepEqual(
      await collect(store.blockRefs()),
      [0, 1, 2, 3, 5].map((i) => testRef(i).key).sort(),
    );
  });
}

function registerLifecycleTests(test: Register): void {
  test("after close every call throws closed, and close is idempotent", async ({ store }) => {
    await store.putBlock(testRef(1), new Uint8Array(1));
    await store.flush();
    await store.close();
    await store.close();
    await rejectsWithCode(store.getBlock(testRef(1)), ErrorCode.Closed);
    await rejectsWithCode(store.putBlock(testRef(2), new Uint8Array(1)), ErrorCode.Closed);
    await rejectsWithCode(store.hasBlock(testRef(1)), ErrorCode.Closed);
    await rejectsWithCode(store.deleteBlock(testRef(1)), ErrorCode.Closed);
    await rejectsWithCode(store.flush(), ErrorCode.Closed);
    await rejectsWithCode(collect(store.blockRefs()), ErrorCode.Closed);
    throwsWithCode(() => store.usedBlocks(), ErrorCode.Closed);
    throwsWithCode(() => store.totalBlocks(), ErrorCode.Closed);
  });

  test("close waits for calls in flight, which complete", async (fixture) => {
    const { store, holdNextIo } = fixture;
    assert.ok(holdNextIo !== undefined, "a store whose calls can be in flight offers holdNextIo");
    const data = patternBlock(store.blockSizeBytes, 8);
    const hold = holdNextIo();
    const put = store.putBlock(testRef(1), data);
    await hold.arrived;
    // Counted before close() is called: I/O that close starts at once counts too.
    const operationsBefore = hold.laterOperations();
    let closed = false;
    const closing = store.close().then(() => void (closed = true));
    // Every reaction to close() that needs no I/O result has run after one event-loop turn.
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(closed, false, "close resolved while a put was in flight");
    assert.equal(
      hold.laterOperations(),
      operationsBefore,
      "close started I/O (a flush) before the put in flight completed",
    );
    hold.release();
    await put;
    await closing;
    assert.equal(closed, true);
    if (fixture.reopen === undefined) return;
    const reopened = await fixture.reopen();
    try {
      assert.deepEqual(await reopened.getBlock(testRef(1)), data);
    } finally {
      await reopened.close();
    }
  }, { callInFlight: true });

  test("a reopened store keeps every flushed put, replace and delete", async (fixture) => {
    if (fixture.reopen === undefined) return; // volatile stores have nothing to reopen
    const { store } = fixture;
    const size = store.blockSizeBytes;
    for (let i = 0; i < 6; i++) await store.putBlock(testRef(i), patternBlock(size, i));
    await store.putBlock(testRef(2), patternBlock(size, 50));
    await store.deleteBlock(testRef(3));
    await store.putBlock(testRef(6), new Uint8Array([6, 6]));
    await store.flush();
    await store.close();
    const reopened = await fixture.reopen();
    try {
      assert.equal(reopened.usedBlocks(), 6);
      assert.deepEqual(
        await collect(reopened.blockRefs()),
        [0, 1, 2, 4, 5, 6].map((i) => testRef(i).key).sort(),
      );
      for (const i of [0, 1, 4, 5]) {
        assert.deepEqual(await reopened.getBlock(testRef(i)), patternBlock(size, i));
      }
      assert.deepEqual(await reopened.getBlock(testRef(2)), patternBlock(size, 50));
      assert.deepEqual(
        (await reopened.getBlock(testRef(6))).subarray(0, 3),
        new Uint8Array([6, 6, 0]),
      );
      await rejectsWithCode(reopened.getBlock(testRef(3)), ErrorCode.NotExist);
      await reopened.putBlock(testRef(7), patternBlock(size, 7));
      assert.deepEqual(await reopened.getBlock(testRef(7)), patternBlock(size, 7));
    } finally {
      await reopened.close();
    }
  });
}

function registerConcurrencyTests(test: Register): void {
  test("many puts and gets in flight at once all complete correctly", async ({ store }) => {
    const count = Math.min(store.totalBlocks(), 32);
    const size = store.blockSizeBytes;
    await Promise.all(
      Array.from({ length: count }, (_, i) => store.putBlock(testRef(i), patternBlock(size, i))),
    );
    const reads = await Promise.all(
      Array.from({ length: count }, (_, i) => store.getBlock(testRef(i))),
    );
    reads.forEach((read, i) => assert.deepEqual(read, patternBlock(size, i)));
    assert.equal(store.usedBlocks(), count);
  });

  test("concurrent puts of one ref: the last call wins", async ({ store }) => {
    const size = store.blockSizeBytes;
    const puts = [1, 2, 3, 4].map((v) => store.putBlock(testRef(1), patternBlock(size, v)));
    await Promise.all(puts);
    assert.deepEqual(await store.getBlock(testRef(1)), patternBlock(size, 4));
    assert.equal(store.usedBlocks(), 1);
  });
}

function registerSameRefTests(test: Register): void {
  test("a get during a replace returns old or new bytes, never a mix", async ({ store }) => {
    const size = store.blockSizeBytes;
    const old = patternBlock(size, 20);
    const next = patternBlock(size, 21);
    await store.putBlock(testRef(1), old);
    for (let round = 0; round < 10; round++) {
      const [from, to] = round % 2 === 0 ? [old, next] : [next, old];
      const put = store.putBlock(testRef(1), to);
      const reads = await Promise.all([store.getBlock(testRef(1)), store.getBlock(testRef(1))]);
      await put;
      for (const read of reads) assert.ok(equalBytes(read, from) || equalBytes(read, to));
      assert.deepEqual(await store.getBlock(testRef(1)), to);
    }
  });

  test("a delete called while a put of the same ref is in flight wins", async ({ store }) => {
    const size = store.blockSizeBytes;
    await store.putBlock(testRef(2), patternBlock(size, 1));
    const replace = store.putBlock(testRef(2), patternBlock(size, 2));
    const fresh = store.putBlock(testRef(3), patternBlock(size, 3));
    await Promise.all([store.deleteBlock(testRef(2)), store.deleteBlock(testRef(3))]);
    await Promise.all([replace, fresh]);
    assert.equal(await store.hasBlock(testRef(2)), false);
    assert.equal(await store.hasBlock(testRef(3)), false);
    assert.equal(store.usedBlocks(), 0);
    // Capacity is whole again.
    await fill(store);
  }, { exactCapacity: true });

  test("puts, deletes and flushes interleaved keep a consistent store", async ({ store }) => {
    const size = store.blockSizeBytes;
    const total = store.totalBlocks();
    const expected = new Map<string, number>();
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < total * 3; i++) {
      const index = i % total;
      if (i % 7 === 3 && expected.has(testRef(index).key)) {
        expected.delete(testRef(index).key);
        work.push(store.deleteBlock(testRef(index)));
      } else {
        expected.set(testRef(index).key, i);
        work.push(store.putBlock(testRef(index), patternBlock(size, i)));
      }
      if (i % 11 === 0) work.push(store.flush());
    }
    await Promise.all(work);
    assert.equal(store.usedBlocks(), expected.size);
    for (const [key, seed] of expected) {
      const index = Number(key.split(".").at(-1));
      assert.deepEqual(await store.getBlock(testRef(index)), patternBlock(size, seed));
    }
  }, { exactCapacity: true });
}

function registerIfAbsentTests(test: Register): void {
  test("an ifAbsent put of a stored ref is exists and keeps the stored bytes", async ({ store }) => {
    const size = store.blockSizeBytes;
    await store.putBlock(testRef(1), patternBlock(size, 1));
    await rejectsWithCode(
      store.putBlock(testRef(1), patternBlock(size, 2), { ifAbsent: true }),
      ErrorCode.Exists,
    );
    assert.deepEqual(await store.getBlock(testRef(1)), patternBlock(size, 1));
    assert.equal(store.usedBlocks(), 1);
    // A plain put still replaces it.
    await store.putBlock(testRef(1), patternBlock(size, 3), { ifAbsent: false });
    assert.deepEqual(await store.getBlock(testRef(1)), patternBlock(size, 3));
  });

  test("an ifAbsent put of an absent ref stores it", async ({ store }) => {
    const size = store.blockSizeBytes;
    await store.putBlock(testRef(1), patternBlock(size, 4), { ifAbsent: true });
    assert.deepEqual(await store.getBlock(testRef(1)), patternBlock(size, 4));
    assert.equal(await store.hasBlock(testRef(1)), true);
    assert.equal(store.usedBlocks(), 1);
    await rejectsWithCode(
      store.putBlock(testRef(1), patternBlock(size, 5), { ifAbsent: true }),
      ErrorCode.Exists,
    );
    assert.deepEqual(await store.getBlock(testRef(1)), patternBlock(size, 4));
  });

  test("an ifAbsent put is decided in call order with the ref's other calls", async ({ store }) => {
    const size = store.blockSizeBytes;
    // A put called before it (maybe still in flight) stores the ref first.
    const first = store.putBlock(testRef(1), patternBlock(size, 6));
    const late = store.putBlock(testRef(1), patternBlock(size, 7), { ifAbsent: true });
    await Promise.all([first, rejectsWithCode(late, ErrorCode.Exists)]);
    assert.deepEqual(await store.getBlock(testRef(1)), patternBlock(size, 6));
    // So does a range write that creates the ref.
    const create = store.writeAt(testRef(2), 0, new Uint8Array([1]));
    const behind = store.putBlock(testRef(2), patternBlock(size, 8), { ifAbsent: true });
    await Promise.all([create, rejectsWithCode(behind, ErrorCode.Exists)]);
    const created = new Uint8Array(size);
    created[0] = 1;
    assert.deepEqual(await store.getBlock(testRef(2)), created);
    // A delete called before it frees the ref for it.
    const gone = store.deleteBlock(testRef(1));
    const again = store.putBlock(testRef(1), patternBlock(size, 9), { ifAbsent: true });
    await Promise.all([gone, again]);
    assert.deepEqual(await store.getBlock(testRef(1)), patternBlock(size, 9));
    // Of two ifAbsent puts of a new ref, the first called wins.
    const winner = store.putBlock(testRef(3), patternBlock(size, 10), { ifAbsent: true });
    const loser = store.putBlock(testRef(3), patternBlock(size, 11), { ifAbsent: true });
    await Promise.all([winner, rejectsWithCode(loser, ErrorCode.Exists)]);
    assert.deepEqual(await store.getBlock(testRef(3)), patternBlock(size, 10));
    assert.equal(store.usedBlocks(), 3);
  });
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}
