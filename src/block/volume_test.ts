import assert from "node:assert/strict";
import { BlockType, crc32, SeededRandom, testSeed } from "../core/mod.ts";
import { type BlockStore, MemoryBlockStore } from "../storage/mod.ts";
import { CrashableStore, type CrashState } from "../../tests/support/crashable_store.ts";
import { BlockVolume } from "./volume.ts";
import { decodeRoot, encodeRoot, mapGeometry, rootRef } from "./volume_format.ts";
import { VolumeMap } from "./volume_map.ts";
import { VolumeReader } from "./volume_reader.ts";

const VOLUME = 5;
const BLOCK = 16 * 1024;
const SECTOR = 4096;

async function createVolume(
  store: BlockStore,
  options: { sizeBytes: number; generation?: number },
): Promise<BlockVolume> {
  const generation = options.generation ?? 2;
  const geometry = mapGeometry(store.blockSizeBytes);
  const root = encodeRoot(
    { volume: VOLUME, generation, sizeBytes: options.sizeBytes, parent: null },
    geometry,
  );
  await store.putBlock(rootRef(VOLUME, generation), root);
  await store.flush();
  return await openVolume(store, generation, options.sizeBytes);
}

async function loadMap(store: BlockStore, generation: number): Promise<VolumeMap> {
  const geometry = mapGeometry(store.blockSizeBytes);
  const bytes = await store.getBlock(rootRef(VOLUME, generation));
  return new VolumeMap(
    store,
    decodeRoot(bytes, { volume: VOLUME, generation }, geometry),
    geometry,
  );
}

async function openVolume(
  store: BlockStore,
  generation: number,
  sizeBytes: number,
): Promise<BlockVolume> {
  const map = await loadMap(store, generation);
  return new BlockVolume({ store, geometry: map.geometry, map, sizeBytes, parent: null });
}

async function openReader(
  store: BlockStore,
  generation: number,
  sizeBytes: number,
): Promise<VolumeReader> {
  return new VolumeReader({
    store,
    map: await loadMap(store, generation),
    sizeBytes,
    parent: null,
  });
}

async function readAll(device: { sizeBytes: number; readAt: BlockVolume["readAt"] }) {
  const bytes = new Uint8Array(device.sizeBytes);
  await device.readAt(0, bytes);
  return bytes;
}

/** Generation changes without a metadata service: the next number, nothing to publish. */
function nextGeneration(volume: BlockVolume): Promise<number> {
  return volume.changeGeneration((ending) =>
    Promise.resolve({ generation: ending + 1, commit: () => Promise.resolve() })
  );
}

Deno.test("volume: unaligned writes, trims and zeroes read back like a plain buffer", async () => {
  const seed = testSeed();
  const random = new SeededRandom(seed);
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 400 });
  const sizeBytes = 20 * BLOCK + 3 * 512;
  const volume = await createVolume(store, { sizeBytes });
  const model = new Uint8Array(sizeBytes);
  const sealed: { generation: number; bytes: Uint8Array }[] = [];
  for (let step = 0; step < 400; step++) {
    const offset = random.int(sizeBytes);
    const length = Math.min(random.int(BLOCK * 3) + 1, sizeBytes - offset);
    const choice = random.int(100);
    if (choice < 50) {
      const data = random.bytes(length);
      await volume.writeAt(offset, data);
      model.set(data, offset);
    } else if (choice < 60) {
      await volume.trim(offset, length);
      model.fill(0, offset, offset + length);
    } else if (choice < 70) {
      await volume.writeZeroes(offset, length, { noHole: random.chance(0.5) });
      model.fill(0, offset, offset + length);
    } else if (choice < 80) {
      await volume.flush();
    } else if (choice < 83) {
      sealed.push({ generation: await nextGeneration(volume), bytes: model.slice() });
    } else {
      const read = new Uint8Array(length);
      await volume.readAt(offset, read);
      assert.deepEqual(read, model.subarray(offset, offset + length), `seed ${seed} step ${step}`);
    }
  }
  assert.deepEqual(await readAll(volume), model, `seed ${seed}`);
  for (const { generation, bytes } of sealed) {
    assert.deepEqual(await readAll(await openReader(store, generation, sizeBytes)), bytes);
  }
  await volume.close();
  const reopened = await openVolume(store, volume.generation, sizeBytes);
  assert.deepEqual(await readAll(reopened), model, `seed ${seed}: after close and reopen`);
});

Deno.test("volume: a flush without map changes is one store flush", async () => {
  let flushes = 0;
  class CountingStore extends MemoryBlockStore {
    override flush(): Promise<void> {
      flushes++;
      return super.flush();
    }
  }
  const store = new CountingStore({ blockSizeBytes: BLOCK, totalBlocks: 100 });
  const volume = await createVolume(store, { sizeBytes: 8 * BLOCK });
  await volume.writeAt(0, new Uint8Array(SECTOR).fill(1));
  flushes = 0;
  await volume.flush();
  assert.equal(flushes, 3, "the first write allocated: data, map chunk, root");
  flushes = 0;
  for (let i = 0; i < 32; i++) await volume.writeAt((i % 4) * SECTOR, new Uint8Array(SECTOR));
  await volume.flush();
  assert.equal(flushes, 1, "writes into an existing block: one store flush");
  await volume.writeAt(BLOCK + 7, new Uint8Array(10).fill(2));
  flushes = 0;
  await volume.flush();
  assert.equal(flushes, 2, "a new block in an existing chunk: data, then the map entry");
});

Deno.test("volume: a whole-block trim frees the block at the next flush", async () => {
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 100 });
  const volume = await createVolume(store, { sizeBytes: 8 * BLOCK });
  await volume.writeAt(0, new Uint8Array(3 * BLOCK).fill(7));
  await volume.flush();
  const used = store.usedBlocks();
  await volume.trim(BLOCK, BLOCK);
  const middle = new Uint8Array(BLOCK);
  await volume.readAt(BLOCK, middle);
  assert.ok(middle.every((b) => b === 0), "a trim reads as zeros at once");
  await volume.flush();
  assert.equal(store.usedBlocks(), used - 1);
  // Written again after the trim: a fresh block, zeros around the write.
  await volume.writeAt(BLOCK + 100, new Uint8Array([1, 2, 3]));
  const expected = new Uint8Array(BLOCK);
  expected.set([1, 2, 3], 100);
  await volume.readAt(BLOCK, middle);
  assert.deepEqual(middle, expected);
});

Deno.test("volume: a write between a trim and its flush survives the flush", async () => {
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 100 });
  const volume = await createVolume(store, { sizeBytes: 8 * BLOCK });
  await volume.writeAt(0, new Uint8Array(BLOCK).fill(7));
  await volume.flush();
  await volume.trim(0, BLOCK);
  await volume.writeAt(10, new Uint8Array([9]));
  await volume.flush();
  const expected = new Uint8Array(BLOCK);
  expected[10] = 9;
  const read = new Uint8Array(BLOCK);
  await volume.readAt(0, read);
  assert.deepEqual(read, expected);
  await volume.close();
  assert.deepEqual(
    (await readAll(await openVolume(store, 2, 8 * BLOCK))).subarray(0, BLOCK),
    expected,
  );
});

Deno.test("volume: a sealed generation never changes, however the writer continues", async () => {
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 200 });
  const sizeBytes = 6 * BLOCK;
  const volume = await createVolume(store, { sizeBytes });
  await volume.writeAt(0, new Uint8Array(sizeBytes).fill(1));
  const sealed = await nextGeneration(volume);
  const expected = new Uint8Array(sizeBytes).fill(1);
  // In flight while the reader reads: partial writes (copy-up), whole blocks, trims.
  const work = [
    volume.writeAt(5, new Uint8Array(100).fill(2)),
    volume.writeAt(BLOCK, new Uint8Array(BLOCK).fill(3)),
    volume.trim(2 * BLOCK, 2 * BLOCK),
    volume.writeZeroes(4 * BLOCK + 1, 10, { noHole: true }),
  ];
  const reader = await openReader(store, sealed, sizeBytes);
  assert.deepEqual(await readAll(reader), expected);
  await Promise.all(work);
  await volume.flush();
  assert.deepEqual(await readAll(reader), expected);
  await assert.rejects(reader.writeAt(), /read-only/);
  const now = await readAll(volume);
  assert.deepEqual(now.subarray(5, 105), new Uint8Array(100).fill(2));
  assert.ok(now.subarray(2 * BLOCK, 4 * BLOCK).every((b) => b === 0));
});

Deno.test("volume: reads and writes outside the volume are invalid", async () => {
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 10 });
  const volume = await createVolume(store, { sizeBytes: 2 * BLOCK });
  await assert.rejects(volume.readAt(2 * BLOCK - 1, new Uint8Array(2)), /outside the volume/);
  await assert.rejects(volume.writeAt(-1, new Uint8Array(1)), /outside the volume/);
  await assert.rejects(volume.trim(0, 2 * BLOCK + 1), /outside the volume/);
  await assert.rejects(volume.writeAt(0.5, new Uint8Array(1)), /outside the volume/);
});

Deno.test("volume: extents report never-written and trimmed ranges as zero", async () => {
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 10 });
  const volume = await createVolume(store, { sizeBytes: 4 * BLOCK });
  await volume.writeAt(BLOCK + 3, new Uint8Array([1]));
  assert.deepEqual(await volume.extents(0, 4 * BLOCK), [
    { offsetBytes: 0, lengthBytes: BLOCK, zero: true },
    { offsetBytes: BLOCK, lengthBytes: BLOCK, zero: false },
    { offsetBytes: 2 * BLOCK, lengthBytes: 2 * BLOCK, zero: true },
  ]);
  await volume.trim(BLOCK, BLOCK);
  await volume.flush();
  assert.deepEqual(await volume.extents(0, 4 * BLOCK), [
    { offsetBytes: 0, lengthBytes: 4 * BLOCK, zero: true },
  ]);
});

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
    assert.deepEqual(bytes.subarray(0, SECTOR), first);
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
  assert.deepEqual(read, expected);
  await reopened.writeAt(BLOCK + SECTOR, new Uint8Array(SECTOR).fill(3));
  expected.fill(3, SECTOR, 2 * SECTOR);
  await reopened.readAt(BLOCK, read);
  assert.deepEqual(read, expected, "bytes of the lost write came back");
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
      assert.deepEqual(await readAll(reader), snapshot.bytes, `${where}: a snapshot changed`);
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
    assert.deepEqual(await readAll(reopened), bytes, `${where}: writes after the crash`);
  }
});
