import assert from "node:assert/strict";
import { assertSameBytes, BlockType, crc32, SeededRandom, testSeed } from "../../src/core/mod.ts";
import type { BlockVolume } from "../../src/block/mod.ts";
import { CrashableStore, type CrashState } from "../support/crashable_store.ts";
import {
  createVolume,
  nextGeneration,
  openReader,
  openVolume,
  readAll,
} from "../../src/block/volume_fixture.ts";

const BLOCK = 16 * 1024;
const SECTOR = 4096;

/**
 * Holds a flush open in its first phase while `during` runs, then lets it finish and flushes once
 * more; at every map or root write, cuts power so that every unflushed map and root write survives
 * and no data write does (the worst case for an entry written too early). Returns the cuts.
 */
async function cutsAroundHeldFlush(
  store: CrashableStore,
  volume: BlockVolume,
  during: () => Promise<void>,
): Promise<CrashState[]> {
  const cuts: CrashState[] = [];
  store.onOperation = (ref) => {
    if (ref.type !== BlockType.Data) {
      cuts.push(store.crashStateKeeping((kept) => kept.type !== BlockType.Data));
    }
  };
  let release!: () => void;
  store.flushGate = new Promise<void>((resolve) => release = resolve);
  const flushing = volume.flush();
  await new Promise((resolve) => setTimeout(resolve, 0));
  await during();
  store.flushGate = null;
  release();
  await flushing;
  await volume.flush();
  store.onOperation = null;
  return cuts;
}

Deno.test("volume: no map entry becomes durable before the data it names", async () => {
  const options = { blockSizeBytes: BLOCK, totalBlocks: 100 };
  const store = new CrashableStore(options);
  const volume = await createVolume(store, { sizeBytes: 8 * BLOCK });
  const first = new Uint8Array(SECTOR).fill(1);
  const second = new Uint8Array(SECTOR).fill(2);
  await volume.writeAt(0, first);
  await volume.flush();
  // A block allocated while a flush is in its first phase.
  const cuts = await cutsAroundHeldFlush(store, volume, () => volume.writeAt(2 * BLOCK, second));
  assert.ok(cuts.length > 0, "the second flush wrote the new map entry");
  for (const cut of cuts) {
    const reopened = await openVolume(await CrashableStore.restore(cut, options), 2, 8 * BLOCK);
    const bytes = await readAll(reopened);
    assertSameBytes(bytes.subarray(0, SECTOR), first);
    const block = bytes.subarray(2 * BLOCK, 2 * BLOCK + SECTOR);
    assert.ok(block.every((b) => b === 0) || block.every((b) => b === 2));
  }
});

for (const chunkInGeneration of [false, true]) {
  const how = chunkInGeneration ? "in place" : "in a copied chunk";
  Deno.test(`volume: an entry changed again during a flush is written with its older value (${how})`, async () => {
    const options = { blockSizeBytes: BLOCK, totalBlocks: 100 };
    const store = new CrashableStore(options);
    const volume = await createVolume(store, { sizeBytes: 8 * BLOCK });
    await volume.writeAt(0, new Uint8Array(BLOCK).fill(1));
    await nextGeneration(volume); // block 0 now belongs to a sealed generation
    if (chunkInGeneration) {
      // Another block of the same chunk changes first, so the chunk is copied into generation 3.
      await volume.writeAt(3 * BLOCK, new Uint8Array(SECTOR).fill(5));
      await volume.flush();
    }
    await volume.trim(0, BLOCK); // entry: generation 2 -> zero (taken by the next flush)
    // While that flush is in its first phase, block 0 is written again: entry zero -> 3.
    const cuts = await cutsAroundHeldFlush(
      store,
      volume,
      () => volume.writeAt(0, new Uint8Array(SECTOR).fill(4)),
    );
    assert.ok(cuts.length > 0);
    for (const cut of cuts) {
      const reopened = await openVolume(await CrashableStore.restore(cut, options), 3, 8 * BLOCK);
      const sector = new Uint8Array(SECTOR);
      await reopened.readAt(0, sector);
      assert.ok(sector.every((b) => b === 0 || b === 1) || sector.every((b) => b === 4));
    }
  });
}

Deno.test("volume: a block allocated again never shows what an unflushed life left", async () => {
  const options = { blockSizeBytes: BLOCK, totalBlocks: 100 };
  const store = new CrashableStore(options);
  const volume = await createVolume(store, { sizeBytes: 8 * BLOCK });
  await volume.writeAt(BLOCK, new Uint8Array(SECTOR).fill(9));
  // Power cut: the data write survives, the map never heard of it.
  const cut = store.crashStateKeeping((ref) => ref.type === BlockType.Data);
  const reopened = await openVolume(await CrashableStore.restore(cut, options), 2, 8 * BLOCK);
  const expected = new Uint8Array(BLOCK);
  const read = new Uint8Array(BLOCK);
  await reopened.readAt(BLOCK, read);
  assertSameBytes(read, expected);
  await reopened.writeAt(BLOCK + SECTOR, new Uint8Array(SECTOR).fill(3));
  expected.fill(3, SECTOR, 2 * SECTOR);
  await reopened.readAt(BLOCK, read);
  assertSameBytes(read, expected, "bytes of the lost write came back");
});

/**
 * What each 4 KiB sector may hold after a power cut: its content as of the last completed flush
 * (the last write that resolved before that flush started) or that of any later write. Writes in
 * flight at the same time touch different sectors, so each sector's writes are ordered.
 */
class SectorModel {
  readonly current: Uint8Array;
  /** Per sector: writes since the durable one, oldest first; [0] is the durable one. */
  readonly #history: { seq: number; crc: number }[][];
  readonly #lastResolved: number[];
  #seq = 0;

  constructor(sizeBytes: number) {
    this.current = new Uint8Array(sizeBytes);
    const zero = crc32(new Uint8Array(SECTOR));
    this.#history = Array.from({ length: sizeBytes / SECTOR }, () => [{ seq: 0, crc: zero }]);
    this.#lastResolved = Array.from({ length: sizeBytes / SECTOR }, () => 0);
  }

  /** Records a write issued now; returns what to call when it resolves. */
  issue(firstSector: number, data: Uint8Array): () => void {
    const seq = ++this.#seq;
    this.current.set(data, firstSector * SECTOR);
    const sectors = data.length / SECTOR;
    for (let s = firstSector; s < firstSector + sectors; s++) {
      const crc = crc32(this.current.subarray(s * SECTOR, (s + 1) * SECTOR));
      this.#history[s]!.push({ seq, crc });
    }
    return () => {
      for (let s = firstSector; s < firstSector + sectors; s++) this.#lastResolved[s] = seq;
    };
  }

  /** Records a flush starting now; returns what to call when it resolves. */
  flushStarts(): () => void {
    const covered = this.#lastResolved.slice();
    return () => {
      covered.forEach((seq, s) => {
        const history = this.#history[s]!;
        const at = history.findLastIndex((write) => write.seq <= seq);
        this.#history[s] = history.slice(at);
      });
    };
  }

  possible(): Set<number>[] {
    return this.#history.map((writes) => new Set(writes.map((write) => write.crc)));
  }
}

interface CrashPoint {
  state: CrashState;
  possible: Set<number>[];
  generation: number;
  sealed: { generation: number; bytes: Uint8Array }[];
}

Deno.test("volume: after a power cut at any moment, flushed data is exact and the rest is old or new", async () => {
  const seed = testSeed();
  const random = new SeededRandom(seed);
  const sizeBytes = 12 * BLOCK;
  const sectors = sizeBytes / SECTOR;
  const storeOptions = { blockSizeBytes: BLOCK, totalBlocks: 400 };
  for (let round = 0; round < 50; round++) {
    const where = `seed ${seed} round ${round}`;
    const store = new CrashableStore({ ...storeOptions, delays: random });
    const volume = await createVolume(store, { sizeBytes });
    const model = new SectorModel(sizeBytes);
    let published = volume.generation;
    const sealed: { generation: number; bytes: Uint8Array }[] = [];
    const crashAt = store.opCount + 1 + random.int(120);
    let crash: CrashPoint | null = null;
    store.onOperation = () => {
      if (crash !== null || store.opCount < crashAt) return;
      crash = {
        state: store.crashState(random),
        possible: model.possible(),
        generation: published,
        sealed: [...sealed],
      };
    };
    const busy = new Set<number>();
    const inFlight = new Set<Promise<void>>();
    const track = (work: Promise<void>) => {
      inFlight.add(work);
      work.finally(() => inFlight.delete(work));
    };
    for (let step = 0; step < 80 && crash === null; step++) {
      const first = random.int(sectors);
      const count = Math.min(1 + random.int(8), sectors - first);
      const range = Array.from({ length: count }, (_, k) => first + k);
      const choice = random.int(12);
      if (choice < 8 && range.every((s) => !busy.has(s))) {
        const trim = choice >= 6;
        const data = trim ? new Uint8Array(count * SECTOR) : random.bytes(count * SECTOR);
        const resolved = model.issue(first, data);
        range.forEach((s) => busy.add(s));
        const op = trim
          ? volume.trim(first * SECTOR, data.length)
          : volume.writeAt(first * SECTOR, data);
        track(op.then(() => {
          resolved();
          range.forEach((s) => busy.delete(s));
        }));
      } else if (choice < 10) {
        const done = model.flushStarts();
        track(volume.flush().then(done));
      } else if (choice < 11) {
        // A snapshot: everything resolved so far, exactly.
        await Promise.all(inFlight);
        const bytes = model.current.slice();
        const generation = await volume.changeGeneration((ending) =>
          Promise.resolve({
            generation: ending + 1,
            commit: () => {
              published = ending + 1;
              sealed.push({ generation: ending, bytes });
              return Promise.resolve();
            },
          })
        );
        assert.ok(generation > 0);
      } else {
        await Promise.race([...inFlight, Promise.resolve()]);
      }
      if (inFlight.size > 6) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (crash === null) continue;
    const point = crash as CrashPoint;
    const restored = await CrashableStore.restore(point.state, storeOptions);
    for (const snapshot of point.sealed) {
      const reader = await openReader(restored, snapshot.generation, sizeBytes);
      assertSameBytes(await readAll(reader), snapshot.bytes, `${where}: a snapshot changed`);
    }
    const reopened = await openVolume(restored, point.generation, sizeBytes);
    const bytes = await readAll(reopened);
    for (let s = 0; s < sectors; s++) {
      const found = crc32(bytes.subarray(s * SECTOR, (s + 1) * SECTOR));
      assert.ok(point.possible[s]!.has(found), `${where}: sector ${s} holds data no write left`);
    }
    // Writing on after the crash must not bring back bytes the crash dropped.
    for (let k = 0; k < 20; k++) {
      const offset = random.int(sectors) * SECTOR;
      const data = random.bytes(1 + random.int(SECTOR));
      bytes.set(data, offset);
      await reopened.writeAt(offset, data);
    }
    await reopened.flush();
    assertSameBytes(await readAll(reopened), bytes, `${where}: writes after the crash`);
  }
});
