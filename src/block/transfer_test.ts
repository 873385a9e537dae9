import assert from "node:assert/strict";
import { assertSameBytes, SeededRandom, testSeed } from "../core/mod.ts";
import { MemoryBlockStore } from "../storage/mod.ts";
import { BlockVolume } from "./volume.ts";
import { decodeRoot, encodeRoot, mapGeometry, rootRef } from "./volume_format.ts";
import { VolumeMap } from "./volume_map.ts";
import { dumpDevice, isAllZero, loadDevice } from "./transfer.ts";

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
