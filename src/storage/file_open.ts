/**
 * Opening a file store: creating its two files, checking their headers, taking the lock,
 * rebuilding the index from the map file and growing or shrinking the store. Used only by
 * FileBlockStore.open.
 *
 * Invariants:
 * - A store is opened by one process at a time (flock on the data file, `locked` otherwise).
 * - Creation writes the map under a temporary name and renames it last, so a store whose map
 *   file exists is complete; a data file without map is only reused when it is empty or the
 *   temporary map shows an interrupted creation.
 * - The index that leaves here has one verified entry per ref: damaged entries and the losers of
 *   duplicate entries are zeroed on disk (and synced) before the store serves anything.
 * @module
 */

import {
  BLOCK_SIZE_MAX_BYTES,
  BLOCK_SIZE_MIN_BYTES,
  crc32,
  ErrorCode,
  invalid,
  STORE_SLOTS_MAX,
  TorusError,
} from "../core/mod.ts";
import {
  close,
  fallocate,
  fdatasync,
  fileSizeBytes,
  FlockOps,
  fsync,
  ftruncate,
  open,
  OpenFlags,
  preadFull,
  pwriteFullSync,
  tryFlock,
  unlockFlock,
} from "../sys/mod.ts";
import {
  decodeEntry,
  decodeHeader,
  encodeHeader,
  ENTRY_BYTES,
  EntryState,
  FileMagic,
  HEADER_BYTES,
  type IndexEntry,
  STORE_ID_BYTES,
} from "./file_format.ts";
import { slotOffsetBytes } from "./slot_file.ts";

/** The open files of a store and what their headers say. */
export interface StoreFiles {
  readonly dir: string;
  readonly name: string;
  readonly dataPath: string;
  readonly mapPath: string;
  readonly dataFd: number;
  readonly mapFd: number;
  readonly blockSizeBytes: number;
  readonly storeId: Uint8Array;
  /** Slots on disk now (changed by {@link resizeStore}). */
  slotCount: number;
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
const entriesPerChunk = 65_536;

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

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** Opens (creating when absent) and locks the files of a store, checking their headers. */
export async function openStoreFiles(options: StoreFilesOptions): Promise<StoreFiles> {
  checkStoreOptions(options);
  await Deno.mkdir(options.dir, { recursive: true });
  const dataPath = `${options.dir}/data-${options.name}.blk`;
  const mapPath = `${options.dir}/map-${options.name}.blk`;
  const hadMap = await exists(mapPath);
  if (hadMap && !(await exists(dataPath))) {
    throw invalid(`${mapPath} exists but ${dataPath} is missing: refusing to open half a store`);
  }
  const dataFd = open(dataPath, OpenFlags.O_RDWR | (hadMap ? 0 : OpenFlags.O_CREAT));
  try {
    if (!tryFlock(dataFd, FlockOps.LOCK_EX)) {
      throw new TorusError(
        ErrorCode.Locked,
        `block store ${options.name} in ${options.dir} is open in another process`,
      );
    }
    const paths = { dir: options.dir, name: options.name, dataPath, mapPath };
    if (await exists(mapPath)) return await openExisting(paths, dataFd, options);
    return await createStore(paths, dataFd, options);
  } catch (error) {
    // Unlocking a file this call did not lock is harmless.
    unlockFlock(dataFd);
    close(dataFd);
    throw error;
  }
}

interface StorePaths {
  dir: string;
  name: string;
  dataPath: string;
  mapPath: string;
}

async function syncDirectory(dir: string): Promise<void> {
  const fd = open(dir, OpenFlags.O_RDONLY);
  try {
    await fsync(fd);
  } finally {
    close(fd);
  }
}

async function createStore(
  paths: StorePaths,
  dataFd: number,
  options: StoreFilesOptions,
): Promise<StoreFiles> {
  const tmpPath = `${paths.mapPath}.tmp`;
  if (fileSizeBytes(dataFd) > 0 && !(await exists(tmpPath))) {
    throw invalid(
      `${paths.dataPath} exists but ${paths.mapPath} is missing: the blocks in it cannot be ` +
        `found without their map; move the file away to start an empty store`,
    );
  }
  // The temporary map marks a creation in progress before the data file gets any content.
  const mapFd = open(tmpPath, OpenFlags.O_RDWR | OpenFlags.O_CREAT | OpenFlags.O_TRUNC);
  try {
    await syncDirectory(paths.dir);
    const header = {
      blockSizeBytes: options.blockSizeBytes,
      slotCount: options.slotCount,
      storeId: crypto.getRandomValues(new Uint8Array(STORE_ID_BYTES)),
    };
    ftruncate(dataFd, 0);
    sizeFiles(dataFd, mapFd, header);
    pwriteFullSync(dataFd, encodeHeader({ ...header, magic: FileMagic.Data }), 0);
    pwriteFullSync(mapFd, encodeHeader({ ...header, magic: FileMagic.Map }), 0);
    await fdatasync(dataFd);
    await fdatasync(mapFd);
    await Deno.rename(tmpPath, paths.mapPath);
    await syncDirectory(paths.dir);
    return { ...paths, dataFd, mapFd, ...header };
  } catch (error) {
    close(mapFd);
    throw error;
  }
}

/** Sets both file lengths for `slotCount` slots; the map is preallocated (it is small). */
function sizeFiles(
  dataFd: number,
  mapFd: number,
  header: { blockSizeBytes: number; slotCount: number },
): void {
  ftruncate(dataFd, slotOffsetBytes(header.slotCount, header.blockSizeBytes));
  const mapBytes = HEADER_BYTES + header.slotCount * ENTRY_BYTES;
  ftruncate(mapFd, mapBytes);
  fallocate(mapFd, 0, mapBytes);
}

async function readHeaderPage(fd: number): Promise<Uint8Array> {
  const page = new Uint8Array(HEADER_BYTES);
  const got = await preadFull(fd, page, 0);
  return page.subarray(0, got);
}

async function openExisting(
  paths: StorePaths,
  dataFd: number,
  options: StoreFilesOptions,
): Promise<StoreFiles> {
  const mapFd = open(paths.mapPath, OpenFlags.O_RDWR);
  try {
    const data = decodeHeader(await readHeaderPage(dataFd), FileMagic.Data, paths.dataPath);
    const map = decodeHeader(await readHeaderPage(mapFd), FileMagic.Map, paths.mapPath);
    if (!sameBytes(data.storeId, map.storeId)) {
      throw invalid(`${paths.dataPath} and ${paths.mapPath} belong to different stores`);
    }
    if (
      data.blockSizeBytes !== options.blockSizeBytes || map.blockSizeBytes !== data.blockSizeBytes
    ) {
      throw invalid(
        `block store ${paths.name} in ${paths.dir} has block size ${data.blockSizeBytes}, ` +
          `not ${options.blockSizeBytes}`,
      );
    }
    // A resize interrupted between the two header writes leaves them apart: the smaller is true.
    const slotCount = Math.min(data.slotCount, map.slotCount);
    checkLength(dataFd, paths.dataPath, slotOffsetBytes(slotCount, data.blockSizeBytes));
    checkLength(mapFd, paths.mapPath, HEADER_BYTES + slotCount * ENTRY_BYTES);
    if (slotCount > STORE_SLOTS_MAX) {
      throw invalid(`${paths.mapPath} has ${slotCount} slots, over the limit ${STORE_SLOTS_MAX}`);
    }
    return {
      ...paths,
      dataFd,
      mapFd,
      blockSizeBytes: data.blockSizeBytes,
      storeId: data.storeId,
      slotCount,
    };
  } catch (error) {
    close(mapFd);
    throw error;
  }
}

function checkLength(fd: number, path: string, neededBytes: number): void {
  const sizeBytes = fileSizeBytes(fd);
  if (sizeBytes < neededBytes) {
    throw invalid(`${path} is truncated: ${sizeBytes} bytes where its header needs ${neededBytes}`);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

/** The index rebuilt from the map file. */
export interface ScanResult {
  /** One entry per stored ref. */
  entries: Map<string, IndexEntry>;
  /** Highest generation on disk (0 for an empty map). */
  maxGeneration: number;
  /** Entries that failed their checksum or slot check, now zeroed. */
  damagedEntries: number;
  /** Entries dropped because a newer verified entry of the same ref exists, now zeroed. */
  supersededEntries: number;
}

/**
 * Reads every index entry. A ref with several entries keeps the highest generation whose block
 * verifies against its checksum; the others are zeroed, as are damaged entries.
 */
export async function scanIndex(files: StoreFiles): Promise<ScanResult> {
  const winners = new Map<string, IndexEntry>();
  const duplicates = new Map<string, IndexEntry[]>();
  const toZero: number[] = [];
  let maxGeneration = 0;
  const chunk = new Uint8Array(entriesPerChunk * ENTRY_BYTES);
  const words = new Uint32Array(chunk.buffer);
  for (let first = 0; first < files.slotCount; first += entriesPerChunk) {
    const count = Math.min(entriesPerChunk, files.slotCount - first);
    const bytes = chunk.subarray(0, count * ENTRY_BYTES);
    const got = await preadFull(files.mapFd, bytes, HEADER_BYTES + first * ENTRY_BYTES);
    if (got !== bytes.length) throw invalid(`${files.mapPath} ended while reading the index`);
    for (let i = 0; i < count; i++) {
      // Most entries of a young store are free: skip them without decoding.
      if (isZeroEntry(words, i)) continue;
      const decoded = decodeEntry(bytes, i * ENTRY_BYTES, first + i);
      if (decoded.state === EntryState.Damaged) toZero.push(first + i);
      if (decoded.state !== EntryState.Used) continue;
      const entry = decoded.entry;
      maxGeneration = Math.max(maxGeneration, entry.generation);
      const key = entry.ref.key;
      const previous = winners.get(key);
      if (previous === undefined) winners.set(key, entry);
      else duplicates.set(key, [...(duplicates.get(key) ?? [previous]), entry]);
    }
  }
  const damagedEntries = toZero.length;
  for (const [key, candidates] of duplicates) {
    const winner = await pickVerified(files, candidates);
    if (winner === null) winners.delete(key);
    else winners.set(key, winner);
    for (const candidate of candidates) if (candidate !== winner) toZero.push(candidate.slot);
  }
  await zeroEntries(files, toZero);
  return {
    entries: winners,
    maxGeneration,
    damagedEntries,
    supersededEntries: toZero.length - damagedEntries,
  };
}

const wordsPerEntry = ENTRY_BYTES / 4;

function isZeroEntry(words: Uint32Array, entry: number): boolean {
  const first = entry * wordsPerEntry;
  for (let i = first; i < first + wordsPerEntry; i++) if (words[i] !== 0) return false;
  return true;
}

/** The newest candidate whose data verifies, or null. */
async function pickVerified(
  files: StoreFiles,
  candidates: IndexEntry[],
): Promise<IndexEntry | null> {
  const block = new Uint8Array(files.blockSizeBytes);
  const newestFirst = [...candidates].sort((a, b) => b.generation - a.generation);
  for (const candidate of newestFirst) {
    const offset = slotOffsetBytes(candidate.slot, files.blockSizeBytes);
    const got = await preadFull(files.dataFd, block, offset);
    if (got === block.length && crc32(block) === candidate.crc32) return candidate;
  }
  return null;
}

async function zeroEntries(files: StoreFiles, slots: readonly number[]): Promise<void> {
  if (slots.length === 0) return;
  const zero = new Uint8Array(ENTRY_BYTES);
  for (const slot of slots) pwriteFullSync(files.mapFd, zero, HEADER_BYTES + slot * ENTRY_BYTES);
  await fdatasync(files.mapFd);
}

/**
 * Grows or shrinks the store to `slotCount` slots. Shrinking drops only free slots: a block at
 * or above the new end refuses the shrink. Both headers are rewritten and synced.
 */
export async function resizeStore(
  files: StoreFiles,
  slotCount: number,
  highestUsedSlot: number,
): Promise<void> {
  if (slotCount === files.slotCount) return;
  if (slotCount <= highestUsedSlot) {
    throw invalid(
      `cannot shrink block store ${files.name} to ${slotCount} blocks: slot ${highestUsedSlot} ` +
        `holds a block; keep a size of at least ${highestUsedSlot + 1} blocks`,
    );
  }
  const header = { blockSizeBytes: files.blockSizeBytes, slotCount, storeId: files.storeId };
  // Growing: lengths first, then headers. Shrinking: headers first, then lengths. Either way a
  // crash in between leaves files at least as long as their headers say.
  if (slotCount > files.slotCount) sizeFiles(files.dataFd, files.mapFd, header);
  pwriteFullSync(files.dataFd, encodeHeader({ ...header, magic: FileMagic.Data }), 0);
  pwriteFullSync(files.mapFd, encodeHeader({ ...header, magic: FileMagic.Map }), 0);
  await fdatasync(files.dataFd);
  await fdatasync(files.mapFd);
  if (slotCount < files.slotCount) sizeFiles(files.dataFd, files.mapFd, header);
  files.slotCount = slotCount;
}

/** Releases the lock and closes both files. */
export function closeStoreFiles(files: StoreFiles): void {
  try {
    close(files.mapFd);
    unlockFlock(files.dataFd);
  } finally {
    close(files.dataFd);
  }
}
