/**
 * FileBlockStore.readCachedAt: the read that completes at once when the slot's sums are cached
 * and its sectors are in the page cache. It must answer exactly what readAt answers, lay unapplied
 * range records over the disk's bytes, and decline (never return) a sector that fails its sum.
 * @module
 */

import assert from "node:assert/strict";
import { ErrorCode } from "../core/mod.ts";
import { FileBlockStore } from "./file.ts";
import { HEADER_BYTES } from "./file_format.ts";
import { DataGate, HookedFileIo } from "./hooked_file_io.ts";
import { patternBlock, rejectsWithCode, testRef } from "./storage_contract.ts";
import { SysFileIo } from "./sys_file_io.ts";

const SECTOR = 4096;
const BLOCK = 4 * SECTOR;

async function withStore(
  body: (store: FileBlockStore, gate: DataGate, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-cached-read-" });
  const gate = new DataGate();
  const store = await FileBlockStore.open({
    dir,
    blockSizeBytes: BLOCK,
    sizeBytes: BLOCK * 9,
    io: gate,
  });
  try {
    await body(store, gate, dir);
  } finally {
    gate.release();
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** readCachedAt of `length` bytes at `offset`, or null when it declined. */
function cached(store: FileBlockStore, offset: number, length: number): Uint8Array | null {
  const into = new Uint8Array(length).fill(0xaa);
  return store.readCachedAt(testRef(1), offset, into) ? into : null;
}

Deno.test("FileBlockStore: a cached read of stored sectors completes at once", async () => {
  await withStore(async (store) => {
    const data = patternBlock(BLOCK, 1);
    await store.putBlock(testRef(1), data);
    await store.flush();
    const reads = store.stats.readBlocks;
    for (const [offset, length] of [[0, SECTOR], [SECTOR, 2 * SECTOR], [0, BLOCK]]) {
      assert.deepEqual(cached(store, offset!, length!), data.subarray(offset!, offset! + length!));
    }
    assert.equal(store.stats.readBlocks, reads + 3, "counted as reads for /metrics");
    // Parts of sectors need a merge, left to readAt.
    assert.equal(cached(store, 7, 100), null);
  });
});

Deno.test("FileBlockStore: a cached read lays unapplied range records over the disk", async () => {
  await withStore(async (store, gate) => {
    const data = patternBlock(BLOCK, 2);
    await store.putBlock(testRef(1), data);
    await store.flush();
    gate.held = true;
    const patch = patternBlock(SECTOR, 3);
    await store.writeAt(testRef(1), 2 * SECTOR, patch);
    await store.zeroAt(testRef(1), 0, SECTOR);
    const expected = data.slice();
    expected.set(patch, 2 * SECTOR);
    expected.fill(0, 0, SECTOR);
    // The applier cannot write them in place: only the overlay has them.
    assert.deepEqual(cached(store, 0, BLOCK), expected);
    assert.deepEqual(cached(store, SECTOR, 2 * SECTOR), expected.subarray(SECTOR, 3 * SECTOR));
    gate.release();
    await store.flush();
    assert.deepEqual(cached(store, 0, BLOCK), expected);
  });
});

Deno.test("FileBlockStore: a cached read declines a damaged sector; readAt reports it", async () => {
  await withStore(async (store, _gate, dir) => {
    const data = patternBlock(BLOCK, 4);
    await store.putBlock(testRef(1), data);
    await store.flush();
    // The store's only block is in slot 0. Damage sector 1 through the page cache.
    using file = await Deno.open(`${dir}/data-current.blk`, { read: true, write: true });
    await file.seek(HEADER_BYTES + SECTOR + 5, Deno.SeekMode.Start);
    await file.write(new Uint8Array([0xff ^ data[SECTOR + 5]!]));
    assert.deepEqual(cached(store, 0, SECTOR), data.subarray(0, SECTOR));
    const failed = store.stats.failedBlocks;
    assert.equal(cached(store, SECTOR, SECTOR), null);
    assert.equal(cached(store, 0, BLOCK), null);
    assert.equal(store.stats.failedBlocks, failed, "declining is not a failure; readAt's is");
    await rejectsWithCode(
      store.readAt(testRef(1), SECTOR, new Uint8Array(SECTOR)),
      ErrorCode.BlockUnavailable,
    );
    assert.equal(store.stats.failedBlocks, failed + 1);
  });
});

Deno.test("FileBlockStore: a cached read declines when the sums are not in memory", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-cached-read-" });
  try {
    const options = { dir, blockSizeBytes: BLOCK, sizeBytes: BLOCK * 9 };
    const store = await FileBlockStore.open(options);
    const data = patternBlock(BLOCK, 5);
    await store.putBlock(testRef(1), data);
    await store.close();
    // Reads of sums records (after the header) wait at a gate: the preload after opening cannot
    // bring them in.
    const gate = Promise.withResolvers<void>();
    const io = new HookedFileIo(new SysFileIo(), (path) => {
      if (!path.includes("/sums-")) return {};
      return {
        read: async (file, into, at) => {
          if (at >= HEADER_BYTES) await gate.promise;
          return file.read(into, at);
        },
      };
    });
    const reopened = await FileBlockStore.open({ ...options, io });
    try {
      assert.equal(cached(reopened, 0, SECTOR), null);
      gate.resolve();
      await reopened.sumsPreloaded();
      assert.deepEqual(cached(reopened, 0, SECTOR), data.subarray(0, SECTOR));
    } finally {
      await reopened.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
