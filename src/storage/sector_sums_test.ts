/**
 * Sector sums (pure): the digest an index entry carries for a put, and the entry check that
 * accepts it and the whole-block CRC-32 of entries written before it.
 */

import assert from "node:assert/strict";
import { crc32, crc32c, SeededRandom, testSeed } from "../core/mod.ts";
import { matchesEntryCrc, sectorSum, SUM_ZERO, sumsDigest, sumsOfBlock } from "./sector_sums.ts";

const SECTOR = 4096;

function randomBlock(random: SeededRandom, sectors: number): Uint8Array {
  const block = new Uint8Array(sectors * SECTOR);
  for (let i = 0; i < block.length; i += 97) block[i] = random.int(256);
  return block;
}

/** The entry check of `block` against `entryCrc`, with the block's own sums. */
function matchesEntry(block: Uint8Array, entryCrc: number): boolean {
  return matchesEntryCrc(block, sumsOfBlock(block, SECTOR, 0).sums, entryCrc);
}

Deno.test("sector sums: the digest is the CRC-32C of the sums, little-endian", () => {
  const sums = new Uint32Array([0x0403_0201, 0, 0xffff_ffff]);
  const bytes = new Uint8Array([1, 2, 3, 4, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
  assert.equal(sumsDigest(sums), crc32c(bytes));
});

Deno.test("sector sums: a block matches its entry check, with any byte changed it does not", () => {
  const seed = testSeed();
  const random = new SeededRandom(seed);
  for (let round = 0; round < 20; round++) {
    const block = randomBlock(random, 8);
    // Every other round sector 3 is zeros (sum 0) and the change lands in it: the digest must
    // see a change there all the same.
    const inZeroSector = round % 2 === 0;
    if (inZeroSector) block.fill(0, 3 * SECTOR, 4 * SECTOR);
    const digest = sumsDigest(sumsOfBlock(block, SECTOR, 1).sums);
    assert.ok(matchesEntry(block, digest), `seed ${seed} round ${round}`);
    const at = inZeroSector ? 3 * SECTOR + random.int(SECTOR) : random.int(block.length);
    block[at] = block[at]! ^ (1 << random.int(8));
    assert.ok(!matchesEntry(block, digest), `seed ${seed} round ${round} byte ${at}`);
  }
});

Deno.test("sector sums: an entry written before sums digests (CRC-32 of the block) still matches", () => {
  const block = randomBlock(new SeededRandom(7), 4);
  assert.ok(matchesEntry(block, crc32(block)));
  const damaged = block.slice();
  damaged[5000] = damaged[5000]! ^ 1;
  assert.ok(!matchesEntry(damaged, crc32(block)));
});

Deno.test("sector sums: zero sectors sum to SUM_ZERO, 512-byte sectors too", () => {
  assert.equal(sectorSum(new Uint8Array(4096)), SUM_ZERO);
  assert.equal(sectorSum(new Uint8Array(512)), SUM_ZERO);
  const one = new Uint8Array(512);
  one[511] = 1;
  assert.notEqual(sectorSum(one), SUM_ZERO);
});
