/**
 * Opening a file store: creating its two files, checking their headers, taking the lock,
 * loading the index from the map file, growing or shrinking the store and settling its
 * high-water mark. Used only by FileBlockStore.open; every file operation goes through the
 * store's FileIo.
 *
 * Invariants:
 * - A store is opened by one process at a time (the data file's lock; `locked` otherwise).
 * - Creation writes the map under a temporary name and renames it last, so a store whose map
 *   file exists is complete; a data file without map is only reused when it is empty or the
 *   temporary map shows an interrupted creation.
 * - Loading reads only the entries below the high-water mark (all of them when there is no valid
 *   mark), so it takes time in proportion to the slots ever used, not to the store size.
 * - The index that leaves here has one verified entry per ref: damaged entries and the losers of
 *   duplicate entries are zeroed on disk (and synced) before the store serves anything, so a
 *   superseded copy can never come back later (when its winner is deleted).
 * - A shrink never drops a stored block nor the spare slot: the new size keeps every used slot
 *   and at least `used + SPARE_SLOTS` slots.
 * - When open returns, the map carries a valid high-water mark and the current format version.
 * @module
 */

import { setImmediate } from "node:timers";
import {
  BLOCK_SIZE_MAX_BYTES,
  BLOCK_SIZE_MIN_BYTES,
  ErrorCode,
  invalid,
  STORE_SLOTS_MAX,
  TorusError,
} from "../core/mod.ts";
import type { FileIo, IoFile } from "./file_io.ts";
import {
  decodeHeader,
  decodeHighWaterMark,
  encodeHeader,
  encodeHighWaterMark,
  ENTRY_BYTES,
  EntryBuffer,
  entryOffsetBytes,
  EntryState,
  FileMagic,
  FORMAT_VERSION,
  HEADER_BYTES,
  type HighWaterMark,
  HWM_RECORD_OFFSETS,
  slotOffsetBytes,
  STORE_ID_BYTES,
} from "./file_format.ts";
import { highWaterStepSlots } from "./map_writer.ts";
import { matchesEntryCrc, sectorSizeOf, sumsOfBlock } from "./sector_sums.ts";
import { SlotIndex, SlotState } from "./slot_index.ts";

/** Slots never counted as capacity, so a replacement always finds room. */
export const SPARE_SLOTS = 1;

/** The open files of a store and what their headers say. */
export interface StoreFiles {
  readonly io: FileIo;
  readonly dir: string;
  readonly name: string;
  readonly dataPath: string;
  readonly mapPath: string;
  readonly data: IoFile;
  readonly map: IoFile;
  readonly blockSizeBytes: number;
  readonly storeId: Uint8Array;
  /** Slots on disk now (changed by {@link resizeStore}). */
  slotCount: number;
  /** Format version of the headers (upgraded by {@link settleHighWater}). */
  version: number;
  /** The map's valid high-water mark, or null (then every entry is read). */
  highWater: HighWaterMark | null;
}

/** What {@link openStoreFiles} needs. */
export interface StoreFilesOptions {
  dir: string;
  name: string;
  blockSizeBytes: number;
  /** Slots of a store created now. */
  slotCount: number;
}

const namePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const entriesPerRead = 16_384;
/**
 * Entries loaded between two turns of the event loop: a few milliseconds of work even where the
 * first inserts fault in fresh pages of the index (tens of microseconds each on this VM).
 */
const ENTRIES_PER_TURN = 512;

/** Resolves after the event loop ran whatever else was ready. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Checks the options every open needs; throws `invalid` with the reason. */
export function checkStoreOptions(options: StoreFilesOptions): void {
  if (!namePattern.test(options.name)) {
    throw invalid(`invalid store name "${options.name}": use letters, digits, '.', '_' or '-'`);
  }
  const size = options.blockSizeBytes;
  if (
    !Number.isSafeInteger(size) || size < BLOCK_SIZE_MIN_BYTES || size > BLOCK_SIZE_MAX_BYTES ||
    size % BLOCK_SIZE_MIN_BYTES !== 0
  ) {
    throw invalid(
      `invalid block size ${size}: ` +
        `a multiple of ${BLOCK_SIZE_MIN_BYTES} up to ${BLOCK_SIZE_MAX_BYTES}`,
    );
  }
  if (!Number.isSafeInteger(options.slotCount) || options.slotCount < 0) {
    throw invalid(`invalid store size: ${options.slotCount} slots`);
  }
  if (options.slotCount > STORE_SLOTS_MAX) {
    throw invalid(
      `store of ${options.slotCount} blocks exceeds the limit of ` +
        `${STORE_SLOTS_MAX} blocks per store`,
    );
  }
}

interface StorePaths {
  dir: string;
  name: string;
  dataPath: string;
  mapPath: string;
}

/** Opens (creating when absent) and locks the files of a store, checking their headers. */
export async function openStoreFiles(
  io: FileIo,
  options: StoreFilesOptions,
): Promise<StoreFiles> {
  checkStoreOptions(options);
  await io.mkdir(options.dir);
  const paths = {
    dir: options.dir,
    name: options.name,
    dataPath: `${options.dir}/data-${options.name}.blk`,
    mapPath: `${options.dir}/map-${options.name}.blk`,
  };
  const hadMap = await io.exists(paths.mapPath);
  if (hadMap && !(await io.exists(paths.dataPath))) {
    throw invalid(
      `${paths.mapPath} exists but ${paths.dataPath} is missing: refusing to open half a store`,
    );
  }
  const data = await io.open(paths.dataPath, { create: !hadMap });
  try {
    if (!(await data.tryLock())) {
      throw new TorusError(
        ErrorCode.Locked,
        `block store ${options.name} in ${options.dir} is open in another process`,
      );
    }
    if (await io.exists(paths.mapPath)) return await openExisting(io, paths, data, options);
    return await createStore(io, paths, data, options);
  } catch (error) {
    await data.close();
    throw error;
  }
}

async function createStore(
  io: FileIo,
  paths: StorePaths,
  data: IoFile,
  options: StoreFilesOptions,
): Promise<StoreFiles> {
  const tmpPath = `${paths.mapPath}.tmp`;
  if ((await data.sizeBytes()) > 0 && !(await io.exists(tmpPath))) {
    throw invalid(
      `${paths.dataPath} exists but ${paths.mapPath} is missing: the blocks in it cannot be ` +
        `found without their map; move the file away to start an empty store`,
    );
  }
  // The temporary map marks a creation in progress before the data file gets any content.
  const map = await io.open(tmpPath, { create: true, truncate: true });
  try {
    await io.syncDirectory(paths.dir);
    const header = {
      blockSizeBytes: options.blockSizeBytes,
      slotCount: options.slotCount,
      storeId: crypto.getRandomValues(new Uint8Array(STORE_ID_BYTES)),
    };
    await data.truncate(0);
    await sizeFiles(data, map, header);
    await data.write(encodeHeader({ ...header, magic: FileMagic.Data }), 0);
    await map.write(encodeHeader({ ...header, magic: FileMagic.Map }), 0);
    const highWater = { sequence: 1, slots: 0 };
    await map.write(encodeHighWaterMark(highWater), recordOffset(highWater));
    await data.datasync();
    await map.datasync();
    await io.rename(tmpPath, paths.mapPath);
    await io.syncDirectory(paths.dir);
    return { io, ...paths, data, map, ...header, version: FORMAT_VERSION, highWater };
  } catch (error) {
    await map.close();
    throw error;
  }
}

function recordOffset(mark: HighWaterMark): number {
  return HWM_RECORD_OFFSETS[mark.sequence % HWM_RECORD_OFFSETS.length]!;
}

/** Sets both file lengths for `slotCount` slots; the map is preallocated (it is small). */
async function sizeFiles(
  data: IoFile,
  map: IoFile,
  header: { blockSizeBytes: number; slotCount: number },
): Promise<void> {
  await data.truncate(slotOffsetBytes(header.slotCount, header.blockSizeBytes));
  const mapBytes = entryOffsetBytes(header.slotCount);
  await map.truncate(mapBytes);
  await map.allocate(0, mapBytes);
}

async function readHeaderPage(file: IoFile): Promise<Uint8Array> {
  const page = new Uint8Array(HEADER_BYTES);
  const got = await file.read(page, 0);
  return page.subarray(0, got);
}

async function openExisting(
  io: FileIo,
  paths: StorePaths,
  data: IoFile,
  options: StoreFilesOptions,
): Promise<StoreFiles> {
  const map = await io.open(paths.mapPath);
  try {
    const dataHeader = decodeHeader(await readHeaderPage(data), FileMagic.Data, paths.dataPath);
    const mapPage = await readHeaderPage(map);
    const mapHeader = decodeHeader(mapPage, FileMagic.Map, paths.mapPath);
    if (!sameBytes(dataHeader.storeId, mapHeader.storeId)) {
      throw invalid(`${paths.dataPath} and ${paths.mapPath} belong to different stores`);
    }
    if (
      dataHeader.blockSizeBytes !== options.blockSizeBytes ||
      mapHeader.blockSizeBytes !== dataHeader.blockSizeBytes
    ) {
      throw invalid(
        `block store ${paths.name} in ${paths.dir} has block size ` +
          `${dataHeader.blockSizeBytes}, not ${options.blockSizeBytes}`,
      );
    }
    // A resize interrupted between the two header writes leaves them apart: the smaller is true.
    const slotCount = Math.min(dataHeader.slotCount, mapHeader.slotCount);
    if (slotCount > STORE_SLOTS_MAX) {
      throw invalid(`${paths.mapPath} has ${slotCount} slots, over the limit ${STORE_SLOTS_MAX}`);
    }
    const blockSizeBytes = dataHeader.blockSizeBytes;
    await checkLength(data, paths.dataPath, slotOffsetBytes(slotCount, blockSizeBytes));
    await checkLength(map, paths.mapPath, entryOffsetBytes(slotCount));
    // Version 1 wrote no marks and would not have kept one true: its map page is ignored.
    const version = Math.min(dataHeader.version ?? 1, mapHeader.version ?? 1);
    const highWater = version >= 2 ? decodeHighWaterMark(mapPage) : null;
    return {
      io,
      ...paths,
      data,
      map,
      blockSizeBytes,
      storeId: dataHeader.storeId,
      slotCount,
      version,
      highWater,
    };
  } catch (error) {
    await map.close();
    throw error;
  }
}

async function checkLength(file: IoFile, path: string, neededBytes: number): Promise<void> {
  const sizeBytes = await file.sizeBytes();
  if (sizeBytes < neededBytes) {
    throw invalid(`${path} is truncated: ${sizeBytes} bytes where its header needs ${neededBytes}`);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

/** The index loaded from the map file. */
export interface LoadedIndex {
  /** Sized for max(slots on disk, slots wanted); Stored slots are the stored blocks. */
  index: SlotIndex;
  /** Entries read: every entry at or above this is zero on disk (or beyond the map). */
  scannedSlots: number;
  /** Highest generation on disk (0 for an empty map). */
  maxGeneration: number;
  /** Highest stored slot, -1 when empty. */
  highestUsedSlot: number;
  /** Entries that failed their checksum or slot check, now zeroed. */
  damagedEntries: number;
  /** Entries dropped because a newer verified entry of the same ref exists, now zeroed. */
  supersededEntries: number;
}

/**
 * Reads the entries below the high-water mark into a new index. A ref with several entries
 * keeps the highest generation whose block verifies against its checksum; the others are
 * zeroed and synced, as are damaged entries.
 */
export async function loadIndex(
  files: StoreFiles,
  wantedSlots: number,
  verifies: BlockVerifier = crcVerifier(files),
): Promise<LoadedIndex> {
  const index = new SlotIndex(Math.max(files.slotCount, wantedSlots));
  const scannedSlots = Math.min(files.slotCount, files.highWater?.slots ?? files.slotCount);
  const toZero: number[] = [];
  /** Duplicates of a ref, by the slot of its first entry. */
  const duplicates = new Map<number, number[]>();
  let maxGeneration = 0;
  const buffer = new EntryBuffer(entriesPerRead);
  for (let first = 0; first < scannedSlots; first += entriesPerRead) {
    const count = Math.min(entriesPerRead, scannedSlots - first);
    const bytes = buffer.bytes.subarray(0, count * ENTRY_BYTES);
    const got = await files.map.read(bytes, entryOffsetBytes(first));
    if (got !== bytes.length) throw invalid(`${files.mapPath} ended while reading the index`);
    for (let i = 0; i < count; i++) {
      // Let other work run now and then: the first inserts also fault in the table's pages.
      if (i > 0 && i % ENTRIES_PER_TURN === 0) await nextTurn();
      const slot = first + i;
      const state = buffer.check(i, slot);
      if (state === EntryState.Free) continue;
      if (state === EntryState.Damaged) {
        toZero.push(slot);
        continue;
      }
      buffer.copyTo(i, index, slot);
      maxGeneration = Math.max(maxGeneration, index.generations[slot]!);
      const existing = index.insertIfAbsent(slot);
      if (existing < 0) continue;
      if (duplicates.has(existing)) duplicates.get(existing)!.push(slot);
      else duplicates.set(existing, [slot]);
    }
  }
  const damagedEntries = toZero.length;
  for (const [first, others] of duplicates) {
    await resolveDuplicates(index, [first, ...others], toZero, verifies);
  }
  await zeroEntries(files.map, toZero);
  let highestUsedSlot = -1;
  for (let slot = scannedSlots - 1; slot >= 0 && highestUsedSlot < 0; slot--) {
    if (index.states[slot] === SlotState.Stored) highestUsedSlot = slot;
  }
  return {
    index,
    scannedSlots,
    maxGeneration,
    highestUsedSlot,
    damagedEntries,
    supersededEntries: toZero.length - damagedEntries,
  };
}

/** Whether the copy in `slot` (as the index describes it) verifies against its checksums. */
export type BlockVerifier = (slot: number, index: SlotIndex) => Promise<boolean>;

/** Verifies a copy by its entry's whole-block CRC (stores without sums records). */
export function crcVerifier(files: StoreFiles): BlockVerifier {
  const block = new Uint8Array(files.blockSizeBytes);
  return async (slot, index) => {
    const got = await files.data.read(block, slotOffsetBytes(slot, files.blockSizeBytes));
    if (got !== block.length) return false;
    const sums = sumsOfBlock(block, sectorSizeOf(files.blockSizeBytes), 0).sums;
    return matchesEntryCrc(block, sums, index.crcs[slot]!);
  };
}

/**
 * Keeps the newest of `slots` (entries of one ref; the first is indexed) whose block verifies;
 * every other slot goes to `toZero`. When none verifies, the newest stays, unreadable, as a lone
 * damaged copy does: the ref must answer `block_unavailable`, never vanish (a volume would read
 * a vanished block as zeros).
 */
async function resolveDuplicates(
  index: SlotIndex,
  slots: number[],
  toZero: number[],
  verifies: BlockVerifier,
): Promise<void> {
  const newestFirst = [...slots].sort((a, b) => index.generations[b]! - index.generations[a]!);
  let winner = -1;
  for (const slot of newestFirst) {
    if (await verifies(slot, index)) {
      winner = slot;
      break;
    }
  }
  if (winner < 0) winner = newestFirst[0]!;
  const indexed = slots[0]!;
  if (winner !== indexed) index.replace(indexed, winner);
  for (const slot of slots) {
    if (slot === winner) continue;
    index.states[slot] = SlotState.Free;
    toZero.push(slot);
  }
}

async function zeroEntries(map: IoFile, slots: readonly number[]): Promise<void> {
  if (slots.length === 0) return;
  const zero = new Uint8Array(ENTRY_BYTES);
  // One at a time: a handful of entries, and never two writes of one entry in flight.
  for (const slot of slots) await map.write(zero, entryOffsetBytes(slot));
  await map.datasync();
}

/**
 * Grows or shrinks the store to `slotCount` slots. A shrink must keep every stored block and the
 * spare slot. Both headers are rewritten and synced.
 */
export async function resizeStore(
  files: StoreFiles,
  slotCount: number,
  loaded: { usedBlocks: number; highestUsedSlot: number },
): Promise<void> {
  if (slotCount === files.slotCount) return;
  const minimum = Math.max(loaded.highestUsedSlot + 1, loaded.usedBlocks + SPARE_SLOTS);
  if (slotCount < files.slotCount && slotCount < minimum) {
    throw invalid(
      `cannot shrink block store ${files.name} to ${slotCount} blocks: it holds ` +
        `${loaded.usedBlocks} blocks up to slot ${loaded.highestUsedSlot} and keeps ` +
        `${SPARE_SLOTS} slot spare for replacing blocks; keep a size of at least ${minimum} blocks`,
    );
  }
  const header = {
    blockSizeBytes: files.blockSizeBytes,
    slotCount,
    storeId: files.storeId,
    version: files.version,
  };
  // Growing: lengths first, then headers. Shrinking: headers first, then lengths. Either way a
  // crash in between leaves files at least as long as their headers say.
  if (slotCount > files.slotCount) await sizeFiles(files.data, files.map, header);
  await writeHeaders(files, header);
  if (slotCount < files.slotCount) await sizeFiles(files.data, files.map, header);
  files.slotCount = slotCount;
}

async function writeHeaders(
  files: StoreFiles,
  header: { blockSizeBytes: number; slotCount: number; storeId: Uint8Array; version: number },
): Promise<void> {
  await files.data.write(encodeHeader({ ...header, magic: FileMagic.Data }), 0);
  // Only the first bytes of the map page: the high-water mark records share it.
  const mapHeader = encodeHeader({ ...header, magic: FileMagic.Map });
  await files.map.write(mapHeader.subarray(0, HWM_RECORD_OFFSETS[0]), 0);
  await files.data.datasync();
  await files.map.datasync();
}

/**
 * Leaves the map with a valid high-water mark no higher than its slot count, upgrading a version
 * 1 store first, and returns that mark. `scannedSlots` entries were read and every entry from
 * `highestUsedSlot + 1` on is zero.
 */
export async function settleHighWater(
  files: StoreFiles,
  loaded: { highestUsedSlot: number },
): Promise<HighWaterMark> {
  const current = files.highWater;
  if (current !== null && current.slots <= files.slotCount) return current;
  if (files.version < FORMAT_VERSION) {
    // Headers first: a version 2 map without a valid mark is simply read whole.
    await writeHeaders(files, { ...files, version: FORMAT_VERSION });
    files.version = FORMAT_VERSION;
  }
  const step = highWaterStepSlots(files.slotCount);
  const wanted = Math.ceil((loaded.highestUsedSlot + 1) / step) * step;
  const mark = {
    sequence: (current?.sequence ?? 0) + 1,
    slots: Math.min(files.slotCount, Math.max(wanted, loaded.highestUsedSlot + 1)),
  };
  await files.map.write(encodeHighWaterMark(mark), recordOffset(mark));
  await files.map.datasync();
  files.highWater = mark;
  return mark;
}

/** Releases the lock and closes both files. */
export async function closeStoreFiles(files: StoreFiles): Promise<void> {
  try {
    await files.map.close();
  } finally {
    await files.data.close();
  }
}
