import assert from "node:assert/strict";
import { assertSameBytes, type BlockRef, BlockType, SeededRandom, testSeed } from "../core/mod.ts";
import { MemoryBlockStore } from "../storage/mod.ts";
import { createVolume, nextGeneration, openReader, openVolume, readAll } from "./volume_fixture.ts";

const BLOCK = 16 * 1024;
const SECTOR = 4096;

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
      assertSameBytes(read, model.subarray(offset, offset + length), `seed ${seed} step ${step}`);
    }
  }
  assertSameBytes(await readAll(volume), model, `seed ${seed}`);
  for (const { generation, bytes } of sealed) {
    assertSameBytes(await readAll(await openReader(store, generation, sizeBytes)), bytes);
  }
  await volume.close();
  const reopened = await openVolume(store, volume.generation, sizeBytes);
  assertSameBytes(await readAll(reopened), model, `seed ${seed}: after close and reopen`);
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
  assertSameBytes(middle, expected);
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
  assertSameBytes(read, expected);
  await volume.close();
  assertSameBytes(
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
  assertSameBytes(await readAll(reader), expected);
  await Promise.all(work);
  await volume.flush();
  assertSameBytes(await readAll(reader), expected);
  await assert.rejects(reader.writeAt(), /read-only/);
  const now = await readAll(volume);
  assertSameBytes(now.subarray(5, 105), new Uint8Array(100).fill(2));
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

Deno.test("volume: a FLUSH of a 1 TiB volume writes a few KiB of block map, not the map", async () => {
  const bigBlock = 512 * 1024;
  const bytesByType = new Map<number, number>();
  const count = (ref: BlockRef, bytes: number) =>
    bytesByType.set(ref.type, (bytesByType.get(ref.type) ?? 0) + bytes);
  class MeteredStore extends MemoryBlockStore {
    override putBlock(ref: BlockRef, data: Uint8Array): Promise<void> {
      count(ref, data.length);
      return super.putBlock(ref, data);
    }
    override writeAt(ref: BlockRef, offsetBytes: number, data: Uint8Array): Promise<void> {
      count(ref, data.length);
      return super.writeAt(ref, offsetBytes, data);
    }
    override zeroAt(ref: BlockRef, offsetBytes: number, lengthBytes: number): Promise<void> {
      count(ref, lengthBytes);
      return super.zeroAt(ref, offsetBytes, lengthBytes);
    }
  }
  const store = new MeteredStore({ blockSizeBytes: bigBlock, totalBlocks: 400 });
  const TiB = 2 ** 40;
  const volume = await createVolume(store, { sizeBytes: TiB });
  const random = new SeededRandom(testSeed());
  const sector = new Uint8Array(SECTOR).fill(7);
  const offsets = Array.from({ length: 32 }, () => random.int(TiB / SECTOR) * SECTOR);
  // The first FLUSH allocates each touched block and its map chunk (a new chunk is a new block).
  for (const offset of offsets) await volume.writeAt(offset, sector);
  await volume.flush();
  // Later FLUSHes of writes to those blocks and to new blocks in those chunks: entries only.
  for (let round = 0; round < 3; round++) {
    bytesByType.clear();
    for (const offset of offsets) {
      await volume.writeAt(offset, sector);
      await volume.writeAt((offset + bigBlock * (1 + round)) % TiB, sector);
    }
    await volume.flush();
    const mapBytes = (bytesByType.get(BlockType.Map) ?? 0) +
      (bytesByType.get(BlockType.INode) ?? 0);
    const dataBytes = bytesByType.get(BlockType.Data) ?? 0;
    assert.ok(mapBytes <= 8 * 1024, `round ${round}: ${mapBytes} bytes of map and root written`);
    assert.equal(dataBytes, 64 * SECTOR, `round ${round}: only the data written is written`);
  }
  for (const offset of offsets) {
    const back = new Uint8Array(SECTOR);
    await volume.readAt(offset, back);
    assertSameBytes(back, sector);
  }
});

Deno.test("volume: a read done at once answers what readAt does, or declines", async () => {
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 40 });
  const volume = await createVolume(store, { sizeBytes: 4 * BLOCK });
  const data = new Uint8Array(BLOCK).map((_, i) => (i * 7) & 0xff);
  await volume.writeAt(BLOCK, data);
  const read = (offset: number, length: number) => {
    const into = new Uint8Array(length).fill(0xaa);
    return volume.readCachedAt(offset, into) ? into : null;
  };
  assert.deepEqual(read(BLOCK + 100, SECTOR), data.subarray(100, 100 + SECTOR));
  assert.deepEqual(read(2 * BLOCK, SECTOR), new Uint8Array(SECTOR), "never written: zeros");
  assert.equal(read(BLOCK - 1, 2), null, "two blocks");
  assert.equal(read(4 * BLOCK - 1, 2), null, "past the end");
  await volume.close();
  assert.equal(read(BLOCK, SECTOR), null, "closed");
});
