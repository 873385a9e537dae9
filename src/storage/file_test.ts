/**
 * FileBlockStore: the BlockStore contract plus what only a disk engine has: checksums against
 * damaged bytes on disk, header checks, resizing, locking, duplicate entries left by a crash,
 * and a seeded model test against a Map.
 */

import assert from "node:assert/strict";
import {
  crc32,
  ErrorCode,
  isTorusError,
  SeededRandom,
  STORE_SLOTS_MAX,
  testSeed,
} from "../core/mod.ts";
import { FileBlockStore, type FileBlockStoreOptions, SPARE_SLOTS } from "./file.ts";
import {
  decodeEntry,
  encodeEntry,
  ENTRY_BYTES,
  EntryState,
  FORMAT_VERSION,
  HEADER_BYTES,
} from "./file_format.ts";
import type { FileIo, IoFile, OpenFileOptions } from "./file_io.ts";
import {
  blockStoreContract,
  type IoHold,
  patternBlock,
  rejectsWithCode,
  testRef,
} from "./storage_contract.ts";
import { SysFileIo } from "./sys_file_io.ts";
import { HookedFileIo } from "./hooked_file_io.ts";

const BLOCK = 4096;

/**
 * A FileIo whose next file operation (after `holdNext`) waits at a gate until released; the
 * operations started meanwhile pass and are counted.
 */
class HoldingFileIo implements FileIo {
  readonly #inner = new SysFileIo();
  #armed: { arrived: () => void; gate: Promise<void> } | null = null;
  #later = 0;
  #holding = false;

  holdNext(): IoHold {
    const arrived = Promise.withResolvers<void>();
    const gate = Promise.withResolvers<void>();
    this.#armed = { arrived: arrived.resolve, gate: gate.promise };
    return {
      arrived: arrived.promise,
      laterOperations: () => this.#later,
      release: () => {
        this.#holding = false;
        gate.resolve();
      },
    };
  }

  /** Runs `operation`, first waiting at the gate when a hold is armed. */
  async pass<T>(operation: () => Promise<T>): Promise<T> {
    const armed = this.#armed;
    if (armed !== null) {
      this.#armed = null;
      this.#holding = true;
      armed.arrived();
      await armed.gate;
    } else if (this.#holding) {
      this.#later++;
    }
    return await operation();
  }

  /** A read done at once cannot wait at the gate: none while a hold is armed or held. */
  get quiet(): boolean {
    return this.#armed === null && !this.#holding;
  }

  async open(path: string, options?: OpenFileOptions): Promise<IoFile> {
    const file = await this.pass(() => this.#inner.open(path, options));
    const pass = <T>(operation: () => Promise<T>) => this.pass(operation);
    return {
      path: file.path,
      read: (into, offset) => pass(() => file.read(into, offset)),
      readCached: (into, offset) => this.quiet && file.readCached(into, offset),
      write: (bytes, offset) => pass(() => file.write(bytes, offset)),
      datasync: () => pass(() => file.datasync()),
      sync: () => pass(() => file.sync()),
      truncate: (length) => pass(() => file.truncate(length)),
      allocate: (offset, length) => pass(() => file.allocate(offset, length)),
      sizeBytes: () => pass(() => file.sizeBytes()),
      tryLock: () => pass(() => file.tryLock()),
      unlock: () => pass(() => file.unlock()),
      close: () => pass(() => file.close()),
    };
  }

  exists(path: string): Promise<boolean> {
    return this.pass(() => this.#inner.exists(path));
  }
  mkdir(path: string): Promise<void> {
    return this.pass(() => this.#inner.mkdir(path));
  }
  rename(from: string, to: string): Promise<void> {
    return this.pass(() => this.#inner.rename(from, to));
  }
  remove(path: string): Promise<void> {
    return this.pass(() => this.#inner.remove(path));
  }
  syncDirectory(path: string): Promise<void> {
    return this.pass(() => this.#inner.syncDirectory(path));
  }
}

blockStoreContract("FileBlockStore", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-file-" });
  const io = new HoldingFileIo();
  const options = { dir, blockSizeBytes: BLOCK, sizeBytes: BLOCK * 17 };
  return {
    store: await FileBlockStore.open({ ...options, io }),
    reopen: () => FileBlockStore.open(options),
    holdNextIo: () => io.holdNext(),
    cleanup: () => Deno.remove(dir, { recursive: true }),
  };
});

/** Registers a FileBlockStore-specific test. */
function fileTest(behaviour: string, body: () => Promise<void>): void {
  Deno.test(`FileBlockStore: ${behaviour}`, body);
}

/** A temp dir with store options; removed by `using`-style cleanup in each test. */
async function tempStore(
  extra: Partial<FileBlockStoreOptions> = {},
): Promise<{ options: FileBlockStoreOptions; cleanup: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "torus-file-" });
  return {
    options: { dir, blockSizeBytes: BLOCK, sizeBytes: BLOCK * 9, ...extra },
    cleanup: () => Deno.remove(dir, { recursive: true }),
  };
}

/** The slot holding `key` according to the map file on disk, or -1. */
async function slotOnDisk(mapPath: string, key: string): Promise<number> {
  return (await slotsOnDisk(mapPath, key))[0] ?? -1;
}

/** Every slot whose entry on disk names `key`. */
async function slotsOnDisk(mapPath: string, key: string): Promise<number[]> {
  const bytes = await Deno.readFile(mapPath);
  const slots = (bytes.length - HEADER_BYTES) / ENTRY_BYTES;
  const found: number[] = [];
  for (let slot = 0; slot < slots; slot++) {
    const decoded = decodeEntry(bytes, HEADER_BYTES + slot * ENTRY_BYTES, slot);
    if (decoded.state === EntryState.Used && decoded.entry.ref.key === key) found.push(slot);
  }
  return found;
}

async function patchFile(path: string, offset: number, bytes: Uint8Array): Promise<void> {
  using file = await Deno.open(path, { read: true, write: true });
  await file.seek(offset, Deno.SeekMode.Start);
  await file.write(bytes);
}

/**
 * Rewrites the content check of `key`'s entry on disk to the CRC-32 of `block`: the entry a build
 * before sums digests wrote.
 */
async function writeLegacyEntryCrc(mapPath: string, key: string, block: Uint8Array): Promise<void> {
  const slot = await slotOnDisk(mapPath, key);
  assert.ok(slot >= 0);
  const at = HEADER_BYTES + slot * ENTRY_BYTES;
  const map = await Deno.readFile(mapPath);
  const decoded = decodeEntry(map, at, slot);
  assert.equal(decoded.state, EntryState.Used);
  const entry = new Uint8Array(ENTRY_BYTES);
  encodeEntry({ ...decoded.entry, crc32: crc32(block) }, entry);
  await patchFile(mapPath, at, entry);
}

fileTest("a store that lost its sums file keeps the put blocks its entries verify", async () => {
  const { options, cleanup } = await tempStore();
  try {
    const store = await FileBlockStore.open(options);
    for (const n of [1, 2, 3]) await store.putBlock(testRef(n), patternBlock(BLOCK, n));
    await store.close();
    // Block 2's entry as a build before sums digests wrote it; block 3's bytes damaged.
    await writeLegacyEntryCrc(store.mapPath, testRef(2).key, patternBlock(BLOCK, 2));
    const slot3 = await slotOnDisk(store.mapPath, testRef(3).key);
    await patchFile(
      store.dataPath,
      HEADER_BYTES + slot3 * BLOCK + 7,
      new Uint8Array([0xff ^ patternBlock(BLOCK, 3)[7]!]),
    );
    await Deno.remove(`${options.dir}/sums-current.blk`);
    const reopened = await FileBlockStore.open(options);
    assert.deepEqual(await reopened.getBlock(testRef(1)), patternBlock(BLOCK, 1));
    assert.deepEqual(await reopened.getBlock(testRef(2)), patternBlock(BLOCK, 2));
    // The damaged copy stays, unreadable: never vanished (read as zeros) and never returned.
    assert.equal(await reopened.hasBlock(testRef(3)), true);
    await rejectsWithCode(reopened.getBlock(testRef(3)), ErrorCode.BlockUnavailable);
    await reopened.close();
  } finally {
    await cleanup();
  }
});

fileTest("damaged block bytes on disk are block_unavailable, never data", async () => {
  const { options, cleanup } = await tempStore();
  try {
    const store = await FileBlockStore.open(options);
    await store.putBlock(testRef(1), patternBlock(BLOCK, 1));
    await store.putBlock(testRef(2), patternBlock(BLOCK, 2));
    await store.flush();
    const slot = await slotOnDisk(store.mapPath, testRef(1).key);
    assert.ok(slot >= 0);
    await patchFile(
      store.dataPath,
      HEADER_BYTES + slot * BLOCK + 100,
      new Uint8Array([0xff ^ patternBlock(BLOCK, 1)[100]!]),
    );
    await rejectsWithCode(store.getBlock(testRef(1)), ErrorCode.BlockUnavailable);
    await rejectsWithCode(
      store.readAt(testRef(1), 0, new Uint8Array(8)),
      ErrorCode.BlockUnavailable,
    );
    assert.equal(store.stats.failedBlocks, 2, "both failed reads are counted for /metrics");
    // Only what is damaged is unreadable: the block stays (a put repairs it), the neighbour too.
    assert.equal(await store.hasBlock(testRef(1)), true);
    assert.equal(store.usedBlocks(), 2);
    assert.deepEqual(await store.getBlock(testRef(2)), patternBlock(BLOCK, 2));
    await store.close();
    const reopened = await FileBlockStore.open(options);
    await rejectsWithCode(reopened.getBlock(testRef(1)), ErrorCode.BlockUnavailable);
    assert.deepEqual(await reopened.getBlock(testRef(2)), patternBlock(BLOCK, 2));
    await reopened.putBlock(testRef(1), patternBlock(BLOCK, 3));
    assert.deepEqual(await reopened.getBlock(testRef(1)), patternBlock(BLOCK, 3));
    await reopened.close();
  } finally {
    await cleanup();
  }
});

fileTest("a damaged sector makes only the reads that cover it fail", async () => {
  const block = 4 * 4096;
  const { options, cleanup } = await tempStore({ blockSizeBytes: block, sizeBytes: block * 9 });
  try {
    const store = await FileBlockStore.open(options);
    const data = patternBlock(block, 4);
    await store.putBlock(testRef(1), data);
    await store.writeAt(testRef(1), 2 * 4096 + 10, new Uint8Array([7, 7]));
    await store.flush();
    await store.close();
    const slot = await slotOnDisk(options.dir + "/map-current.blk", testRef(1).key);
    // Damage sector 1 of the slot (bytes 4096..8191 of the block).
    await patchFile(
      options.dir + "/data-current.blk",
      HEADER_BYTES + slot * block + 4096 + 5,
      new Uint8Array([0xff ^ data[4096 + 5]!]),
    );
    const reopened = await FileBlockStore.open(options);
    const expected = data.slice();
    expected.set([7, 7], 2 * 4096 + 10);
    for (const sector of [0, 2, 3]) {
      const read = new Uint8Array(4096);
      await reopened.readAt(testRef(1), sector * 4096, read);
      assert.deepEqual(read, expected.subarray(sector * 4096, (sector + 1) * 4096));
    }
    await rejectsWithCode(
      reopened.readAt(testRef(1), 4095, new Uint8Array(2)),
      ErrorCode.BlockUnavailable,
    );
    await rejectsWithCode(reopened.getBlock(testRef(1)), ErrorCode.BlockUnavailable);
    // Writing the damaged sector whole makes it readable again.
    await reopened.writeAt(testRef(1), 4096, expected.subarray(4096, 8192));
    assert.deepEqual(await reopened.getBlock(testRef(1)), expected);
    await reopened.close();
  } finally {
    await cleanup();
  }
});

/** The state of the entry of `slot` in the map file on disk now. */
async function entryStateOnDisk(mapPath: string, slot: number): Promise<EntryState> {
  const map = await Deno.readFile(mapPath);
  return decodeEntry(map, HEADER_BYTES + slot * ENTRY_BYTES, slot).state;
}

fileTest("a damaged index entry is ignored and cleared at open", async () => {
  const { options, cleanup } = await tempStore();
  try {
    const store = await FileBlockStore.open(options);
    for (let i = 0; i < 4; i++) await store.putBlock(testRef(i), patternBlock(BLOCK, i));
    await store.flush();
    const slot = await slotOnDisk(store.mapPath, testRef(2).key);
    assert.ok(slot >= 0);
    await store.close();
    // Flip one bit of the generation field: the entry checksum no longer matches.
    const offset = HEADER_BYTES + slot * ENTRY_BYTES + 25;
    const original = (await Deno.readFile(store.mapPath))[offset]!;
    await patchFile(store.mapPath, offset, new Uint8Array([original ^ 1]));
    assert.equal(await entryStateOnDisk(store.mapPath, slot), EntryState.Damaged);
    const reopened = await FileBlockStore.open(options);
    // Cleared by the open itself, before anything could overwrite it.
    assert.equal(await entryStateOnDisk(store.mapPath, slot), EntryState.Free);
    assert.equal(reopened.usedBlocks(), 3);
    await rejectsWithCode(reopened.getBlock(testRef(2)), ErrorCode.NotExist);
    for (const i of [0, 1, 3]) {
      assert.deepEqual(await reopened.getBlock(testRef(i)), patternBlock(BLOCK, i));
    }
    // The freed slot is usable again.
    await reopened.putBlock(testRef(9), patternBlock(BLOCK, 9));
    assert.deepEqual(await reopened.getBlock(testRef(9)), patternBlock(BLOCK, 9));
    await reopened.close();
  } finally {
    await cleanup();
  }
});

fileTest(
  "a superseded copy is cleared at open and stays gone after its winner is deleted",
  async () => {
    const { options, cleanup } = await tempStore();
    const crashed = await tempStore();
    try {
      const store = await FileBlockStore.open(options);
      await store.putBlock(testRef(1), patternBlock(BLOCK, 1));
      await store.flush();
      const oldSlot = await slotOnDisk(store.mapPath, testRef(1).key);
      await store.putBlock(testRef(1), patternBlock(BLOCK, 2));
      await store.indexWritten();
      // A kill now leaves both entries of ref 1 on disk: the old copy and its replacement.
      await snapshotFiles(options.dir, crashed.options.dir);
      await store.close();
      const mapPath = `${crashed.options.dir}/map-current.blk`;
      assert.equal(await entryStateOnDisk(mapPath, oldSlot), EntryState.Used);
      const reopened = await FileBlockStore.open(crashed.options);
      assert.deepEqual(await reopened.getBlock(testRef(1)), patternBlock(BLOCK, 2));
      assert.equal(reopened.usedBlocks(), 1);
      // The loser's entry is zero on disk right after open, not merely ignored in memory ...
      assert.equal(await entryStateOnDisk(mapPath, oldSlot), EntryState.Free);
      // ... so deleting the winner leaves nothing that could bring the old copy back.
      await reopened.deleteBlock(testRef(1));
      await reopened.close();
      const again = await FileBlockStore.open(crashed.options);
      await rejectsWithCode(again.getBlock(testRef(1)), ErrorCode.NotExist);
      assert.equal(again.usedBlocks(), 0);
      await again.close();
    } finally {
      await cleanup();
      await crashed.cleanup();
    }
  },
);

fileTest("a store opened with another block size is refused", async () => {
  const { options, cleanup } = await tempStore();
  try {
    await (await FileBlockStore.open(options)).close();
    await assert.rejects(
      FileBlockStore.open({ ...options, blockSizeBytes: BLOCK * 2 }),
      /has block size 4096, not 8192/,
    );
    // The refused open released its lock: the right size still opens.
    await (await FileBlockStore.open(options)).close();
  } finally {
    await cleanup();
  }
});

fileTest("foreign, damaged, mismatched or half stores are refused", async () => {
  const { options, cleanup } = await tempStore();
  const dataPath = `${options.dir}/data-current.blk`;
  const mapPath = `${options.dir}/map-current.blk`;
  try {
    await (await FileBlockStore.open(options)).close();
    const data = await Deno.readFile(dataPath);
    const map = await Deno.readFile(mapPath);
    const refuse = async (pattern: RegExp) => {
      await assert.rejects(FileBlockStore.open(options), (error: unknown) => {
        assert.match(String(error), pattern);
        return true;
      });
    };
    await Deno.writeFile(dataPath, new TextEncoder().encode("#!/bin/sh\necho not a store\n"));
    await refuse(/is not a torus store file/);
    await Deno.writeFile(dataPath, map);
    await refuse(/is a TORUSMAP file where a TORUSDAT file was expected/);
    const otherVersion = data.slice();
    new DataView(otherVersion.buffer).setUint32(8, FORMAT_VERSION + 1, true);
    await Deno.writeFile(dataPath, otherVersion);
    await refuse(/format version 3/);
    const damaged = data.slice();
    damaged[17] = damaged[17]! ^ 0x40;
    await Deno.writeFile(dataPath, damaged);
    await refuse(/damaged header/);
    await Deno.writeFile(dataPath, data.subarray(0, HEADER_BYTES + BLOCK));
    await refuse(/is truncated/);
    // A map of another store (other store id) next to this data file.
    const other = await tempStore();
    await (await FileBlockStore.open(other.options)).close();
    await Deno.writeFile(dataPath, data);
    await Deno.copyFile(`${other.options.dir}/map-current.blk`, mapPath);
    await other.cleanup();
    await refuse(/belong to different stores/);
    await Deno.remove(mapPath);
    await refuse(/map-current\.blk is missing/);
    await Deno.remove(dataPath);
    await Deno.writeFile(mapPath, map);
    await refuse(/data-current\.blk is missing/);
  } finally {
    await cleanup();
  }
});

fileTest("an interrupted creation (empty data file) is completed", async () => {
  const { options, cleanup } = await tempStore();
  try {
    await Deno.writeFile(`${options.dir}/data-current.blk`, new Uint8Array(0));
    const store = await FileBlockStore.open(options);
    await store.putBlock(testRef(1), patternBlock(BLOCK, 1));
    await store.close();
  } finally {
    await cleanup();
  }
});

fileTest("invalid options are refused with invalid", async () => {
  const { options, cleanup } = await tempStore();
  try {
    await rejectsWithCode(FileBlockStore.open({ ...options, name: "../x" }), ErrorCode.Invalid);
    await rejectsWithCode(
      FileBlockStore.open({ ...options, blockSizeBytes: 1000 }),
      ErrorCode.Invalid,
    );
    await rejectsWithCode(FileBlockStore.open({ ...options, sizeBytes: -1 }), ErrorCode.Invalid);
    await rejectsWithCode(
      FileBlockStore.open({ ...options, sizeBytes: 2 ** 60 }),
      ErrorCode.Invalid,
    );
    await rejectsWithCode(
      FileBlockStore.open({ ...options, journalRegionBytes: 4 * BLOCK }),
      ErrorCode.Invalid,
    );
  } finally {
    await cleanup();
  }
});

fileTest("a second open of an open store is locked", async () => {
  const { options, cleanup } = await tempStore();
  try {
    const store = await FileBlockStore.open(options);
    await rejectsWithCode(FileBlockStore.open(options), ErrorCode.Locked);
    await store.close();
    await (await FileBlockStore.open(options)).close();
  } finally {
    await cleanup();
  }
});

fileTest("reopening with a larger size grows the store and keeps blocks", async () => {
  const { options, cleanup } = await tempStore({ sizeBytes: BLOCK * 5 });
  try {
    const store = await FileBlockStore.open(options);
    assert.equal(store.totalBlocks(), 5 - SPARE_SLOTS);
    for (let i = 0; i < store.totalBlocks(); i++) {
      await store.putBlock(testRef(i), patternBlock(BLOCK, i));
    }
    await store.close();
    const grown = await FileBlockStore.open({ ...options, sizeBytes: BLOCK * 12 + 100 });
    assert.equal(grown.totalBlocks(), 12 - SPARE_SLOTS);
    for (let i = 4; i < 11; i++) await grown.putBlock(testRef(i), patternBlock(BLOCK, i));
    for (let i = 0; i < 11; i++) {
      assert.deepEqual(await grown.getBlock(testRef(i)), patternBlock(BLOCK, i));
    }
    await grown.close();
    const stat = await Deno.stat(`${options.dir}/data-current.blk`);
    assert.equal(stat.size, HEADER_BYTES + 12 * BLOCK);
  } finally {
    await cleanup();
  }
});

fileTest("shrinking drops a free tail and refuses to drop stored blocks", async () => {
  const { options, cleanup } = await tempStore({ sizeBytes: BLOCK * 10 });
  try {
    const store = await FileBlockStore.open(options);
    for (let i = 0; i < 4; i++) await store.putBlock(testRef(i), patternBlock(BLOCK, i));
    await store.close();
    await assert.rejects(
      FileBlockStore.open({ ...options, sizeBytes: BLOCK * 3 }),
      /cannot shrink block store current to 3 blocks: it holds 4 blocks up to slot 3 .* at least 5/,
    );
    const shrunk = await FileBlockStore.open({ ...options, sizeBytes: BLOCK * 6 });
    assert.equal(shrunk.totalBlocks(), 6 - SPARE_SLOTS);
    for (let i = 0; i < 4; i++) {
      assert.deepEqual(await shrunk.getBlock(testRef(i)), patternBlock(BLOCK, i));
    }
    await shrunk.close();
    assert.equal(
      (await Deno.stat(`${options.dir}/data-current.blk`)).size,
      HEADER_BYTES + 6 * BLOCK,
    );
  } finally {
    await cleanup();
  }
});

fileTest(
  "a shrink that would leave no spare slot is refused; the smallest size still replaces",
  async () => {
    const { options, cleanup } = await tempStore({ sizeBytes: BLOCK * 10 });
    try {
      const store = await FileBlockStore.open(options);
      for (let i = 0; i < 4; i++) await store.putBlock(testRef(i), patternBlock(BLOCK, i));
      await store.close();
      // Slots 0-3 hold the blocks: 4 slots would keep them all but leave no spare slot.
      await assert.rejects(FileBlockStore.open({ ...options, sizeBytes: BLOCK * 4 }), (error) => {
        assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
        assert.equal(
          error.message,
          "cannot shrink block store current to 4 blocks: it holds 4 blocks up to slot 3 and " +
            "keeps 1 slot spare for replacing blocks; keep a size of at least 5 blocks",
        );
        return true;
      });
      // The refused open changed nothing.
      const unchanged = await FileBlockStore.open(options);
      assert.equal(unchanged.totalBlocks(), 10 - SPARE_SLOTS);
      assert.equal(unchanged.usedBlocks(), 4);
      await unchanged.close();
      const smallest = await FileBlockStore.open({ ...options, sizeBytes: BLOCK * 5 });
      assert.equal(smallest.totalBlocks(), 4);
      assert.equal(smallest.usedBlocks(), 4);
      await rejectsWithCode(
        smallest.putBlock(testRef(9), patternBlock(BLOCK, 9)),
        ErrorCode.OutOfSpace,
      );
      for (let round = 0; round < 6; round++) {
        const data = patternBlock(BLOCK, 50 + round);
        await smallest.putBlock(testRef(round % 4), data);
        assert.deepEqual(await smallest.getBlock(testRef(round % 4)), data);
      }
      await smallest.close();
    } finally {
      await cleanup();
    }
  },
);

/** Copies the store's files as they are now (what a killed process leaves in the page cache). */
async function snapshotFiles(from: string, to: string): Promise<void> {
  // Every file of the store: data, map, sums and journal, as a process kill leaves them.
  for (const name of ["data", "map", "sums", "journal"].map((kind) => `${kind}-current.blk`)) {
    await Deno.copyFile(`${from}/${name}`, `${to}/${name}`);
  }
}

fileTest("after a crash mid-replace the newest verified copy wins", async () => {
  const { options, cleanup } = await tempStore();
  const crashed = await tempStore();
  try {
    const store = await FileBlockStore.open(options);
    await store.putBlock(testRef(1), patternBlock(BLOCK, 1));
    await store.flush();
    await store.putBlock(testRef(1), patternBlock(BLOCK, 2));
    // Not flushed: both entries of ref 1 are on disk (in the page cache) once written.
    await store.indexWritten();
    await snapshotFiles(options.dir, crashed.options.dir);
    await store.close();
    const newest = await FileBlockStore.open(crashed.options);
    assert.deepEqual(await newest.getBlock(testRef(1)), patternBlock(BLOCK, 2));
    assert.equal(newest.usedBlocks(), 1);
    await newest.close();
    // Same crash, but the new copy's bytes never reached the disk: the old copy comes back.
    await snapshotFiles(options.dir, crashed.options.dir);
    const store2 = await FileBlockStore.open(options);
    await store2.putBlock(testRef(1), patternBlock(BLOCK, 3));
    await store2.indexWritten();
    const slot = await slotOnDisk(store2.mapPath, testRef(1).key);
    await snapshotFiles(options.dir, crashed.options.dir);
    await store2.close();
    await patchFile(
      `${crashed.options.dir}/data-current.blk`,
      HEADER_BYTES + slot * BLOCK,
      new Uint8Array(64),
    );
    const fallback = await FileBlockStore.open(crashed.options);
    assert.deepEqual(await fallback.getBlock(testRef(1)), patternBlock(BLOCK, 2));
    assert.equal(fallback.usedBlocks(), 1);
    await fallback.close();
  } finally {
    await cleanup();
    await crashed.cleanup();
  }
});

fileTest(
  "a crash mid-replace of a damaged block leaves it damaged, not absent",
  async () => {
    const { options, cleanup } = await tempStore();
    const crashed = await tempStore();
    try {
      const store = await FileBlockStore.open(options);
      await store.putBlock(testRef(1), patternBlock(BLOCK, 1));
      await store.flush();
      const oldSlot = await slotOnDisk(store.mapPath, testRef(1).key);
      await store.putBlock(testRef(1), patternBlock(BLOCK, 2));
      await store.indexWritten();
      const newSlots = (await slotsOnDisk(store.mapPath, testRef(1).key))
        .filter((slot) => slot !== oldSlot);
      assert.equal(newSlots.length, 1);
      const newSlot = newSlots[0]!;
      await snapshotFiles(options.dir, crashed.options.dir);
      await store.close();
      // The flushed copy rotted, and the unflushed replacement's bytes never reached the disk.
      const dataPath = `${crashed.options.dir}/data-current.blk`;
      await patchFile(dataPath, HEADER_BYTES + oldSlot * BLOCK + 7, new Uint8Array([0xff ^ 1]));
      await patchFile(dataPath, HEADER_BYTES + newSlot * BLOCK, new Uint8Array(64));
      const reopened = await FileBlockStore.open(crashed.options);
      // Absent would read as zeros in a volume: the loss must stay visible.
      await rejectsWithCode(reopened.getBlock(testRef(1)), ErrorCode.BlockUnavailable);
      assert.equal(await reopened.hasBlock(testRef(1)), true);
      assert.equal(reopened.usedBlocks(), 1);
      await reopened.putBlock(testRef(1), patternBlock(BLOCK, 3));
      assert.deepEqual(await reopened.getBlock(testRef(1)), patternBlock(BLOCK, 3));
      await reopened.close();
    } finally {
      await cleanup();
      await crashed.cleanup();
    }
  },
);

fileTest("a delete after an unflushed replace leaves no older copy behind", async () => {
  const { options, cleanup } = await tempStore();
  const crashed = await tempStore();
  try {
    const store = await FileBlockStore.open(options);
    await store.putBlock(testRef(1), patternBlock(BLOCK, 1));
    await store.flush();
    await store.putBlock(testRef(1), patternBlock(BLOCK, 2));
    await store.indexWritten();
    await store.deleteBlock(testRef(1));
    await store.indexWritten();
    await snapshotFiles(options.dir, crashed.options.dir);
    await store.close();
    const reopened = await FileBlockStore.open(crashed.options);
    assert.equal(await reopened.hasBlock(testRef(1)), false);
    assert.equal(reopened.usedBlocks(), 0);
    await reopened.close();
  } finally {
    await cleanup();
    await crashed.cleanup();
  }
});

fileTest("replacing blocks in a full store recycles old slots through flushes", async () => {
  const { options, cleanup } = await tempStore({ sizeBytes: BLOCK * 4 });
  try {
    const store = await FileBlockStore.open(options);
    for (let i = 0; i < 3; i++) await store.putBlock(testRef(i), patternBlock(BLOCK, i));
    // Many concurrent replaces with one spare slot: each waits for a slot to retire.
    await Promise.all(
      Array.from(
        { length: 12 },
        (_, v) => store.putBlock(testRef(v % 3), patternBlock(BLOCK, 10 + v)),
      ),
    );
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await store.getBlock(testRef(i)), patternBlock(BLOCK, 19 + i));
    }
    await store.close();
    const reopened = await FileBlockStore.open(options);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await reopened.getBlock(testRef(i)), patternBlock(BLOCK, 19 + i));
    }
    await reopened.close();
  } finally {
    await cleanup();
  }
});

fileTest("a get racing a delete and slot reuse never returns the new bytes", async () => {
  const { options, cleanup } = await tempStore({ sizeBytes: BLOCK * 4 });
  try {
    const store = await FileBlockStore.open(options);
    for (let round = 0; round < 40; round++) {
      const old = patternBlock(BLOCK, 2 * round);
      const next = patternBlock(BLOCK, 2 * round + 1);
      await store.putBlock(testRef(1), old);
      const get = store.getBlock(testRef(1)).catch((error: unknown) => error);
      // The freed slot is the first one handed out again: ref 2 overwrites it while the get runs.
      await store.deleteBlock(testRef(1));
      const put = store.putBlock(testRef(2), next);
      const result = await get;
      await put;
      // Old bytes (read before the reuse) or not_exist (the retry saw the delete); nothing else.
      if (result instanceof Uint8Array) assert.deepEqual(result, old);
      else assert.ok(isTorusError(result, ErrorCode.NotExist), String(result));
      assert.deepEqual(await store.getBlock(testRef(2)), next);
      await store.deleteBlock(testRef(2));
    }
    await store.close();
  } finally {
    await cleanup();
  }
});

const modelSeed = testSeed();
Deno.test(`FileBlockStore: random operations match a Map model (seed=${modelSeed})`, async () => {
  const random = new SeededRandom(modelSeed);
  const { options, cleanup } = await tempStore({ sizeBytes: BLOCK * 40, blockSizeBytes: 512 });
  const size = 512;
  try {
    let store = await FileBlockStore.open({ ...options, sizeBytes: size * 40 });
    const model = new Map<number, number>();
    let version = 0;
    const pending: Promise<void>[] = [];
    for (let step = 0; step < 3000; step++) {
      const index = random.int(48);
      const roll = random.float();
      if (roll < 0.45) {
        const full = model.size >= store.totalBlocks() && !model.has(index);
        const seed = ++version;
        const put = store.putBlock(testRef(index), patternBlock(size, seed));
        if (full) {
          await rejectsWithCode(put, ErrorCode.OutOfSpace);
        } else {
          model.set(index, seed);
          pending.push(put);
        }
      } else if (roll < 0.6) {
        if (model.has(index)) {
          model.delete(index);
          pending.push(store.deleteBlock(testRef(index)));
        } else {
          await rejectsWithCode(store.deleteBlock(testRef(index)), ErrorCode.NotExist);
        }
      } else if (roll < 0.9) {
        await Promise.all(pending.splice(0));
        const seed = model.get(index);
        if (seed === undefined) {
          await rejectsWithCode(store.getBlock(testRef(index)), ErrorCode.NotExist);
        } else assert.deepEqual(await store.getBlock(testRef(index)), patternBlock(size, seed));
      } else if (roll < 0.97) {
        pending.push(store.flush());
      } else {
        await Promise.all(pending.splice(0));
        await store.close();
        store = await FileBlockStore.open({ ...options, sizeBytes: size * 40 });
      }
      if (step % 100 === 99) {
        await Promise.all(pending.splice(0));
        assert.equal(store.usedBlocks(), model.size);
      }
    }
    await Promise.all(pending.splice(0));
    for (const [index, seed] of model) {
      assert.deepEqual(await store.getBlock(testRef(index)), patternBlock(size, seed));
    }
    await store.close();
  } finally {
    await cleanup();
  }
});

fileTest(
  "a store of the most slots allowed opens at once and works; one more is refused",
  async () => {
    const { options, cleanup } = await tempStore({ blockSizeBytes: 512 });
    try {
      const sizeBytes = STORE_SLOTS_MAX * 512;
      await rejectsWithCode(
        FileBlockStore.open({ ...options, sizeBytes: sizeBytes + 512 }),
        ErrorCode.Invalid,
      );
      const store = await FileBlockStore.open({ ...options, sizeBytes });
      assert.equal(store.totalBlocks(), STORE_SLOTS_MAX - SPARE_SLOTS);
      for (let i = 0; i < 100; i++) await store.putBlock(testRef(i), patternBlock(512, i));
      await store.close();
      // Reopening reads the entries below the high-water mark, not the 1 GiB map.
      const reopened = await FileBlockStore.open({ ...options, sizeBytes });
      assert.equal(reopened.usedBlocks(), 100);
      assert.deepEqual(await reopened.getBlock(testRef(99)), patternBlock(512, 99));
      let refs = 0;
      for await (const _ of reopened.blockRefs()) refs++;
      assert.equal(refs, 100);
      await reopened.close();
    } finally {
      await cleanup();
    }
  },
);

fileTest("writes waiting for room in the journal fail when the store fails", async () => {
  const { options, cleanup } = await tempStore({ journalRegionBytes: 8 * (BLOCK + 64) });
  // Once armed, the journal's syncs hang until the test fails them: no flush ends, so no room
  // is made.
  let armed = false;
  const syncs: ((error: Error) => void)[] = [];
  const io = new HookedFileIo(new SysFileIo(), (path) => ({
    datasync: (file) => {
      if (!armed || !path.includes("/journal-")) return file.datasync();
      return new Promise<void>((_, reject) => syncs.push(reject));
    },
  }));
  const store = await FileBlockStore.open({ ...options, io });
  try {
    const ref = testRef(0);
    await store.putBlock(ref, new Uint8Array(BLOCK));
    armed = true;
    const writes = Array.from(
      { length: 12 },
      (_, i) => store.writeAt(ref, 0, new Uint8Array(BLOCK).fill(i)).then(() => "placed", String),
    );
    const flush = store.flush().then(() => "flushed", String);
    while (syncs.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    for (const fail of syncs) fail(new Error("EIO"));
    assert.match(await flush, /failed/);
    const timeout = new Promise<string>((resolve) => setTimeout(() => resolve("hung"), 5_000));
    const outcomes = await Promise.race([Promise.all(writes), timeout]);
    assert.notEqual(outcomes, "hung", "a write waiting for room never settled");
    assert.ok((outcomes as string[]).some((outcome) => /failed/.test(outcome)), String(outcomes));
  } finally {
    await store.close().catch(() => {});
    await cleanup();
  }
});
