import assert from "node:assert/strict";
import { assertSameBytes, SeededRandom, testSeed } from "../core/mod.ts";
import { MemoryBlockStore } from "../storage/mod.ts";
import { BlockVolume } from "./volume.ts";
import { decodeRoot, encodeRoot, mapGeometry, rootRef } from "./volume_format.ts";
import { VolumeMap } from "./volume_map.ts";
import { dumpDevice, isAllZero, loadDevice, splitZeroRuns } from "./transfer.ts";

const BLOCK = 64 * 1024;

async function newVolume(sizeBytes: number): Promise<BlockVolume> {
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 1000 });
  const geometry = mapGeometry(BLOCK);
  const bytes = encodeRoot({ volume: 3, generation: 2, sizeBytes, parent: null }, geometry);
  await store.putBlock(rootRef(3, 2), bytes);
  const root = decodeRoot(bytes, { volume: 3, generation: 2 }, geometry);
  const map = new VolumeMap(store, root, geometry);
  return new BlockVolume({ store, geometry, map, sizeBytes, parent: null });
}

/** A sink that keeps what it got and counts the zeros it was spared. */
function memorySink() {
  const parts: Uint8Array[] = [];
  let zeroBytes = 0;
  return {
    sink: {
      write(data: Uint8Array) {
        parts.push(data.slice());
        return Promise.resolve();
      },
      zeros(length: number) {
        parts.push(new Uint8Array(length));
        zeroBytes += length;
        return Promise.resolve();
      },
    },
    bytes(): Uint8Array {
      const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const part of parts) {
        out.set(part, at);
        at += part.length;
      }
      return out;
    },
    zeroBytes: () => zeroBytes,
  };
}

function memorySource(bytes: Uint8Array, piece = 10_000) {
  let at = 0;
  return {
    read(into: Uint8Array): Promise<number> {
      const n = Math.min(into.length, piece, bytes.length - at);
      into.set(bytes.subarray(at, at + n));
      at += n;
      return Promise.resolve(n);
    },
  };
}

Deno.test("transfer: dump then load reproduces a sparse volume and skips its holes", async () => {
  const seed = testSeed();
  const random = new SeededRandom(seed);
  const size = 40 * BLOCK + 512;
  const source = await newVolume(size);
  const expected = new Uint8Array(size);
  for (const offset of [0, 7 * BLOCK + 5, 30 * BLOCK, size - 700]) {
    const data = random.bytes(Math.min(3000, size - offset));
    expected.set(data, offset);
    await source.writeAt(offset, data);
  }
  const progress: number[] = [];
  const out = memorySink();
  const dumped = await dumpDevice(source, out.sink, {
    chunkBytes: 4 * BLOCK,
    onProgress: (done) => progress.push(done),
  });
  assertSameBytes(out.bytes(), expected, `seed ${seed}`);
  assert.equal(dumped.totalBytes, size);
  // Five chunks hold data (the last write straddles into the final, short chunk).
  assert.ok(dumped.dataBytes <= 5 * 4 * BLOCK, "only chunks holding data were read");
  assert.ok(out.zeroBytes() >= size - 5 * 4 * BLOCK);
  assert.equal(progress.at(-1), size);
  const target = await newVolume(size);
  const loaded = await loadDevice(memorySource(out.bytes()), target, { chunkBytes: BLOCK });
  assert.equal(loaded.totalBytes, size);
  assert.ok(loaded.dataBytes <= 5 * 2 * BLOCK, "zero chunks were not written");
  const back = new Uint8Array(size);
  await target.readAt(0, back);
  assertSameBytes(back, expected);
});

Deno.test("transfer: an input longer than the volume fails, nothing beyond it is written", async () => {
  const target = await newVolume(BLOCK);
  await assert.rejects(
    loadDevice(memorySource(new Uint8Array(2 * BLOCK).fill(1)), target, { chunkBytes: BLOCK }),
    /the input is longer than the device \(65536 bytes\)/,
  );
});

Deno.test("transfer: isAllZero looks at every byte, aligned or not", () => {
  const bytes = new Uint8Array(1031);
  assert.ok(isAllZero(bytes));
  for (const at of [0, 3, 4, 1023, 1030]) {
    bytes[at] = 1;
    assert.equal(isAllZero(bytes), false, `byte ${at}`);
    assert.equal(isAllZero(bytes.subarray(1)), at === 0, `byte ${at}, unaligned view`);
    bytes[at] = 0;
  }
});

Deno.test("transfer: splitZeroRuns keeps every byte, aligned 4 KiB zero windows become lengths", () => {
  const seed = testSeed();
  const random = new SeededRandom(seed);
  const between = (low: number, high: number) => low + random.int(high - low + 1);
  for (let round = 0; round < 200; round++) {
    const bytes = new Uint8Array(between(0, 40_000));
    // Data in a few places, some of them a single byte at a window's edge.
    for (let i = between(0, 6); i > 0 && bytes.length > 0; i--) {
      const at = between(0, bytes.length - 1);
      bytes.fill(1 + between(0, 254), at, Math.min(bytes.length, at + between(1, 9000)));
    }
    const offset = between(0, 3) * 4096 + between(0, 1) * between(1, 4095);
    const pieces = splitZeroRuns(bytes, offset);
    const context = `seed ${seed}, round ${round}, ${bytes.length} bytes at ${offset}`;
    const rebuilt = new Uint8Array(bytes.length);
    let at = 0;
    let previousZero: boolean | null = null;
    for (const piece of pieces) {
      const zero = typeof piece === "number";
      assert.notEqual(zero, previousZero, `${context}: pieces of one kind are merged`);
      previousZero = zero;
      if (zero) {
        assert.ok(isAllZero(bytes.subarray(at, at + piece)), `${context}: a zero piece is zeros`);
        at += piece;
      } else {
        rebuilt.set(piece, at);
        at += piece.length;
      }
    }
    assert.equal(at, bytes.length, context);
    assertSameBytes(rebuilt, bytes, context);
    // Every data piece is made of aligned windows holding a non-zero byte (the ends may be cut).
    at = 0;
    for (const piece of pieces) {
      if (typeof piece === "number") {
        at += piece;
        continue;
      }
      for (let window = at; window < at + piece.length;) {
        const end = Math.min(at + piece.length, window + 4096 - ((offset + window) % 4096));
        assert.ok(!isAllZero(bytes.subarray(window, end)), `${context}: zeros at ${window} sent`);
        window = end;
      }
      at += piece.length;
    }
  }
});

Deno.test("transfer: a load stores only the 4 KiB windows that hold data", async () => {
  const size = 16 * BLOCK;
  const image = new Uint8Array(size);
  image.fill(7, BLOCK + 100, BLOCK + 3100); // inside one window
  image.fill(9, 5 * BLOCK + 3 * 4096, 5 * BLOCK + 4 * 4096 + 1); // one window and one byte
  image[15 * BLOCK + 4095] = 1; // the last byte of a window
  const target = await newVolume(size);
  // One chunk for the whole image: the zeros around the data are inside the chunk.
  const loaded = await loadDevice(memorySource(image), target, { chunkBytes: size });
  assert.equal(loaded.totalBytes, size);
  assert.equal(loaded.dataBytes, 4 * 4096, "only the windows holding data were written");
  const allocated = (await target.extents(0, size)).filter((extent) => !extent.zero)
    .map((extent) => [extent.offsetBytes / BLOCK, extent.lengthBytes / BLOCK]);
  assert.deepEqual(allocated, [[1, 1], [5, 1], [15, 1]], "blocks without data hold nothing");
  const back = new Uint8Array(size);
  await target.readAt(0, back);
  assertSameBytes(back, image);
});

Deno.test("transfer: a dump leaves holes for zero windows inside allocated blocks", async () => {
  const size = 4 * BLOCK;
  const source = await newVolume(size);
  const data = new Uint8Array(4096).fill(3);
  await source.writeAt(BLOCK + 8192, data); // block 1 is allocated; 60 KiB of it reads as zeros
  const out = memorySink();
  const dumped = await dumpDevice(source, out.sink);
  assert.equal(dumped.dataBytes, 4096);
  assert.equal(out.zeroBytes(), size - 4096);
  const expected = new Uint8Array(size);
  expected.set(data, BLOCK + 8192);
  assertSameBytes(out.bytes(), expected);
});
