/**
 * Power loss at the moments each of the file engine's syncs exists for. power_loss_test.ts cuts
 * the power at random points of a random workload; the situations here are too narrow for that to
 * reach often, so each is set up step by step and only the cut is random: every seed keeps,
 * drops or tears a different subset of the writes since the last syncs. Each test says which
 * sync it guards (removing that sync makes it fail within a few seeds).
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom, testSeed } from "../../src/core/mod.ts";
import { FileBlockStore, type FileIo, PowerLossFileIo, SysFileIo } from "../../src/storage/mod.ts";
import { encodeHighWaterMark, HWM_RECORD_OFFSETS } from "../../src/storage/file_format.ts";
import { blockOf, keyRef, opOf } from "./crash_workload.ts";

const BLOCK_BYTES = 4096;
/** 24 slots: the high-water mark moves in steps of 8. */
const SLOTS = 24;
/** Cuts per scenario. */
const SEEDS = 40;
const ABSENT = -1;

function openStore(dir: string, io?: FileIo): Promise<FileBlockStore> {
  return FileBlockStore.open({
    dir,
    blockSizeBytes: BLOCK_BYTES,
    sizeBytes: SLOTS * BLOCK_BYTES,
    ...(io === undefined ? {} : { io }),
  });
}

/** The op whose whole block `key` holds, or ABSENT (a torn copy is dropped: absent too). */
async function stateOf(store: FileBlockStore, key: number): Promise<number> {
  try {
    const block = await store.getBlock(keyRef(key));
    assert.deepEqual(block, blockOf(opOf(block)), `key ${key} holds bytes no put wrote`);
    return opOf(block);
  } catch (error) {
    if (isTorusError(error, ErrorCode.NotExist)) return ABSENT;
    if (isTorusError(error, ErrorCode.BlockUnavailable)) return ABSENT;
    throw error;
  }
}

/** Deletes key 1, waits for the map writer, cuts the power: what the reopened store shows. */
async function deleteThenCut(
  store: FileBlockStore,
  io: PowerLossFileIo,
  dir: string,
): Promise<number> {
  await store.deleteBlock(keyRef(1));
  await store.indexWritten();
  await io.cut();
  const reopened = await openStore(dir);
  const state = await stateOf(reopened, 1);
  await reopened.close();
  return state;
}

/** Runs `scenario` once per seed in a fresh copy of `template` (or an empty dir). */
async function forEachSeed(
  template: string | null,
  scenario: (dir: string, io: PowerLossFileIo, seed: number) => Promise<void>,
): Promise<void> {
  const first = testSeed();
  for (let i = 0; i < SEEDS; i++) {
    const seed = (first + i) >>> 0;
    const dir = await Deno.makeTempDir({ prefix: "torus-power-scenario-" });
    const io = new PowerLossFileIo(new SysFileIo(), { random: new SeededRandom(seed) });
    try {
      if (template !== null) {
        for await (const entry of Deno.readDir(template)) {
          await Deno.copyFile(`${template}/${entry.name}`, `${dir}/${entry.name}`);
        }
      }
      await scenario(dir, io, seed);
    } finally {
      await io.cut();
      await Deno.remove(dir, { recursive: true });
    }
  }
}

Deno.test("power loss: a retired copy stays gone when its replacement is deleted (map sync after retiring)", async () => {
  await forEachSeed(null, async (dir, io, seed) => {
    const store = await openStore(dir, io);
    await store.putBlock(keyRef(1), blockOf(101));
    await store.flush();
    await store.putBlock(keyRef(1), blockOf(201));
    // Covers 201 and retires the slot of 101: its entry is zeroed, durably, before reuse.
    await store.flush();
    const state = await deleteThenCut(store, io, dir);
    assert.ok([201, ABSENT].includes(state), `seed ${seed}: key 1 came back as op ${state}`);
  });
});

Deno.test("power loss: a deleted ref's old copy keeps its entry until a flush retires it (Dead)", async () => {
  await forEachSeed(null, async (dir, io, seed) => {
    const store = await openStore(dir, io);
    // Created by a range write: its creation and record stay in the journal (no checkpoint).
    await store.writeAt(keyRef(1), 0, blockOf(50));
    await store.flush();
    await store.putBlock(keyRef(1), blockOf(101));
    await store.flush();
    // 201 replaces 101 and is deleted, with no flush: 101's entry is the durable state. Zeroed
    // at the delete, a cut that also took 201's entry and the delete left no copy, and replay
    // made the block of op 50 again.
    await store.putBlock(keyRef(1), blockOf(201));
    const state = await deleteThenCut(store, io, dir);
    assert.ok([101, 201, ABSENT].includes(state), `seed ${seed}: key 1 came back as op ${state}`);
  });
});

Deno.test("power loss: a superseded copy cleared at open stays gone (map sync after clearing)", async () => {
  // A store whose map holds two entries of key 1 (a kill during a replace, before its flush).
  const template = await Deno.makeTempDir({ prefix: "torus-power-template-" });
  try {
    const store = await openStore(template);
    await store.putBlock(keyRef(1), blockOf(101));
    await store.flush();
    await store.putBlock(keyRef(1), blockOf(201));
    await store.indexWritten();
    const killed = await Deno.makeTempDir({ prefix: "torus-power-template-" });
    for (const name of ["data-current.blk", "map-current.blk"]) {
      await Deno.copyFile(`${template}/${name}`, `${killed}/${name}`);
    }
    await store.close();
    await forEachSeed(killed, async (dir, io, seed) => {
      // Opening keeps 201 and zeroes the entry of 101; then 201 is deleted.
      const opened = await openStore(dir, io);
      assert.equal(await stateOf(opened, 1), 201);
      const state = await deleteThenCut(opened, io, dir);
      assert.ok([201, ABSENT].includes(state), `seed ${seed}: key 1 came back as op ${state}`);
    });
    await Deno.remove(killed, { recursive: true });
  } finally {
    await Deno.remove(template, { recursive: true });
  }
});

Deno.test("power loss: entries above the high-water mark never come back (map sync before a raise)", async () => {
  // Keys 0-11 in slots 0-11, but a high-water mark of 8: the state a power cut leaves when a
  // raise's entries became durable and its record did not. Keys 8-11 are lost (never flushed).
  const template = await Deno.makeTempDir({ prefix: "torus-power-template-" });
  try {
    const store = await openStore(template);
    for (let key = 0; key < 12; key++) await store.putBlock(keyRef(key), blockOf(100 + key));
    await store.close();
    await lowerHighWaterMark(`${template}/map-current.blk`, 8);
    await forEachSeed(template, async (dir, io, seed) => {
      const opened = await openStore(dir, io);
      for (let key = 8; key < 12; key++) assert.equal(await stateOf(opened, key), ABSENT);
      // The next put takes slot 8 and raises the mark over the stale entries of slots 9-11.
      await opened.putBlock(keyRef(20), blockOf(120));
      await opened.indexWritten();
      await io.cut();
      const reopened = await openStore(dir);
      for (let key = 9; key < 12; key++) {
        const state = await stateOf(reopened, key);
        assert.equal(state, ABSENT, `seed ${seed}: lost key ${key} came back as op ${state}`);
      }
      for (let key = 0; key < 8; key++) assert.equal(await stateOf(reopened, key), 100 + key);
      await reopened.close();
    });
  } finally {
    await Deno.remove(template, { recursive: true });
  }
});

/** Writes a newest high-water mark record of `slots` into a map file. */
async function lowerHighWaterMark(mapPath: string, slots: number): Promise<void> {
  using file = await Deno.open(mapPath, { read: true, write: true });
  const record = encodeHighWaterMark({ sequence: 1_000, slots });
  await file.seek(HWM_RECORD_OFFSETS[1_000 % HWM_RECORD_OFFSETS.length]!, Deno.SeekMode.Start);
  await file.write(record);
}
