/** The file engine's on-disk codecs: round trips; garbage, truncated and oversized input. */

import assert from "node:assert/strict";
import { BlockRef, SeededRandom, testSeed } from "../core/mod.ts";
import {
  decodeEntry,
  decodeHeader,
  encodeEntry,
  encodeHeader,
  ENTRY_BYTES,
  EntryState,
  FileMagic,
  HEADER_BYTES,
  type IndexEntry,
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
  assert.deepEqual(decodeHeader(page, FileMagic.Map, "m"), header);
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
