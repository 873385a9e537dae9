/**
 * How a block volume lies in the block store (docs/adr/0004-block-volume-write-path.md). Pure
 * codecs and arithmetic, no I/O.
 *
 * A volume `v` is written in *generations*: numbers handed out by the volume's INode counter in
 * the metadata service. The head names the current generation `g`. Every block the volume writes
 * belongs to `g`, and blocks of `g` are changed in place; a snapshot ends a generation (the head
 * moves to a new one), after which its blocks never change again. So snapshots stay free and
 * exact while FLUSH costs one durable append, not a new copy of everything touched.
 *
 * Three kinds of blocks, all named `(type, v, generation, index)`:
 * - data block `i` of the volume: `(Data, v, g, i)`, holding bytes `[i * B, (i + 1) * B)`.
 * - map chunk `c`: `(Map, v, g, c)`, the entries of data blocks `[c * E, (c + 1) * E)` where
 *   `E = B / 8`. Entry `i` is a u64 (little-endian): 0 = never written here (reads come from the
 *   parent volume, or zeros), `ENTRY_ZERO` = reads as zeros (trimmed), otherwise the generation
 *   whose data block `i` holds its bytes.
 * - root: `(INode, v, g, 0)`, the generation's header and chunk table (layout below). Chunk table
 *   entry `c` is the generation holding map chunk `c` (0 = no chunk: every entry is 0).
 *
 * Root layout (little-endian, one block):
 * `[0:8]` magic `TORUSVRT`, `[8:12]` format version, `[12:16]` block size, `[16:24]` volume id,
 * `[24:32]` generation, `[32:40]` size in bytes, `[40:48]` parent volume id (0 = none),
 * `[48:56]` parent generation, `[56:60]` entries per chunk, `[60:64]` chunk table capacity,
 * `[64:...]` chunk table. Every field is written in place by a range write of its own bytes, so a
 * crash leaves each field old or new, and each new value points at something already durable.
 * @module
 */

import { assert, BlockRef, BlockType, invalid } from "../core/mod.ts";

/** Magic at the start of a root block. */
export const ROOT_MAGIC = "TORUSVRT";
/** Root format written by this code. */
export const ROOT_FORMAT_VERSION = 1;
/** Bytes of the root header before the chunk table. */
export const ROOT_HEADER_BYTES = 64;
/** Bytes of one map entry and of one chunk table entry. */
export const ENTRY_BYTES = 8;
/** Map entry: the block reads as zeros (the low and high u32 words are both all ones). */
export const ENTRY_ZERO = 2 ** 64 - 1;
/** Map entry: never written in this volume. */
export const ENTRY_UNWRITTEN = 0;
/** Largest generation a map can hold exactly (JavaScript numbers; 2^53 generations is plenty). */
export const GENERATION_MAX = Number.MAX_SAFE_INTEGER;

/** Offsets of the root header fields. */
export const RootField = {
  Magic: 0,
  Version: 8,
  BlockSize: 12,
  Volume: 16,
  Generation: 24,
  Size: 32,
  ParentVolume: 40,
  ParentGeneration: 48,
  EntriesPerChunk: 56,
  ChunkCapacity: 60,
} as const;

/** The shape of a volume's map for a block size. */
export interface MapGeometry {
  readonly blockSizeBytes: number;
  /** Map entries per chunk (E). */
  readonly entriesPerChunk: number;
  /** Chunks a root can name. */
  readonly chunkCapacity: number;
  /** Largest volume this block size can map. */
  readonly maxVolumeBytes: number;
}

/** The map geometry of a block size. */
export function mapGeometry(blockSizeBytes: number): MapGeometry {
  assert(
    Number.isSafeInteger(blockSizeBytes) && blockSizeBytes >= 512 && blockSizeBytes % 512 === 0,
    "block size must be a multiple of 512",
  );
  const entriesPerChunk = blockSizeBytes / ENTRY_BYTES;
  const chunkCapacity = (blockSizeBytes - ROOT_HEADER_BYTES) / ENTRY_BYTES;
  const mappable = chunkCapacity * entriesPerChunk * blockSizeBytes;
  // Volume sizes are whole sectors and exact JavaScript integers.
  const maxVolumeBytes = Math.min(mappable, Math.floor(Number.MAX_SAFE_INTEGER / 512) * 512);
  return { blockSizeBytes, entriesPerChunk, chunkCapacity, maxVolumeBytes };
}

/** Data blocks of a volume of `sizeBytes`. */
export function blocksOf(sizeBytes: number, blockSizeBytes: number): number {
  return Math.ceil(sizeBytes / blockSizeBytes);
}

/** Chunks of a volume of `sizeBytes`. */
export function chunksOf(sizeBytes: number, geometry: MapGeometry): number {
  return Math.ceil(blocksOf(sizeBytes, geometry.blockSizeBytes) / geometry.entriesPerChunk);
}

/** Throws `invalid` unless `sizeBytes` is a volume size this block size can map. */
export function checkMappableSize(sizeBytes: number, geometry: MapGeometry): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw invalid(`volume size ${sizeBytes} is not a positive whole number of 512-byte sectors`);
  }
  if (sizeBytes > geometry.maxVolumeBytes) {
    throw invalid(
      `volume size ${sizeBytes} bytes is too large: with ${geometry.blockSizeBytes}-byte ` +
        `blocks a volume maps at most ${geometry.maxVolumeBytes} bytes`,
    );
  }
}

/** Ref of data block `index` of generation `generation`. */
export function dataRef(volume: number, generation: number, index: number): BlockRef {
  return new BlockRef({ type: BlockType.Data, volume, inode: generation, index });
}

/** Ref of map chunk `chunk` of generation `generation`. */
export function chunkRef(volume: number, generation: number, chunk: number): BlockRef {
  return new BlockRef({ type: BlockType.Map, volume, inode: generation, index: chunk });
}

/** Ref of the root of generation `generation`. */
export function rootRef(volume: number, generation: number): BlockRef {
  return new BlockRef({ type: BlockType.INode, volume, inode: generation, index: 0 });
}

/** Reads the u64 at `offset` as a number; `ENTRY_ZERO` for all ones, `invalid` when inexact. */
export function readEntry(view: DataView, offset: number): number {
  const low = view.getUint32(offset, true);
  const high = view.getUint32(offset + 4, true);
  if (low === 0xffff_ffff && high === 0xffff_ffff) return ENTRY_ZERO;
  if (high > 0x1f_ffff) throw invalid(`map entry at ${offset} is out of range`);
  return high * 2 ** 32 + low;
}

/** Writes `value` (a generation, 0 or ENTRY_ZERO) as a u64 at `offset`. */
export function writeEntry(view: DataView, offset: number, value: number): void {
  if (value === ENTRY_ZERO) {
    view.setUint32(offset, 0xffff_ffff, true);
    view.setUint32(offset + 4, 0xffff_ffff, true);
    return;
  }
  assert(Number.isSafeInteger(value) && value >= 0, `bad map entry ${value}`);
  view.setUint32(offset, value % 2 ** 32, true);
  view.setUint32(offset + 4, Math.floor(value / 2 ** 32), true);
}

/** The bytes of one entry holding `value`, for a range write. */
export function entryBytes(value: number): Uint8Array {
  const bytes = new Uint8Array(ENTRY_BYTES);
  writeEntry(new DataView(bytes.buffer), 0, value);
  return bytes;
}

/** A decoded root header. */
export interface RootHeader {
  readonly volume: number;
  readonly generation: number;
  readonly sizeBytes: number;
  /** Parent of a clone: reads of never-written blocks fall through to it. */
  readonly parent: { readonly volume: number; readonly generation: number } | null;
}

/** A root block: header fields plus the chunk table (a view of the block's bytes). */
export interface Root extends RootHeader {
  /** The root block's bytes (the chunk table is read from them). */
  readonly bytes: Uint8Array;
}

/** Encodes a new root block with an all-zero chunk table. */
export function encodeRoot(header: RootHeader, geometry: MapGeometry): Uint8Array {
  const bytes = new Uint8Array(geometry.blockSizeBytes);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < 8; i++) bytes[i] = ROOT_MAGIC.charCodeAt(i);
  view.setUint32(RootField.Version, ROOT_FORMAT_VERSION, true);
  view.setUint32(RootField.BlockSize, geometry.blockSizeBytes, true);
  writeEntry(view, RootField.Volume, header.volume);
  writeEntry(view, RootField.Generation, header.generation);
  writeEntry(view, RootField.Size, header.sizeBytes);
  writeEntry(view, RootField.ParentVolume, header.parent?.volume ?? 0);
  writeEntry(view, RootField.ParentGeneration, header.parent?.generation ?? 0);
  view.setUint32(RootField.EntriesPerChunk, geometry.entriesPerChunk, true);
  view.setUint32(RootField.ChunkCapacity, geometry.chunkCapacity, true);
  return bytes;
}

/**
 * Decodes a root block read for `(volume, generation)`. Anything inconsistent throws `invalid`
 * naming the field: a root that names another volume or generation is a misdirected block.
 */
export function decodeRoot(
  bytes: Uint8Array,
  expected: { volume: number; generation: number },
  geometry: MapGeometry,
): Root {
  const where = `root of volume ${expected.volume} generation ${expected.generation}`;
  if (bytes.length !== geometry.blockSizeBytes) throw invalid(`${where}: wrong length`);
  const magic = String.fromCharCode(...bytes.subarray(0, 8));
  if (magic !== ROOT_MAGIC) throw invalid(`${where}: not a volume root`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(RootField.Version, true);
  if (version !== ROOT_FORMAT_VERSION) throw invalid(`${where}: format version ${version}`);
  const checks: [number, number, string][] = [
    [view.getUint32(RootField.BlockSize, true), geometry.blockSizeBytes, "block size"],
    [readEntry(view, RootField.Volume), expected.volume, "volume"],
    [readEntry(view, RootField.Generation), expected.generation, "generation"],
    [view.getUint32(RootField.EntriesPerChunk, true), geometry.entriesPerChunk, "entries"],
    [view.getUint32(RootField.ChunkCapacity, true), geometry.chunkCapacity, "capacity"],
  ];
  for (const [found, wanted, field] of checks) {
    if (found !== wanted) throw invalid(`${where}: ${field} is ${found}, not ${wanted}`);
  }
  const sizeBytes = readEntry(view, RootField.Size);
  checkMappableSize(sizeBytes, geometry);
  const parentVolume = readEntry(view, RootField.ParentVolume);
  const parentGeneration = readEntry(view, RootField.ParentGeneration);
  const parent = parentVolume === 0 ? null : { volume: parentVolume, generation: parentGeneration };
  return { volume: expected.volume, generation: expected.generation, sizeBytes, parent, bytes };
}

/** Offset in the root block of chunk table entry `chunk`. */
export function chunkTableOffset(chunk: number, geometry: MapGeometry): number {
  assert(chunk >= 0 && chunk < geometry.chunkCapacity, `chunk ${chunk} beyond the root's table`);
  return ROOT_HEADER_BYTES + chunk * ENTRY_BYTES;
}
