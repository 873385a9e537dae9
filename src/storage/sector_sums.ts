/**
 * Per-sector checksums of the file engine's slots (pure: no I/O). Every slot has a *sums record*
 * in `sums-<name>.blk`: the generation of the copy it describes and one 32-bit value per sector
 * (4 KiB, or 512 bytes for block sizes that are not a multiple of 4 KiB):
 *
 * - `0`: the sector reads as zeros and its bytes in the data file are never read (a new block, a
 *   zeroed or trimmed range: no data is written for them);
 * - `1`: the sector's contents are unknown and it never verifies (after a power loss took the
 *   sums of a copy whose writes were not flushed): reads of it fail, nothing else does;
 * - otherwise the sector's CRC-32C, with the values 0 and 1 replaced by 0xFFFFFFFF and
 *   0xFFFFFFFE (a verifying read accepts either for those; two values in 2^32 are all that
 *   weakens).
 *
 * The generation ties the record to one copy of one ref: a slot reused by another block after a
 * power loss, with this record and that data both stale, never verifies against the new entry.
 * Record layout (little-endian): `[0:8]` generation, `[8:8+4n]` sums; records are padded to a
 * power of two so one never straddles a page.
 * @module
 */

import { assert, crc32, crc32c } from "../core/mod.ts";

/** A sector: what one checksum covers and what a range write rounds to. */
export function sectorSizeOf(blockSizeBytes: number): number {
  return blockSizeBytes % 4096 === 0 ? 4096 : 512;
}

/** Bytes of one slot's sums record. */
export function sumsRecordBytesOf(blockSizeBytes: number): number {
  const sectors = blockSizeBytes / sectorSizeOf(blockSizeBytes);
  let bytes = 64;
  while (bytes < 8 + 4 * sectors) bytes *= 2;
  return bytes;
}

/** Sum of a sector that reads as zeros. */
export const SUM_ZERO = 0;
/** Sum of a sector whose contents are unknown: it never verifies. */
export const SUM_UNKNOWN = 1;

/** The sum of a sector holding `bytes` (SUM_ZERO only for all zeros, never SUM_UNKNOWN). */
export function sectorSum(bytes: Uint8Array): number {
  const crc = crc32c(bytes);
  if (crc === ZERO_SECTOR_CRC_4K && bytes.length === 4096 && isZero(bytes)) return SUM_ZERO;
  if (crc === ZERO_SECTOR_CRC_512 && bytes.length === 512 && isZero(bytes)) return SUM_ZERO;
  if (crc === 0) return 0xffff_ffff;
  if (crc === 1) return 0xffff_fffe;
  return crc;
}

/** Whether `bytes` verify against `sum` (not SUM_ZERO: zero sectors are never read). */
export function sectorMatches(bytes: Uint8Array, sum: number): boolean {
  if (sum === SUM_UNKNOWN) return false;
  const crc = crc32c(bytes);
  return crc === sum || (sum === 0xffff_ffff && crc === 0) || (sum === 0xffff_fffe && crc === 1);
}

const ZERO_SECTOR_CRC_4K = crc32c(new Uint8Array(4096));
const ZERO_SECTOR_CRC_512 = crc32c(new Uint8Array(512));

function isZero(bytes: Uint8Array): boolean {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

/** One slot's sums: the generation of its copy and a sum per sector. */
export interface SumsRecord {
  generation: number;
  sums: Uint32Array;
}

/** A record of `sectors` zero sums for `generation` (a block that reads as zeros). */
export function zeroSums(generation: number, sectors: number): SumsRecord {
  return { generation, sums: new Uint32Array(sectors) };
}

/** A record for `generation` whose every sector is unknown (nothing of it verifies). */
export function unknownSums(generation: number, sectors: number): SumsRecord {
  return { generation, sums: new Uint32Array(sectors).fill(SUM_UNKNOWN) };
}

/** The sums of a whole block's bytes. */
export function sumsOfBlock(
  block: Uint8Array,
  sectorBytes: number,
  generation: number,
): SumsRecord {
  assert(block.length % sectorBytes === 0, "a block is whole sectors");
  const sums = new Uint32Array(block.length / sectorBytes);
  for (let i = 0; i < sums.length; i++) {
    sums[i] = sectorSum(block.subarray(i * sectorBytes, (i + 1) * sectorBytes));
  }
  return { generation, sums };
}

/**
 * The content check a put's index entry carries: a CRC-32C over the block's sector sums (each
 * little-endian), a digest of its bytes computed from the sums the put makes anyway. It replaced a
 * CRC-32 over the whole block, a second pass over every byte of every put (7% of the server's
 * main thread under 1 MiB writes) for a check only a store that lost its sums file reads.
 */
export function sumsDigest(sums: Uint32Array): number {
  // The array's own bytes: Deno runs on little-endian machines only (x86-64, arm64).
  return crc32c(new Uint8Array(sums.buffer, sums.byteOffset, sums.byteLength));
}

/**
 * Whether `block`, whose sector sums are `sums`, matches the content check `entryCrc` of its index
 * entry: the digest of its sums ({@link sumsDigest}), or, in an entry written by a build before
 * that, the CRC-32 of the whole block. The caller computes the sums, so a caller that keeps them
 * (a store rebuilding its sums file) makes them once.
 */
export function matchesEntryCrc(block: Uint8Array, sums: Uint32Array, entryCrc: number): boolean {
  return sumsDigest(sums) === entryCrc || crc32(block) === entryCrc;
}

/** Encodes `record` into `target` (a record-sized buffer). */
export function encodeSums(record: SumsRecord, target: Uint8Array): void {
  assert(target.length >= 8 + 4 * record.sums.length, "sums record buffer too small");
  const view = new DataView(target.buffer, target.byteOffset, target.byteLength);
  target.fill(0);
  view.setUint32(0, record.generation % 2 ** 32, true);
  view.setUint32(4, Math.floor(record.generation / 2 ** 32), true);
  for (let i = 0; i < record.sums.length; i++) view.setUint32(8 + 4 * i, record.sums[i]!, true);
}

/** Decodes a record of `sectors` sums from `bytes`. */
export function decodeSums(bytes: Uint8Array, sectors: number): SumsRecord {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const generation = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
  const sums = new Uint32Array(sectors);
  for (let i = 0; i < sectors; i++) sums[i] = view.getUint32(8 + 4 * i, true);
  return { generation, sums };
}
