/**
 * On-disk format of the file engine (FileBlockStore), version 2. Pure codecs, no I/O.
 *
 * Two files per store, `data-<name>.blk` and `map-<name>.blk`, each starting with a 4096-byte
 * header page; the data file then holds slot i at `HEADER_BYTES + i * blockSizeBytes`, the map
 * file holds the 64-byte index entry of slot i at `HEADER_BYTES + i * ENTRY_BYTES`.
 *
 * Header (little-endian): `[0:8]` magic (`TORUSDAT` or `TORUSMAP`), `[8:12]` format version,
 * `[12:16]` block size, `[16:24]` slot count, `[24:40]` store id (random, equal in both files so
 * a data file is never paired with another store's map), `[40:44]` entry size, `[44:48]` header
 * size, `[48:60]` zero, `[60:64]` CRC-32C of `[0:60]`. The rest of the page is zero, except in
 * the map file of version 2:
 *
 * High-water mark (version 2): two records in the map header page, at `[512:544]` and
 * `[1024:1056]` (separate sectors, so a torn write of one leaves the other), each `[0:8]`
 * `TORUSHWM`, `[8:16]` sequence number, `[16:24]` slot count H, `[24:28]` zero, `[28:32]`
 * CRC-32C of `[0:28]`. The valid record with the highest sequence wins: every entry of a slot at
 * or above H is zero, so opening reads only the first H entries (the engine hands out the lowest
 * free slots first, so H follows the most slots ever used, not the store size). Without a valid
 * record the whole map is read. Version 1 (no records) is read and upgraded on open; version 1
 * code refuses version 2, as it would write entries above H without raising it.
 *
 * Index entry: `[0:24]` BlockRef, `[24:32]` generation (a store-wide sequence number; the
 * highest verified one wins when a ref has several entries), `[32:40]` slot number (equal to the
 * entry's position: catches misdirected writes), `[40:44]` the block's content check, `[44:60]`
 * zero, `[60:64]` CRC-32C of `[0:60]` (a torn entry never verifies). An all-zero entry marks a
 * free slot.
 *
 * The content check is read only when a store has no sums file (sector_sums.ts), to judge which
 * copies survived: a put's entry holds the CRC-32C of its sector sums (`sumsDigest`: computed from
 * the sums the put makes anyway, so no second pass over the block), an entry written by a build
 * before that the CRC-32 (IEEE) of the whole block, and a block created by a range write 0. Reads
 * verify sectors against the sums file, and the CRC-32 a caller passes as `expectedCrc32` is
 * computed over what was read. The small header and entry checksums use CRC-32C, which detects
 * more errors in short messages.
 * @module
 */

import { assert, BLOCK_REF_BYTES, BlockRef, crc32c, invalid, isTorusError } from "../core/mod.ts";

/** Size of the header page at the start of both files. */
export const HEADER_BYTES = 4096;
/** Size of one index entry. A power of two, so no entry straddles a sector or a page. */
export const ENTRY_BYTES = 64;
/** The format version written by this code. */
export const FORMAT_VERSION = 2;
/** Older versions this code reads (and upgrades). */
export const FORMAT_VERSIONS_READ: readonly number[] = [1, 2];
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
  /** Format version; {@link FORMAT_VERSION} when omitted (encoding). */
  version?: number;
}

/** Byte offset of `slot` in the data file. */
export function slotOffsetBytes(slot: number, blockSizeBytes: number): number {
  return HEADER_BYTES + slot * blockSizeBytes;
}

/** Byte offset of the entry of `slot` in the map file. */
export function entryOffsetBytes(slot: number): number {
  return HEADER_BYTES + slot * ENTRY_BYTES;
}

/** Encodes a header page. */
export function encodeHeader(header: FileHeader): Uint8Array {
  assert(header.storeId.length === STORE_ID_BYTES, "store id must be 16 bytes");
  assert(Number.isSafeInteger(header.slotCount) && header.slotCount >= 0, "bad slot count");
  const page = new Uint8Array(HEADER_BYTES);
  const view = new DataView(page.buffer);
  for (let i = 0; i < 8; i++) page[i] = header.magic.charCodeAt(i);
  view.setUint32(8, header.version ?? FORMAT_VERSION, true);
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
  if (!FORMAT_VERSIONS_READ.includes(version)) {
    throw invalid(
      `${path} has store format version ${version}; this torus reads versions ` +
        FORMAT_VERSIONS_READ.join(" and "),
    );
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
    version,
  };
}

/** Where the two high-water mark records sit in the map header page. */
export const HWM_RECORD_OFFSETS: readonly number[] = [512, 1024];
/** Size of one high-water mark record. */
export const HWM_RECORD_BYTES = 32;
const HWM_MAGIC = "TORUSHWM";

/** A high-water mark record: every entry at or above `slots` is zero. */
export interface HighWaterMark {
  /** Increases with every record written; the highest valid one wins. */
  sequence: number;
  slots: number;
}

/** Encodes a record (HWM_RECORD_BYTES). It goes to HWM_RECORD_OFFSETS[sequence % 2]. */
export function encodeHighWaterMark(mark: HighWaterMark): Uint8Array {
  assert(Number.isSafeInteger(mark.sequence) && mark.sequence >= 0, "bad hwm sequence");
  assert(Number.isSafeInteger(mark.slots) && mark.slots >= 0, "bad hwm slot count");
  const record = new Uint8Array(HWM_RECORD_BYTES);
  const view = new DataView(record.buffer);
  for (let i = 0; i < 8; i++) record[i] = HWM_MAGIC.charCodeAt(i);
  view.setBigUint64(8, BigInt(mark.sequence), true);
  view.setBigUint64(16, BigInt(mark.slots), true);
  view.setUint32(28, crc32c(record.subarray(0, 28)), true);
  return record;
}

/** The winning high-water mark of a map header page, or null when no record is valid. */
export function decodeHighWaterMark(page: Uint8Array): HighWaterMark | null {
  let best: HighWaterMark | null = null;
  for (const offset of HWM_RECORD_OFFSETS) {
    if (page.length < offset + HWM_RECORD_BYTES) continue;
    const record = page.subarray(offset, offset + HWM_RECORD_BYTES);
    const view = new DataView(record.buffer, record.byteOffset, HWM_RECORD_BYTES);
    if (String.fromCharCode(...record.subarray(0, 8)) !== HWM_MAGIC) continue;
    if (view.getUint32(28, true) !== crc32c(record.subarray(0, 28))) continue;
    const sequence = view.getBigUint64(8, true);
    const slots = view.getBigUint64(16, true);
    const max = BigInt(Number.MAX_SAFE_INTEGER);
    if (sequence > max || slots > max) continue;
    if (best === null || Number(sequence) > best.sequence) {
      best = { sequence: Number(sequence), slots: Number(slots) };
    }
  }
  return best;
}

/** The contents of one used index entry. */
export interface IndexEntry {
  ref: BlockRef;
  generation: number;
  slot: number;
  /** The block's content check (see the module doc): not a CRC-32 of the block since sums. */
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

/** The per-slot fields a map entry is encoded from (the engine's SlotIndex has them). */
export interface EntrySource {
  /** 6 words of ref per slot. */
  readonly refWords: Uint32Array;
  readonly generations: Float64Array;
  readonly crcs: Uint32Array;
}

const WORDS_PER_ENTRY = ENTRY_BYTES / 4;
const REF_WORDS = BLOCK_REF_BYTES / 4;
const TWO_32 = 2 ** 32;

/**
 * Consecutive map entries in one buffer, encoded from and decoded into typed per-slot fields
 * without allocating per entry (opening a store checks millions of them). Same format as
 * {@link encodeEntry} / {@link decodeEntry}.
 */
export class EntryBuffer {
  readonly bytes: Uint8Array;
  readonly #words: Uint32Array;
  readonly #source: EntrySource | null;

  /** Room for `entries` entries; `source` is where {@link encodeSlot} takes fields from. */
  constructor(entries: number, source: EntrySource | null = null) {
    this.bytes = new Uint8Array(entries * ENTRY_BYTES);
    this.#words = new Uint32Array(this.bytes.buffer);
    this.#source = source;
  }

  /** Entry `i` := the entry of used slot `slot` of the source. */
  encodeSlot(i: number, slot: number): void {
    const source = this.#source;
    assert(source !== null, "EntryBuffer without a source");
    const w = this.#words;
    const at = i * WORDS_PER_ENTRY;
    const from = slot * REF_WORDS;
    for (let k = 0; k < REF_WORDS; k++) w[at + k] = source.refWords[from + k]!;
    const generation = source.generations[slot]!;
    assert(Number.isSafeInteger(generation) && generation > 0, "bad generation");
    w[at + 6] = generation % TWO_32;
    w[at + 7] = Math.floor(generation / TWO_32);
    w[at + 8] = slot % TWO_32;
    w[at + 9] = Math.floor(slot / TWO_32);
    w[at + 10] = source.crcs[slot]!;
    for (let k = 11; k < 15; k++) w[at + k] = 0;
    w[at + 15] = entryCrc32c(w, at);
  }

  /** Entry `i` := zero (a free slot). */
  zero(i: number): void {
    this.#words.fill(0, i * WORDS_PER_ENTRY, (i + 1) * WORDS_PER_ENTRY);
  }

  /** What entry `i`, read from the position of slot `slot`, is (as {@link decodeEntry}). */
  check(i: number, slot: number): EntryState {
    const w = this.#words;
    const at = i * WORDS_PER_ENTRY;
    let any = 0;
    for (let k = at; k < at + WORDS_PER_ENTRY; k++) any |= w[k]!;
    if (any === 0) return EntryState.Free;
    if (w[at + 15] !== entryCrc32c(w, at)) {
      return EntryState.Damaged;
    }
    if (w[at + 8] !== slot % TWO_32 || w[at + 9] !== Math.floor(slot / TWO_32)) {
      return EntryState.Damaged;
    }
    const high = w[at + 7]!;
    if (high >= 2 ** 21 || (high === 0 && w[at + 6] === 0)) return EntryState.Damaged;
    return EntryState.Used;
  }

  /** Generation of used entry `i`. */
  generation(i: number): number {
    const at = i * WORDS_PER_ENTRY;
    return this.#words[at + 7]! * TWO_32 + this.#words[at + 6]!;
  }

  /** Block CRC-32 of used entry `i`. */
  blockCrc32(i: number): number {
    return this.#words[i * WORDS_PER_ENTRY + 10]!;
  }

  /**
   * Copies used entry `i` (ref, generation, block CRC) into slot `slot` of `target`, the typed
   * per-slot fields of an index.
   */
  copyTo(i: number, target: EntrySource, slot: number): void {
    const w = this.#words;
    const at = i * WORDS_PER_ENTRY;
    const refs = target.refWords;
    const to = slot * REF_WORDS;
    refs[to] = w[at]!;
    refs[to + 1] = w[at + 1]!;
    refs[to + 2] = w[at + 2]!;
    refs[to + 3] = w[at + 3]!;
    refs[to + 4] = w[at + 4]!;
    refs[to + 5] = w[at + 5]!;
    target.generations[slot] = w[at + 7]! * TWO_32 + w[at + 6]!;
    target.crcs[slot] = w[at + 10]!;
  }
}

/** CRC-32C table for slicing by 8: table[k * 256 + b]. */
const CRC32C_TABLE = (() => {
  const table = new Uint32Array(8 * 256);
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[b] = c >>> 0;
  }
  for (let b = 0; b < 256; b++) {
    for (let k = 1; k < 8; k++) {
      const previous = table[(k - 1) * 256 + b]!;
      table[k * 256 + b] = (previous >>> 8) ^ table[previous & 0xff]!;
    }
  }
  return table;
})();

/**
 * CRC-32C of `length` bytes of `bytes` from `offset`, in JavaScript. Same result as core's
 * crc32c; for tests of the sliced variant below.
 */
export function smallCrc32c(bytes: Uint8Array, offset: number, length: number): number {
  let c = 0xffffffff;
  for (let i = offset; i < offset + length; i++) {
    c = CRC32C_TABLE[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * CRC-32C of the first 60 bytes of the entry at word `at` of `words` (slicing by 8). For these
 * short inputs it is about 4x faster than the native call, whose per-call cost (a subarray and a
 * Node-API crossing) dominates.
 */
function entryCrc32c(words: Uint32Array, at: number): number {
  const t = CRC32C_TABLE;
  let c = 0xffffffff;
  // 56 bytes as 7 pairs of words, then the last word byte by byte.
  for (let w = at; w < at + 14; w += 2) {
    const a = words[w]! ^ c;
    const d = words[w + 1]!;
    c = t[1792 + (a & 0xff)]! ^ t[1536 + ((a >>> 8) & 0xff)]! ^
      t[1280 + ((a >>> 16) & 0xff)]! ^ t[1024 + (a >>> 24)]! ^ t[768 + (d & 0xff)]! ^
      t[512 + ((d >>> 8) & 0xff)]! ^ t[256 + ((d >>> 16) & 0xff)]! ^ t[d >>> 24]!;
  }
  const last = words[at + 14]!;
  for (let shift = 0; shift < 32; shift += 8) {
    c = t[(c ^ (last >>> shift)) & 0xff]! ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}
