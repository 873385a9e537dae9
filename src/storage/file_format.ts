/**
 * On-disk format of the file engine (FileBlockStore), version 1. Pure codecs, no I/O.
 *
 * Two files per store, `data-<name>.blk` and `map-<name>.blk`, each starting with a 4096-byte
 * header page; the data file then holds slot i at `HEADER_BYTES + i * blockSizeBytes`, the map
 * file holds the 64-byte index entry of slot i at `HEADER_BYTES + i * ENTRY_BYTES`.
 *
 * Header (little-endian): `[0:8]` magic (`TORUSDAT` or `TORUSMAP`), `[8:12]` format version,
 * `[12:16]` block size, `[16:24]` slot count, `[24:40]` store id (random, equal in both files so
 * a data file is never paired with another store's map), `[40:44]` entry size, `[44:48]` header
 * size, `[48:60]` zero, `[60:64]` CRC-32C of `[0:60]`. The rest of the page is zero.
 *
 * Index entry: `[0:24]` BlockRef, `[24:32]` generation (a store-wide sequence number; the
 * highest verified one wins when a ref has several entries), `[32:40]` slot number (equal to the
 * entry's position: catches misdirected writes), `[40:44]` CRC-32 (IEEE) of the whole block
 * (verified on every read), `[44:60]` zero, `[60:64]` CRC-32C of `[0:60]` (a torn entry never
 * verifies). An all-zero entry marks a free slot.
 *
 * Blocks are checksummed with CRC-32 (IEEE), not CRC-32C: @node-rs/crc32 computes it 1.4-2x as
 * fast on this hardware (docs/adr/0001-block-file-io.md), and it is the checksum the blockset's
 * crc layer passes as `expectedCrc32`, so one pass both verifies a read and answers that check.
 * The small header and entry checksums use CRC-32C, which detects more errors in short messages.
 * @module
 */

import { assert, BLOCK_REF_BYTES, BlockRef, crc32c, invalid, isTorusError } from "../core/mod.ts";

/** Size of the header page at the start of both files. */
export const HEADER_BYTES = 4096;
/** Size of one index entry. A power of two, so no entry straddles a sector or a page. */
export const ENTRY_BYTES = 64;
/** The format version written by this code; other versions are refused. */
export const FORMAT_VERSION = 1;
/** Bytes of the store id. */
export const STORE_ID_BYTES = 16;

/** Magic of each file kind (8 ASCII bytes). */
export const FileMagic = { Data: "TORUSDAT", Map: "TORUSMAP" } as const;
export type FileMagic = typeof FileMagic[keyof typeof FileMagic];

const HEADER_CHECKED_BYTES = 60;
const ENTRY_CHECKED_BYTES = 60;

/** Decoded header of a data or map file. */
export interface FileHeader {
  magic: FileMagic;
  blockSizeBytes: number;
  slotCount: number;
  storeId: Uint8Array;
}

/** Encodes a header page. */
export function encodeHeader(header: FileHeader): Uint8Array {
  assert(header.storeId.length === STORE_ID_BYTES, "store id must be 16 bytes");
  assert(Number.isSafeInteger(header.slotCount) && header.slotCount >= 0, "bad slot count");
  const page = new Uint8Array(HEADER_BYTES);
  const view = new DataView(page.buffer);
  for (let i = 0; i < 8; i++) page[i] = header.magic.charCodeAt(i);
  view.setUint32(8, FORMAT_VERSION, true);
  view.setUint32(12, header.blockSizeBytes, true);
  view.setBigUint64(16, BigInt(header.slotCount), true);
  page.set(header.storeId, 24);
  view.setUint32(40, ENTRY_BYTES, true);
  view.setUint32(44, HEADER_BYTES, true);
  view.setUint32(60, crc32c(page.subarray(0, HEADER_CHECKED_BYTES)), true);
  return page;
}

/**
 * Decodes a header page read from `path`, expecting `magic`. Throws `invalid` with a message that
 * says what is wrong (foreign file, other version, damaged header).
 */
export function decodeHeader(bytes: Uint8Array, magic: FileMagic, path: string): FileHeader {
  const found = String.fromCharCode(...bytes.subarray(0, 8));
  if (found !== magic) {
    const other = Object.values(FileMagic).includes(found as FileMagic);
    throw invalid(
      other
        ? `${path} is a ${found} file where a ${magic} file was expected`
        : `${path} is not a torus store file (no ${magic} magic)`,
    );
  }
  if (bytes.length < HEADER_BYTES) {
    throw invalid(`${path} is too short for a torus store header (${bytes.length} bytes)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (version !== FORMAT_VERSION) {
    throw invalid(`${path} has store format version ${version}; this torus reads version 1`);
  }
  if (view.getUint32(60, true) !== crc32c(bytes.subarray(0, HEADER_CHECKED_BYTES))) {
    throw invalid(`${path} has a damaged header (checksum mismatch)`);
  }
  const entryBytes = view.getUint32(40, true);
  const headerBytes = view.getUint32(44, true);
  if (entryBytes !== ENTRY_BYTES || headerBytes !== HEADER_BYTES) {
    throw invalid(`${path} has entry size ${entryBytes} and header size ${headerBytes}`);
  }
  const slotCount = view.getBigUint64(16, true);
  if (slotCount > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalid(`${path} claims ${slotCount} slots`);
  }
  return {
    magic,
    blockSizeBytes: view.getUint32(12, true),
    slotCount: Number(slotCount),
    storeId: bytes.slice(24, 24 + STORE_ID_BYTES),
  };
}

/** The contents of one used index entry. */
export interface IndexEntry {
  ref: BlockRef;
  generation: number;
  slot: number;
  /** CRC-32 (IEEE) of the whole block. */
  crc32: number;
}

/** Writes `entry` into `target` at `offset` (ENTRY_BYTES bytes, no allocation but the ref's). */
export function encodeEntry(entry: IndexEntry, target: Uint8Array, offset = 0): void {
  assert(offset >= 0 && offset + ENTRY_BYTES <= target.length, "encodeEntry: no room");
  assert(Number.isSafeInteger(entry.generation) && entry.generation > 0, "bad generation");
  const bytes = target.subarray(offset, offset + ENTRY_BYTES);
  bytes.fill(0);
  entry.ref.writeTo(bytes, 0);
  const view = new DataView(bytes.buffer, bytes.byteOffset, ENTRY_BYTES);
  view.setBigUint64(24, BigInt(entry.generation), true);
  view.setBigUint64(32, BigInt(entry.slot), true);
  view.setUint32(40, entry.crc32, true);
  view.setUint32(60, crc32c(bytes.subarray(0, ENTRY_CHECKED_BYTES)), true);
}

/** What a stored entry turned out to be. */
export const EntryState = {
  /** All zero: the slot is free. */
  Free: 0,
  /** A verified entry. */
  Used: 1,
  /** Anything else: a torn or damaged entry, treated as free. */
  Damaged: 2,
} as const;
export type EntryState = typeof EntryState[keyof typeof EntryState];

/** The result of decoding one entry. */
export type DecodedEntry =
  | { state: typeof EntryState.Free }
  | { state: typeof EntryState.Damaged; reason: string }
  | { state: typeof EntryState.Used; entry: IndexEntry };

/**
 * Decodes the entry at `offset` of `bytes`, which should describe slot `slot`. Never throws for
 * bad content: damage is a result, because a crash may leave any bytes here.
 */
export function decodeEntry(bytes: Uint8Array, offset: number, slot: number): DecodedEntry {
  assert(offset >= 0 && offset + ENTRY_BYTES <= bytes.length, "decodeEntry: short input");
  const entry = bytes.subarray(offset, offset + ENTRY_BYTES);
  const view = new DataView(entry.buffer, entry.byteOffset, ENTRY_BYTES);
  if (isZero(view)) return { state: EntryState.Free };
  if (view.getUint32(60, true) !== crc32c(entry.subarray(0, ENTRY_CHECKED_BYTES))) {
    return { state: EntryState.Damaged, reason: "checksum mismatch" };
  }
  const storedSlot = view.getBigUint64(32, true);
  if (storedSlot !== BigInt(slot)) {
    return { state: EntryState.Damaged, reason: `entry names slot ${storedSlot}` };
  }
  const generation = view.getBigUint64(24, true);
  if (generation === 0n || generation > BigInt(Number.MAX_SAFE_INTEGER)) {
    return { state: EntryState.Damaged, reason: `generation ${generation} out of range` };
  }
  let ref: BlockRef;
  try {
    ref = BlockRef.fromBytes(entry.subarray(0, BLOCK_REF_BYTES));
  } catch (error) {
    if (!isTorusError(error)) throw error;
    return { state: EntryState.Damaged, reason: error.message };
  }
  return {
    state: EntryState.Used,
    entry: {
      ref,
      generation: Number(generation),
      slot,
      crc32: view.getUint32(40, true),
    },
  };
}

function isZero(view: DataView): boolean {
  for (let i = 0; i < ENTRY_BYTES; i += 4) {
    if (view.getUint32(i, true) !== 0) return false;
  }
  return true;
}
