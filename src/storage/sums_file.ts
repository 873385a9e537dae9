/**
 * SumsFile: `sums-<name>.blk`, one sums record per slot of the data file (sector_sums.ts), read
 * through a bounded cache. A 4 KiB read of a block needs its sector's sum, so recently used
 * records stay in memory (64 MiB of them by default) and the rest are read on demand.
 *
 * Layout: a 4096-byte header page (`[0:8]` `TORUSSUM`, `[8:12]` version 1, `[12:16]` block size,
 * `[16:20]` sector size, `[20:24]` record bytes, `[24:40]` store id, `[60:64]` CRC-32C of
 * `[0:60]`), then the record of slot `s` at `4096 + s * recordBytes`.
 *
 * Writes of one slot's record are issued in order and never overlap in flight; the cache holds
 * the newest record from the moment its write is issued, so reads see it at once.
 *
 * Preloading: after the store opens, {@link SumsFile.preload} reads the file from its start in
 * large chunks in the background and fills the cache until it is full, so reads after a restart
 * find their sums in memory instead of paying a second small disk read each (the sums are about
 * 1/1000 of the data: 64 MiB of cache covers about 55 GiB of 512 KiB blocks). It never replaces
 * a cached record (those are as new as or newer than the disk) and stops once the cache is full,
 * so it never evicts: a record written after a chunk was read is always still cached when the
 * chunk is decoded, and its stale bytes are skipped.
 * @module
 */

import { assert, crc32c, invalid } from "../core/mod.ts";
import type { FileIo, IoFile } from "./file_io.ts";
import {
  decodeSums,
  encodeSums,
  sectorSizeOf,
  type SumsRecord,
  sumsRecordBytesOf,
} from "./sector_sums.ts";

const HEADER_BYTES = 4096;
const MAGIC = "TORUSSUM";
const VERSION = 1;
/** Memory the cache of records may use. */
const CACHE_BYTES_MAX = 64 * 1024 * 1024;
/** Bytes of records one preload read takes. */
const PRELOAD_CHUNK_BYTES = 1024 * 1024;

/** See the module doc. */
export class SumsFile {
  readonly path: string;
  readonly sectorBytes: number;
  readonly sectors: number;
  readonly recordBytes: number;
  readonly #file: IoFile;
  readonly #cache = new Map<number, SumsRecord>();
  readonly #cacheMax: number;
  /** The last write issued for a slot, which the next one waits for. */
  readonly #writes = new Map<number, Promise<void>>();
  /** The slots the file has records for. */
  #slotCount = 0;
  #preloading: Promise<void> | null = null;
  #closing = false;

  private constructor(path: string, file: IoFile, blockSizeBytes: number) {
    this.path = path;
    this.#file = file;
    this.sectorBytes = sectorSizeOf(blockSizeBytes);
    this.sectors = blockSizeBytes / this.sectorBytes;
    this.recordBytes = sumsRecordBytesOf(blockSizeBytes);
    this.#cacheMax = Math.max(1024, Math.floor(CACHE_BYTES_MAX / (this.recordBytes + 64)));
  }

  /**
   * Creates the sums file of a store of `slotCount` slots: under a temporary name, with the
   * records `fill` writes (those of blocks already stored, for a store made before sums files),
   * synced, then renamed, so a crash never leaves a sums file without them.
   */
  static async create(
    io: FileIo,
    path: string,
    options: { storeId: Uint8Array; blockSizeBytes: number; slotCount: number },
    fill: (sums: SumsFile) => Promise<void>,
  ): Promise<void> {
    const temporary = `${path}.tmp`;
    const fresh = await io.open(temporary, { create: true, truncate: true });
    try {
      const sums = new SumsFile(temporary, fresh, options.blockSizeBytes);
      await fresh.write(sums.#header(options.storeId, options.blockSizeBytes), 0);
      await fresh.truncate(HEADER_BYTES + options.slotCount * sums.recordBytes);
      await fill(sums);
      await Promise.allSettled(sums.#writes.values());
      await fresh.sync();
    } finally {
      await fresh.close();
    }
    await io.rename(temporary, path);
    const slash = path.lastIndexOf("/");
    await io.syncDirectory(slash <= 0 ? "." : path.slice(0, slash));
  }

  /** Opens the sums file of a store of `slotCount` slots (it must exist: see {@link create}). */
  static async open(
    io: FileIo,
    path: string,
    options: { storeId: Uint8Array; blockSizeBytes: number; slotCount: number },
  ): Promise<SumsFile> {
    const file = await io.open(path);
    try {
      const sums = new SumsFile(path, file, options.blockSizeBytes);
      const page = new Uint8Array(HEADER_BYTES);
      const got = await file.read(page, 0);
      sums.#checkHeader(page.subarray(0, got), options);
      await sums.resize(options.slotCount);
      return sums;
    } catch (error) {
      await file.close();
      throw error;
    }
  }

  #header(storeId: Uint8Array, blockSizeBytes: number): Uint8Array {
    const page = new Uint8Array(HEADER_BYTES);
    const view = new DataView(page.buffer);
    for (let i = 0; i < 8; i++) page[i] = MAGIC.charCodeAt(i);
    view.setUint32(8, VERSION, true);
    view.setUint32(12, blockSizeBytes, true);
    view.setUint32(16, this.sectorBytes, true);
    view.setUint32(20, this.recordBytes, true);
    page.set(storeId, 24);
    view.setUint32(60, crc32c(page.subarray(0, 60)), true);
    return page;
  }

  #checkHeader(page: Uint8Array, options: { storeId: Uint8Array; blockSizeBytes: number }): void {
    if (page.length < HEADER_BYTES || String.fromCharCode(...page.subarray(0, 8)) !== MAGIC) {
      throw invalid(`${this.path} is not a torus sums file`);
    }
    const view = new DataView(page.buffer, page.byteOffset, page.byteLength);
    if (view.getUint32(60, true) !== crc32c(page.subarray(0, 60))) {
      throw invalid(`${this.path} has a damaged header (checksum mismatch)`);
    }
    const expected = this.#header(options.storeId, options.blockSizeBytes);
    if (!page.subarray(0, 60).every((byte, i) => byte === expected[i])) {
      throw invalid(`${this.path} belongs to another store or block size`);
    }
  }

  /** Sets the file's length for `slotCount` records. */
  async resize(slotCount: number): Promise<void> {
    this.#slotCount = slotCount;
    const bytes = HEADER_BYTES + slotCount * this.recordBytes;
    if ((await this.#file.sizeBytes()) !== bytes) await this.#file.truncate(bytes);
    for (const slot of this.#cache.keys()) if (slot >= slotCount) this.#cache.delete(slot);
  }

  /**
   * The cached record of `slot`, not a copy: the caller only reads it, before it yields. Undefined
   * when it is not cached (then {@link read}).
   */
  peek(slot: number): Readonly<SumsRecord> | undefined {
    const cached = this.#cache.get(slot);
    if (cached !== undefined) {
      this.#cache.delete(slot);
      this.#cache.set(slot, cached);
    }
    return cached;
  }

  /** The record of `slot` (a copy the caller may change). */
  async read(slot: number): Promise<SumsRecord> {
    const cached = this.#cache.get(slot);
    if (cached !== undefined) {
      // Most recently used last: Map iteration order is the eviction order.
      this.#cache.delete(slot);
      this.#cache.set(slot, cached);
      return { generation: cached.generation, sums: cached.sums.slice() };
    }
    const bytes = new Uint8Array(this.recordBytes);
    const got = await this.#file.read(bytes, HEADER_BYTES + slot * this.recordBytes);
    if (got !== bytes.length) throw invalid(`${this.path} ends before the record of slot ${slot}`);
    const record = decodeSums(bytes, this.sectors);
    // A write issued while this read ran is newer: keep the cache's record.
    const raced = this.#cache.get(slot);
    if (raced !== undefined) return { generation: raced.generation, sums: raced.sums.slice() };
    this.#remember(slot, record);
    return { generation: record.generation, sums: record.sums.slice() };
  }

  /**
   * Writes `record` as the whole record of `slot` (a new copy: its generation and every sum);
   * reads see it from now on.
   */
  write(slot: number, record: SumsRecord): Promise<void> {
    assert(record.sums.length === this.sectors, "sums record of the wrong size");
    const copy = { generation: record.generation, sums: record.sums.slice() };
    this.#cache.delete(slot);
    this.#remember(slot, copy);
    const bytes = new Uint8Array(this.recordBytes);
    encodeSums(copy, bytes);
    return this.#write(slot, bytes, HEADER_BYTES + slot * this.recordBytes);
  }

  /**
   * Writes only the sums of `sectors` (in order) from `record`, whose generation is already on
   * disk; reads see the whole new record from now on. A write that a power loss tears can then
   * only damage sums the journal's replay writes again, never those of untouched sectors.
   */
  writeSums(slot: number, record: SumsRecord, sectors: readonly number[]): Promise<void> {
    assert(record.sums.length === this.sectors, "sums record of the wrong size");
    this.#cache.delete(slot);
    this.#remember(slot, { generation: record.generation, sums: record.sums.slice() });
    const writes: Promise<void>[] = [];
    for (let i = 0; i < sectors.length;) {
      let j = i + 1;
      while (j < sectors.length && sectors[j] === sectors[j - 1]! + 1) j++;
      const bytes = new Uint8Array(4 * (j - i));
      const view = new DataView(bytes.buffer);
      for (let k = i; k < j; k++) view.setUint32(4 * (k - i), record.sums[sectors[k]!]!, true);
      const offset = HEADER_BYTES + slot * this.recordBytes + 8 + 4 * sectors[i]!;
      writes.push(this.#write(slot, bytes, offset));
      i = j;
    }
    return Promise.all(writes).then(() => {});
  }

  /** Issues a write of part of `slot`'s record after the ones already issued for it. */
  #write(slot: number, bytes: Uint8Array, offset: number): Promise<void> {
    const previous = this.#writes.get(slot);
    // Issued now when nothing of this slot is in flight (so the caller's I/O starts at its call).
    const write = previous === undefined
      ? this.#file.write(bytes, offset)
      : previous.catch(() => {}).then(() => this.#file.write(bytes, offset));
    this.#writes.set(slot, write);
    const forget = () => {
      if (this.#writes.get(slot) === write) this.#writes.delete(slot);
    };
    write.then(forget, forget);
    return write;
  }

  #remember(slot: number, record: SumsRecord): void {
    this.#cache.set(slot, record);
    if (this.#cache.size > this.#cacheMax) {
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
  }

  /**
   * Starts filling the cache in the background (see the module doc) with the records of the
   * slots below `endSlot` for which `wanted` says yes (slots in use); a failed read ends it
   * quietly (reads on demand report errors). Returns when it ends.
   */
  preload(endSlot: number, wanted: (slot: number) => boolean): Promise<void> {
    this.#preloading ??= this.#preload(endSlot, wanted).catch(() => {});
    return this.#preloading;
  }

  async #preload(endSlot: number, wanted: (slot: number) => boolean): Promise<void> {
    const recordsPerChunk = Math.max(1, Math.floor(PRELOAD_CHUNK_BYTES / this.recordBytes));
    const chunk = new Uint8Array(recordsPerChunk * this.recordBytes);
    const end = Math.min(endSlot, this.#slotCount);
    for (let first = 0; first < end; first += recordsPerChunk) {
      if (this.#closing || this.#cache.size >= this.#cacheMax) return;
      const count = Math.min(recordsPerChunk, end - first);
      const bytes = chunk.subarray(0, count * this.recordBytes);
      const got = await this.#file.read(bytes, HEADER_BYTES + first * this.recordBytes);
      const whole = Math.min(count, Math.floor(got / this.recordBytes));
      for (let i = 0; i < whole; i++) {
        const slot = first + i;
        if (this.#closing || this.#cache.size >= this.#cacheMax) return;
        // Cached or being written: the cache has this record as new as the disk or newer.
        if (slot >= this.#slotCount || this.#cache.has(slot) || this.#writes.has(slot)) continue;
        if (!wanted(slot)) continue;
        const at = i * this.recordBytes;
        this.#cache.set(slot, decodeSums(bytes.subarray(at, at + this.recordBytes), this.sectors));
      }
      if (whole < count) return;
    }
  }

  /** Records in the cache (for tests and status). */
  get cachedRecords(): number {
    return this.#cache.size;
  }

  /** Makes every completed write durable. */
  datasync(): Promise<void> {
    return this.#file.datasync();
  }

  /** Waits for writes in flight and closes the file. */
  async close(): Promise<void> {
    this.#closing = true;
    await this.#preloading;
    await Promise.allSettled(this.#writes.values());
    await this.#file.close();
  }
}
