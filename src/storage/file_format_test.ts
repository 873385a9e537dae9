/** The file engine's on-disk codecs: round trips; garbage, truncated and oversized input. */

import assert from "node:assert/strict";
import { BlockRef, crc32c, SeededRandom, testSeed } from "../core/mod.ts";
import {
  decodeEntry,
  decodeHeader,
  decodeHighWaterMark,
  encodeEntry,
  encodeHeader,
  encodeHighWaterMark,
  ENTRY_BYTES,
  EntryBuffer,
  EntryState,
  FileMagic,
  HEADER_BYTES,
  HWM_RECORD_OFFSETS,
  type IndexEntry,
  smallCrc32c,
} from "./file_format.ts";

const storeId = new Uint8Array(16).fill(7);
const header = { magic: FileMagic.Map, blockSizeBytes: 524288, slotCount: 1000, storeId };
const entry: IndexEntry = {
  ref: new BlockRef({ type: 1, volume: 2 ** 40 - 1, inode: 2n ** 64n - 1n, index: 5n }),
  generation: 2 ** 53 - 1,
  slot: 12,
  crc32: 0xdeadbeef,
};

Deno.test("file format: a header round-trips", () => {
  const page = encodeHeader(header);
  assert.equal(page.length, HEADER_BYTES);
  assert.deepEqual(decodeHeader(page, FileMagic.Map, "m"), { ...header, version: 2 });
  // Version 1 (no high-water mark) is still read.
  const old = encodeHeader({ ...header, version: 1 });
  assert.equal(decodeHeader(old, FileMagic.Map, "m").version, 1);
  assert.throws(
    () => decodeHeader(encodeHeader({ ...header, version: 3 }), FileMagic.Map, "m"),
    /format version 3; this torus reads versions 1 and 2/,
  );
});

Deno.test("file format: truncated, oversized-count and garbage headers are refused", () => {
  const page = encodeHeader(header);
  assert.throws(() => decodeHeader(page.subarray(0, 100), FileMagic.Map, "m"), /too short/);
  assert.throws(() => decodeHeader(new Uint8Array(0), FileMagic.Map, "m"), /not a torus store/);
  assert.throws(() => decodeHeader(page, FileMagic.Data, "m"), /TORUSMAP file where a TORUSDAT/);
  const huge = page.slice();
  new DataView(huge.buffer).setBigUint64(16, 2n ** 63n, true);
  assert.throws(() => decodeHeader(huge, FileMagic.Map, "m"), /damaged header/);
  const random = new SeededRandom(1);
  for (let i = 0; i < 100; i++) {
    const garbage = random.bytes(HEADER_BYTES);
    garbage.set(page.subarray(0, 8)); // right magic, garbage after it
    assert.throws(() => decodeHeader(garbage, FileMagic.Map, "m"));
  }
});

Deno.test("file format: an entry round-trips at any offset", () => {
  const bytes = new Uint8Array(ENTRY_BYTES * 3);
  encodeEntry(entry, bytes, ENTRY_BYTES);
  const decoded = decodeEntry(bytes, ENTRY_BYTES, 12);
  assert.equal(decoded.state, EntryState.Used);
  if (decoded.state !== EntryState.Used) return;
  assert.ok(decoded.entry.ref.equals(entry.ref));
  assert.equal(decoded.entry.generation, entry.generation);
  assert.equal(decoded.entry.crc32, entry.crc32);
  assert.equal(decodeEntry(bytes, 0, 11).state, EntryState.Free);
});

Deno.test("file format: an entry read at another slot's position is damaged", () => {
  const bytes = new Uint8Array(ENTRY_BYTES);
  encodeEntry(entry, bytes);
  const decoded = decodeEntry(bytes, 0, 13);
  assert.equal(decoded.state, EntryState.Damaged);
});

const seed = testSeed();
Deno.test(`file format: every single-bit flip and garbage entry is damaged (seed=${seed})`, () => {
  const bytes = new Uint8Array(ENTRY_BYTES);
  encodeEntry(entry, bytes);
  for (let bit = 0; bit < ENTRY_BYTES * 8; bit++) {
    const flipped = bytes.slice();
    flipped[bit >> 3] = flipped[bit >> 3]! ^ (1 << (bit & 7));
    assert.equal(decodeEntry(flipped, 0, 12).state, EntryState.Damaged, `bit ${bit}`);
  }
  const random = new SeededRandom(seed);
  for (let i = 0; i < 1000; i++) {
    // A torn entry: a random prefix of the new entry over random old bytes.
    const torn = random.bytes(ENTRY_BYTES);
    torn.set(bytes.subarray(0, random.int(ENTRY_BYTES)));
    // Random old bytes equal to the new ones make a whole entry, not a torn one.
    if (torn.every((value, j) => value === bytes[j])) continue;
    assert.notEqual(decodeEntry(torn, 0, 12).state, EntryState.Used);
  }
});

Deno.test("file format: EntryBuffer encodes and checks entries exactly as the codec", () => {
  const source = {
    refWords: new Uint32Array(13 * 6),
    generations: new Float64Array(13),
    crcs: new Uint32Array(13),
  };
  entry.ref.writeTo(new Uint8Array(source.refWords.buffer), 12 * 24);
  source.generations[12] = entry.generation;
  source.crcs[12] = entry.crc32;
  const buffer = new EntryBuffer(3, source);
  buffer.encodeSlot(1, 12);
  const expected = new Uint8Array(ENTRY_BYTES);
  encodeEntry(entry, expected);
  assert.deepEqual(buffer.bytes.subarray(ENTRY_BYTES, 2 * ENTRY_BYTES), expected);
  assert.equal(buffer.check(0, 11), EntryState.Free);
  assert.equal(buffer.check(1, 12), EntryState.Used);
  assert.equal(buffer.check(1, 13), EntryState.Damaged);
  assert.equal(buffer.generation(1), entry.generation);
  assert.equal(buffer.blockCrc32(1), entry.crc32);
  const target = {
    refWords: new Uint32Array(6 * 3),
    generations: new Float64Array(3),
    crcs: new Uint32Array(3),
  };
  buffer.copyTo(1, target, 2);
  assert.ok(BlockRef.fromBytes(new Uint8Array(target.refWords.buffer), 48).equals(entry.ref));
  assert.equal(target.generations[2], entry.generation);
  assert.equal(target.crcs[2], entry.crc32);
  for (let bit = 0; bit < ENTRY_BYTES * 8; bit++) {
    const flipped = new EntryBuffer(1);
    flipped.bytes.set(expected);
    flipped.bytes[bit >> 3] = flipped.bytes[bit >> 3]! ^ (1 << (bit & 7));
    assert.equal(flipped.check(0, 12), EntryState.Damaged, `bit ${bit}`);
  }
  buffer.zero(1);
  assert.equal(buffer.check(1, 12), EntryState.Free);
});

Deno.test("file format: the JavaScript CRC-32C matches the native one", () => {
  const random = new SeededRandom(9);
  for (let length = 0; length < 200; length += 7) {
    const bytes = random.bytes(length + 3);
    assert.equal(smallCrc32c(bytes, 3, length), crc32c(bytes.subarray(3)));
  }
});

Deno.test("file format: the newest valid high-water mark record wins; damage falls back", () => {
  const page = encodeHeader(header);
  assert.equal(decodeHighWaterMark(page), null);
  const put = (sequence: number, slots: number) =>
    page.set(
      encodeHighWaterMark({ sequence, slots }),
      HWM_RECORD_OFFSETS[sequence % HWM_RECORD_OFFSETS.length]!,
    );
  put(1, 100);
  assert.deepEqual(decodeHighWaterMark(page), { sequence: 1, slots: 100 });
  put(2, 300);
  assert.deepEqual(decodeHighWaterMark(page), { sequence: 2, slots: 300 });
  // A torn write of the newer record leaves the older one.
  page[HWM_RECORD_OFFSETS[0]! + 17] = page[HWM_RECORD_OFFSETS[0]! + 17]! ^ 4;
  assert.deepEqual(decodeHighWaterMark(page), { sequence: 1, slots: 100 });
  page[HWM_RECORD_OFFSETS[1]! + 3] = 0;
  assert.equal(decodeHighWaterMark(page), null);
});
