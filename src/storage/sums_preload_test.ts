/**
 * The background preload of checksums at open (sums_file.ts): reads after a restart find their
 * sums in memory, and a record written while the preload ran is never replaced by the older
 * bytes the preload had read.
 */

import assert from "node:assert/strict";
import { BlockRef, SeededRandom, testSeed } from "../core/mod.ts";
import { FileBlockStore } from "./file.ts";
import { sumsRecordBytesOf } from "./sector_sums.ts";
import type { FileIo } from "./file_io.ts";
import { HookedFileIo } from "./hooked_file_io.ts";
import { SysFileIo } from "./sys_file_io.ts";

const SECTOR = 4096;
const BLOCK_BYTES = 4 * SECTOR;
const RECORD_BYTES = sumsRecordBytesOf(BLOCK_BYTES);
const BLOCKS = 12;

/** Counts reads of the sums file; can hold a long (preload) read after it read. */
class SumsWatch extends HookedFileIo {
  smallReads = 0;
  holdLongReads = false;
  readonly #held: (() => void)[] = [];
  #longReadDone: (() => void) | null = null;
  readonly longReadDone = new Promise<void>((resolve) => this.#longReadDone = resolve);

  constructor() {
    super(new SysFileIo(), (path) => {
      if (!path.includes("/sums-")) return {};
      return {
        read: async (file, into, offset) => {
          const got = await file.read(into, offset);
          if (into.length <= RECORD_BYTES) {
            this.smallReads++;
          } else if (this.holdLongReads && offset >= 4096) {
            // A read of many records past the header page: the preload. The bytes are read;
            // whatever happens now is newer than them.
            this.#longReadDone?.();
            await new Promise<void>((go) => this.#held.push(go));
          }
          return got;
        },
      };
    });
  }

  release(): void {
    this.holdLongReads = false;
    for (const go of this.#held.splice(0)) go();
  }
}

function ref(index: number): BlockRef {
  return new BlockRef({ volume: 2, inode: 5n, index: BigInt(index) });
}

function open(dir: string, io: FileIo): Promise<FileBlockStore> {
  return FileBlockStore.open({ dir, blockSizeBytes: BLOCK_BYTES, sizeBytes: 64 * BLOCK_BYTES, io });
}

/** A store with BLOCKS random blocks, closed; returns their bytes. */
async function written(dir: string): Promise<Uint8Array[]> {
  const random = new SeededRandom(testSeed());
  const store = await open(dir, new SysFileIo());
  const blocks = Array.from({ length: BLOCKS }, () => random.bytes(BLOCK_BYTES));
  for (const [i, block] of blocks.entries()) await store.putBlock(ref(i), block);
  await store.close();
  return blocks;
}

Deno.test("sums preload: after a reopen, reads find every block's sums in memory", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-sums-preload-" });
  try {
    const blocks = await written(dir);
    const watch = new SumsWatch();
    const store = await open(dir, watch);
    try {
      await store.sumsPreloaded();
      for (const [i, block] of blocks.entries()) {
        const part = new Uint8Array(SECTOR);
        await store.readAt(ref(i), SECTOR, part);
        assert.deepEqual(part, block.subarray(SECTOR, 2 * SECTOR));
      }
      assert.equal(watch.smallReads, 0, "no read went to the sums file for one record");
    } finally {
      await store.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sums preload: a record written after the preload read its chunk keeps its new sums", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-sums-preload-" });
  try {
    const blocks = await written(dir);
    const watch = new SumsWatch();
    watch.holdLongReads = true;
    const store = await open(dir, watch);
    try {
      await watch.longReadDone;
      // The preload holds the old sums of every block; now block 3 changes and is applied.
      const fresh = new SeededRandom(testSeed() + 1).bytes(SECTOR);
      await store.writeAt(ref(3), 2 * SECTOR, fresh);
      await store.flush();
      await store.applied();
      watch.release();
      await store.sumsPreloaded();
      const expected = blocks[3]!.slice();
      expected.set(fresh, 2 * SECTOR);
      assert.deepEqual(await store.getBlock(ref(3)), expected);
    } finally {
      watch.release();
      await store.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
