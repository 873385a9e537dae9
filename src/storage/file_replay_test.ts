/**
 * Replay after a process kill: the store's files are copied as a kill leaves them (the page
 * cache) right after a flush, with the applier held so the flushed range records exist only in
 * the journal; the copy is opened and must show them. Covers records made while a whole-block
 * put of their ref was in flight, and records journaled after a restart that replayed nothing.
 * @module
 */

import assert from "node:assert/strict";
import { BlockRef } from "../core/mod.ts";
import { FileBlockStore } from "./file.ts";
import { DataGate, HookedFileIo } from "./hooked_file_io.ts";
import { SysFileIo } from "./sys_file_io.ts";

const SECTOR = 4096;
const BLOCK = 4 * SECTOR;

function pattern(seed: number): Uint8Array {
  const bytes = new Uint8Array(BLOCK);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31 + seed * 7) & 0xff;
  return bytes;
}

async function copyStoreFiles(from: string, to: string): Promise<void> {
  for (const kind of ["data", "map", "sums", "journal"]) {
    await Deno.copyFile(`${from}/${kind}-current.blk`, `${to}/${kind}-current.blk`);
  }
}

Deno.test("a range written while a put of its block was in flight survives a kill after the flush", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-replay-" });
  const crashed = await Deno.makeTempDir({ prefix: "torus-replay-" });
  const options = { dir, blockSizeBytes: BLOCK, sizeBytes: BLOCK * 16 };
  const ref = new BlockRef({ volume: 1, inode: 1, index: 1 });
  const gate = new DataGate();
  try {
    const store = await FileBlockStore.open({ ...options, io: gate });
    await store.putBlock(ref, pattern(1));
    await store.flush();
    const put = store.putBlock(ref, pattern(2));
    const range = new Uint8Array(SECTOR).fill(0xab);
    const write = store.writeAt(ref, SECTOR, range);
    await Promise.all([put, write]);
    gate.held = true;
    await store.flush();
    await copyStoreFiles(dir, crashed);
    gate.release();
    const expected = pattern(2);
    expected.set(range, SECTOR);
    assert.deepEqual(await store.getBlock(ref), expected, "before the kill");
    await store.close();
    const reopened = await FileBlockStore.open({ ...options, dir: crashed });
    try {
      assert.deepEqual(await reopened.getBlock(ref), expected, "after the kill");
    } finally {
      await reopened.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(crashed, { recursive: true });
  }
});

Deno.test("a range flushed after a clean restart survives a kill", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-replay-" });
  const crashed = await Deno.makeTempDir({ prefix: "torus-replay-" });
  const options = { dir, blockSizeBytes: BLOCK, sizeBytes: BLOCK * 16 };
  const ref = new BlockRef({ volume: 1, inode: 1, index: 1 });
  try {
    // Range records carry seqs above every copy's generation; a clean close checkpoints them, so
    // the next open replays nothing and must still journal above the checkpoint's seq.
    const first = await FileBlockStore.open(options);
    await first.putBlock(ref, pattern(1));
    for (let i = 0; i < 4; i++) {
      await first.writeAt(ref, SECTOR, new Uint8Array(SECTOR).fill(2 + i));
    }
    await first.close();
    const gate = new DataGate();
    const store = await FileBlockStore.open({ ...options, io: gate });
    gate.held = true;
    await store.writeAt(ref, 2 * SECTOR, new Uint8Array(SECTOR).fill(0xab));
    await store.flush();
    await copyStoreFiles(dir, crashed);
    gate.release();
    await store.close();
    const reopened = await FileBlockStore.open({ ...options, dir: crashed });
    try {
      const got = await reopened.getBlock(ref);
      assert.equal(got[2 * SECTOR], 0xab, "the range flushed after the restart");
      assert.equal(got[SECTOR], 5, "the range written before the restart");
    } finally {
      await reopened.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(crashed, { recursive: true });
  }
});

/**
 * Delays the journal's datasync by running `duringSync` first, and holds the journal's record
 * writes (not its checkpoint page) once `holdRecords` is set.
 */
class JournalGate extends HookedFileIo {
  duringSync: (() => void) | null = null;
  holdRecords = false;
  /** Checkpoints written (to the journal's first page). */
  checkpoints = 0;
  readonly #waiting: (() => void)[] = [];
  constructor() {
    super(new SysFileIo(), (path) => {
      if (!path.includes("/journal-")) return {};
      return {
        datasync: (file) => {
          const run = this.duringSync;
          this.duringSync = null;
          run?.();
          return file.datasync();
        },
        write: async (file, bytes, at) => {
          // The checkpoint records live in the first page, before the record region.
          if (this.holdRecords && at >= 4096) {
            await new Promise<void>((go) => this.#waiting.push(go));
          }
          await file.write(bytes, at);
          if (at < 4096) this.checkpoints++;
        },
      };
    });
  }
  release(): void {
    this.holdRecords = false;
    for (const go of this.#waiting.splice(0)) go();
  }
}

Deno.test("a flushed range survives a kill when a delete of its block was not flushed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-replay-" });
  const crashed = await Deno.makeTempDir({ prefix: "torus-replay-" });
  // Big blocks: a few whole-block records fill half the journal, so an apply checkpoints.
  const big = 512 * 1024;
  const options = { dir, blockSizeBytes: big, sizeBytes: big * 16 };
  const ref = (index: number) => new BlockRef({ volume: 1, inode: 1, index });
  const gate = new JournalGate();
  const range = new Uint8Array(SECTOR).fill(0xab);
  const store = await FileBlockStore.open({ ...options, io: gate });
  try {
    await store.putBlock(ref(0), new Uint8Array(big).fill(1));
    for (let i = 1; i <= 4; i++) await store.putBlock(ref(i), new Uint8Array(big).fill(i));
    await store.flush();
    await store.writeAt(ref(0), 0, range);
    for (let i = 1; i <= 4; i++) await store.writeAt(ref(i), 0, new Uint8Array(big).fill(0x10));
    // The delete comes while the flush syncs the journal: the range is durable, the delete not
    // (its record is never written). The apply after the flush checkpoints past the range.
    let deleted: Promise<void> | null = null;
    gate.duringSync = () => {
      gate.holdRecords = true;
      deleted = store.deleteBlock(ref(0));
    };
    const checkpoints = gate.checkpoints;
    await store.flush();
    assert.ok(deleted !== null, "the delete ran during the flush");
    await deleted;
    await store.applied();
    for (let waitedMs = 0; gate.checkpoints === checkpoints; waitedMs += 10) {
      assert.ok(waitedMs < 10_000, "the apply after the flush checkpoints");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await copyStoreFiles(dir, crashed);
  } finally {
    gate.release();
    await store.close();
  }
  const reopened = await FileBlockStore.open({ ...options, dir: crashed });
  try {
    const got = await reopened.getBlock(ref(0)).catch((error) => error);
    if (got instanceof Uint8Array) {
      assert.deepEqual(got.subarray(0, SECTOR), range, "the flushed range is there");
    } else {
      assert.match(String(got), /not found/, "or the block is gone, as the delete said");
    }
  } finally {
    await reopened.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(crashed, { recursive: true });
  }
});
