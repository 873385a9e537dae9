/** FileBlockStore's counters (BlockStoreStats): what counts, and what does not. */

import assert from "node:assert/strict";
import { ErrorCode } from "../core/mod.ts";
import { FileBlockStore } from "./file.ts";
import { patternBlock, rejectsWithCode, testRef } from "./storage_contract.ts";

const BLOCK = 4096;

Deno.test("store stats: reads, writes, deletes and flushes are counted; refusals are not", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-stats-" });
  const store = await FileBlockStore.open({ dir, blockSizeBytes: BLOCK, sizeBytes: 4 * BLOCK });
  try {
    const stats = store.stats;
    assert.deepEqual(
      { ...stats },
      {
        readBlocks: 0,
        readBytes: 0,
        failedBlocks: 0,
        writtenBlocks: 0,
        writtenBytes: 0,
        failedWrittenBlocks: 0,
        deletedBlocks: 0,
        flushes: 0,
      },
    );
    await store.putBlock(testRef(1), patternBlock(BLOCK, 1));
    await store.writeAt(testRef(1), 512, new Uint8Array(1024).fill(9));
    await store.zeroAt(testRef(2), 0, 4096);
    assert.equal(stats.writtenBlocks, 3);
    assert.equal(stats.writtenBytes, BLOCK + 1024 + 4096);

    await store.getBlock(testRef(1));
    await store.readAt(testRef(1), 512, new Uint8Array(100));
    assert.equal(stats.readBlocks, 2);
    assert.equal(stats.readBytes, BLOCK + 100);

    // A missing ref is no failure; a copy that does not match what the caller expects is.
    await rejectsWithCode(store.getBlock(testRef(7)), ErrorCode.NotExist);
    await rejectsWithCode(store.readAt(testRef(7), 0, new Uint8Array(1)), ErrorCode.NotExist);
    assert.equal(stats.failedBlocks, 0);
    await rejectsWithCode(
      store.getBlock(testRef(1), { expectedCrc32: 12345 }),
      ErrorCode.BlockUnavailable,
    );
    assert.equal(stats.failedBlocks, 1);
    assert.equal(stats.readBlocks, 2);

    // Out of space is a failed write (3 usable slots, 2 used); a refused size is no write at all.
    await store.putBlock(testRef(3), patternBlock(BLOCK, 3));
    await rejectsWithCode(store.putBlock(testRef(4), patternBlock(BLOCK, 4)), ErrorCode.OutOfSpace);
    await rejectsWithCode(store.writeAt(testRef(5), 0, new Uint8Array(8)), ErrorCode.OutOfSpace);
    assert.equal(stats.failedWrittenBlocks, 2);
    await rejectsWithCode(store.putBlock(testRef(1), new Uint8Array(BLOCK + 1)), ErrorCode.Invalid);
    assert.equal(stats.failedWrittenBlocks, 2);
    assert.equal(stats.writtenBlocks, 4);

    await store.deleteBlock(testRef(3));
    await rejectsWithCode(store.deleteBlock(testRef(3)), ErrorCode.NotExist);
    assert.equal(stats.deletedBlocks, 1);

    const flushes = stats.flushes;
    await store.flush();
    assert.equal(stats.flushes, flushes + 1);
    assert.equal(store.failure, null);
  } finally {
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
