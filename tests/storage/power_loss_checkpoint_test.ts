/**
 * Range writes applied in place stay safe across journal checkpoints. A FLUSH makes range
 * records durable by syncing the journal only; their in-place copies (data and sums) are made
 * durable by the checkpoint that lets the journal reuse their space. The test writes known data
 * into every sector of a few blocks with range writes and flushes, then writes over 4 MiB of
 * other records (more than the 4 MiB journal of this store: appends wait for room, so at least
 * one checkpoint has moved past the first records), cuts the power (unsynced writes kept,
 * dropped or torn) and reopens: every flushed byte must read back exactly. It fails when the
 * checkpoint does not sync the slots and sums (seen with those two datasyncs removed).
 * A failing seed replays: `SEED=<seed> deno task test -- tests/storage/power_loss_checkpoint_test.ts`.
 */

import assert from "node:assert/strict";
import { BlockRef, SeededRandom, testSeed } from "../../src/core/mod.ts";
import { FileBlockStore, PowerLossFileIo, SysFileIo } from "../../src/storage/mod.ts";

const SECTOR = 4096;
const BLOCK_BYTES = 4 * SECTOR;
const SLOTS = 16;
const KEYS = 6;
const SCRATCH_KEY = 15;
/** Bytes of records written after the first ones: more than the whole journal. */
const FILLER_BYTES = 5 * 1024 * 1024;
const SEEDS = 3;

function keyRef(key: number): BlockRef {
  return new BlockRef({ volume: 3, inode: 7n, index: BigInt(key) });
}

async function open(dir: string, io: PowerLossFileIo | null): Promise<FileBlockStore> {
  return await FileBlockStore.open({
    dir,
    blockSizeBytes: BLOCK_BYTES,
    sizeBytes: SLOTS * BLOCK_BYTES,
    ...(io === null ? {} : { io, clock: io.clock }),
  });
}

/** Known bytes in every sector of every key, one range write per sector, then a flush. */
async function writeKnown(store: FileBlockStore, random: SeededRandom): Promise<Uint8Array[]> {
  const blocks = Array.from({ length: KEYS }, () => random.bytes(BLOCK_BYTES));
  const writes: Promise<void>[] = [];
  for (let key = 0; key < KEYS; key++) {
    for (let offset = 0; offset < BLOCK_BYTES; offset += SECTOR) {
      const data = blocks[key]!.subarray(offset, offset + SECTOR);
      writes.push(store.writeAt(keyRef(key), offset, data));
    }
  }
  await Promise.all(writes);
  await store.flush();
  return blocks;
}

/** Over a journal's worth of range records to another key, flushed as they go. */
async function fillJournal(store: FileBlockStore, random: SeededRandom): Promise<void> {
  for (let written = 0; written < FILLER_BYTES; written += BLOCK_BYTES) {
    await store.writeAt(keyRef(SCRATCH_KEY), 0, random.bytes(BLOCK_BYTES));
    if (random.chance(0.25)) await store.flush();
  }
  await store.flush();
}

async function runSeed(seed: number): Promise<void> {
  const random = new SeededRandom(seed);
  const dir = await Deno.makeTempDir({ prefix: "torus-power-checkpoint-" });
  const io = new PowerLossFileIo(new SysFileIo(), { random: new SeededRandom(random.nextU32()) });
  try {
    const store = await open(dir, io);
    const blocks = await writeKnown(store, random);
    await fillJournal(store, random);
    // Let the applier and the checkpoint that follow the last flush run for a while.
    await io.ran(random.int(40));
    const report = await io.cut();
    await store.close().catch(() => {});
    const reopened = await open(dir, null);
    try {
      for (let key = 0; key < KEYS; key++) {
        const got = await reopened.getBlock(keyRef(key));
        assert.ok(
          got.every((byte, i) => byte === blocks[key]![i]),
          `seed ${seed}: flushed block ${key} changed after a power cut ` +
            `(${report.writesDropped} writes dropped, ${report.writesTorn} torn)`,
        );
      }
    } finally {
      await reopened.close();
    }
  } finally {
    await io.cut();
    await Deno.remove(dir, { recursive: true });
  }
}

const firstSeed = testSeed();
for (let i = 0; i < SEEDS; i++) {
  const seed = (firstSeed + i) >>> 0;
  Deno.test(
    `FileBlockStore: range writes applied before a checkpoint survive a power cut (seed=${seed})`,
    () => runSeed(seed),
  );
}
