/**
 * FileBlockStore: the on-disk engine of `torus serve`. Blocks live in fixed-size slots of
 * `data-<name>.blk`; `map-<name>.blk` holds one checksummed 64-byte entry per slot (format in
 * file_format.ts). The whole index is kept in memory (a Map from ref to slot) and rebuilt from
 * the map file at open.
 *
 * Crash safety (a process kill or a power loss at any instant):
 * - A put writes the block into a free slot first and its index entry only after that write
 *   completed, so an entry never names a slot whose write was still running in this process.
 *   Every entry carries the block's CRC-32 and every read verifies it: bytes that a power loss
 *   left half-written are answered `block_unavailable` (and the entry dropped), never returned.
 * - Replacing a ref writes the new copy into another slot with a higher generation; the old slot
 *   keeps its entry until a flush has made the new entry durable, then its entry is zeroed and
 *   synced, and only then is the slot reused. Reopening therefore finds the old or the new copy
 *   (the highest generation that verifies wins), never a mix and never another block's bytes.
 * - A delete zeroes the entries of the ref (current and not yet retired old copies); the slot is
 *   reusable at once, because its next user overwrites that same entry.
 * - `flush` = fdatasync of the data file, then of the map file (then the retirement above).
 *   A failed sync puts the store in a failed state (every later call throws `unavailable`): after
 *   a writeback error the kernel may have dropped dirty pages, so nothing can be promised.
 *
 * Concurrency (many calls in flight; the event loop is the only thread touching this state):
 * - Puts and deletes of one ref take effect in call order: each gets a generation when called,
 *   and a put whose write finishes after a later put or delete of the same ref was called is
 *   dropped (it still resolves; its bytes were superseded). A delete while a put of the same ref
 *   is in flight cancels that put and resolves even if nothing was stored yet.
 * - A get reads the version current when it was called; if that slot is reused meanwhile the
 *   checksum shows it and the get retries on the new state (or answers `not_exist`).
 * - Index writes are small synchronous page-cache writes, so "check, write entry, publish" is
 *   atomic with respect to other calls; block bytes go through nonblocking I/O (slot_file.ts).
 *
 * Slot accounting: every slot is exactly one of free, stored (in the index), held by a put in
 * flight, or retiring (an old copy awaiting a flush). One slot is kept spare, so replacing a block
 * in a full store always has room; `totalBlocks()` is the slot count minus that spare.
 * @module
 */

import {
  assert,
  type BlockRef,
  blockUnavailable,
  closed,
  crc32,
  ErrorCode,
  errorMessage,
  invalid,
  logger,
  notExist,
  TorusError,
  verifyEnabled,
} from "../core/mod.ts";
import { fdatasync, pinned, pwriteFullSync, tuneMallocForLargeBuffers } from "../sys/mod.ts";
import type { BlockCallOptions, BlockStore, RangeWriteOptions } from "./block_store.ts";
import { checkBlockRange } from "./range.ts";
import { encodeEntry, ENTRY_BYTES, HEADER_BYTES, type IndexEntry } from "./file_format.ts";
import {
  closeStoreFiles,
  openStoreFiles,
  resizeStore,
  scanIndex,
  type ScanResult,
  type StoreFiles,
} from "./file_open.ts";
import { DataIo, MmapSlotFile, PreadSlotFile, type SlotFile } from "./slot_file.ts";

export { DataIo } from "./slot_file.ts";

/** Options of {@link FileBlockStore.open}. */
export interface FileBlockStoreOptions {
  /** Directory of the two files (created when missing). */
  dir: string;
  /** Store name, part of the file names. Default `current`. */
  name?: string;
  /** Size of every block; a store is refused when opened with another size. */
  blockSizeBytes: number;
  /** Wanted size of the data area: floor(sizeBytes / blockSizeBytes) slots. */
  sizeBytes: number;
  /** How block bytes move (docs/adr/0001-block-file-io.md). Default `pread`. */
  dataIo?: DataIo;
}

/** Slots never counted as capacity, so a replacement always finds room. */
export const SPARE_SLOTS = 1;
/** Staging buffers kept for reuse by puts (each one block). */
const STAGING_BUFFERS_MAX = 16;
/** Reads of a block that keeps being replaced under a get before it gives up. */
const READ_ATTEMPTS_MAX = 8;

const log = logger("storage");

/** One stored version of a ref. A new object per version: identity tells versions apart. */
interface Stored extends IndexEntry {
  /** Slots of older copies of this ref whose entries stay on disk until the next flush. */
  oldSlots: number[] | null;
}

/** Puts of one ref in flight. */
interface PutsInFlight {
  count: number;
  /** Generation of the newest of these puts. */
  latestGeneration: number;
  /** Puts with a lower generation were superseded by a delete. */
  supersededBelow: number;
  /** Whether these puts hold one unit of capacity for a ref not yet in the index. */
  reserved: boolean;
}

/** A BlockStore over a data file and an index file; see the module doc. */
export class FileBlockStore implements BlockStore {
  readonly kind = "file";
  readonly name: string;
  readonly blockSizeBytes: number;
  /** The data I/O variant in use. */
  readonly dataIo: DataIo;
  readonly #files: StoreFiles;
  readonly #slots: SlotFile;
  readonly #slotCount: number;
  readonly #capacity: number;
  readonly #index = new Map<string, Stored>();
  readonly #free: Uint32Array;
  #freeTop = 0;
  #retiring: number[] = [];
  #retiringInFlush = 0;
  readonly #retiringOwner = new Map<number, string>();
  #nextGeneration: number;
  readonly #putsInFlight = new Map<string, PutsInFlight>();
  #reservedNew = 0;
  #slotsHeld = 0;
  #slotWaiters: (() => void)[] = [];
  #opsInFlight = 0;
  #drainWaiters: (() => void)[] = [];
  #flushRunning: Promise<void> | null = null;
  #flushQueued: Promise<void> | null = null;
  #closing = false;
  #closePromise: Promise<void> | null = null;
  #failure: TorusError | null = null;
  readonly #staging: Uint8Array[] = [];
  readonly #entryBytes = pinned(new Uint8Array(ENTRY_BYTES));
  readonly #zeroEntryBytes = pinned(new Uint8Array(ENTRY_BYTES));

  /** Use {@link FileBlockStore.open}. */
  private constructor(files: StoreFiles, slots: SlotFile, scan: ScanResult) {
    this.name = files.name;
    this.blockSizeBytes = files.blockSizeBytes;
    this.dataIo = slots.dataIo;
    this.#files = files;
    this.#slots = slots;
    this.#slotCount = files.slotCount;
    this.#capacity = Math.max(0, files.slotCount - SPARE_SLOTS);
    this.#nextGeneration = scan.maxGeneration + 1;
    const used = new Uint8Array(files.slotCount);
    for (const [key, entry] of scan.entries) {
      this.#index.set(key, { ...entry, oldSlots: null });
      used[entry.slot] = 1;
    }
    // Pushed from the top down, so puts fill the file from its start.
    this.#free = new Uint32Array(files.slotCount);
    for (let slot = files.slotCount - 1; slot >= 0; slot--) {
      if (used[slot] === 0) this.#free[this.#freeTop++] = slot;
    }
    this.#checkInvariants();
  }

  /**
   * Opens the store `<dir>/{data,map}-<name>.blk`, creating it when absent, growing it when
   * `sizeBytes` asks for more slots and shrinking it when the dropped slots are all free.
   */
  static async open(options: FileBlockStoreOptions): Promise<FileBlockStore> {
    const name = options.name ?? "current";
    if (!Number.isSafeInteger(options.sizeBytes) || options.sizeBytes < 0) {
      throw invalid(`invalid store size: ${options.sizeBytes} bytes`);
    }
    const slotCount = Math.floor(options.sizeBytes / options.blockSizeBytes);
    // Every get returns a fresh block-sized buffer: keep their memory out of mmap/munmap churn.
    tuneMallocForLargeBuffers();
    const files = await openStoreFiles({
      dir: options.dir,
      name,
      blockSizeBytes: options.blockSizeBytes,
      slotCount,
    });
    try {
      const scan = await scanIndex(files);
      if (scan.damagedEntries + scan.supersededEntries > 0) {
        log.notice(
          `store ${name}: cleared ${scan.damagedEntries} damaged and ` +
            `${scan.supersededEntries} superseded index entries`,
        );
      }
      let highestUsedSlot = -1;
      for (const entry of scan.entries.values()) {
        highestUsedSlot = Math.max(highestUsedSlot, entry.slot);
      }
      await resizeStore(files, slotCount, highestUsedSlot);
      const slots = options.dataIo === DataIo.Mmap
        ? new MmapSlotFile(files.dataFd, { blockSizeBytes: files.blockSizeBytes, slotCount })
        : new PreadSlotFile(files.dataFd, files.blockSizeBytes);
      return new FileBlockStore(files, slots, scan);
    } catch (error) {
      closeStoreFiles(files);
      throw error;
    }
  }

  /** Path of the data file. */
  get dataPath(): string {
    return this.#files.dataPath;
  }

  /** Path of the index (map) file. */
  get mapPath(): string {
    return this.#files.mapPath;
  }

  #checkUsable(): void {
    if (this.#closing) throw closed(`block store ${this.name} is closed`);
    if (this.#failure !== null) throw this.#failure;
  }

  async getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    this.#checkUsable();
    options?.signal?.throwIfAborted();
    this.#opsInFlight++;
    try {
      for (let attempt = 1;; attempt++) {
        const stored = this.#index.get(ref.key);
        if (stored === undefined) throw notExist(`block ${ref} not found`);
        const block = await this.#readVerified(ref, stored);
        if (block !== null) {
          if (
            options?.expectedCrc32 !== undefined && stored.crc32 !== options.expectedCrc32 >>> 0
          ) {
            throw blockUnavailable(`block ${ref} does not match its expected CRC`);
          }
          return block;
        }
        if (attempt >= READ_ATTEMPTS_MAX) {
          throw blockUnavailable(`block ${ref} kept changing while being read`);
        }
      }
    } finally {
      this.#opDone();
    }
  }

  /**
   * Reads `stored` into a fresh buffer. Null when the version changed while reading (retry);
   * throws `block_unavailable` (and drops the entry) when the bytes fail their checksum.
   */
  async #readVerified(ref: BlockRef, stored: Stored): Promise<Uint8Array | null> {
    const block = new Uint8Array(this.blockSizeBytes);
    try {
      await this.#slots.read(stored.slot, block);
    } catch (error) {
      if (this.#index.get(ref.key) !== stored) return null;
      throw blockUnavailable(`reading block ${ref} failed: ${errorMessage(error)}`, {
        cause: error,
      });
    }
    if (crc32(block) === stored.crc32) return block;
    // A changed index means the slot was reused under us, not that the disk is bad.
    if (this.#index.get(ref.key) !== stored) return null;
    this.#removeStored(stored);
    this.#checkInvariants();
    throw blockUnavailable(`block ${ref} in slot ${stored.slot} failed its checksum; dropped`);
  }

  async putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    this.#checkUsable();
    options?.signal?.throwIfAborted();
    if (data.length > this.blockSizeBytes) {
      throw invalid(`block of ${data.length} bytes exceeds block size ${this.blockSizeBytes}`);
    }
    const key = ref.key;
    // A new ref reserves capacity once, however many puts of it are in flight.
    const reserve = !this.#index.has(key) && !(this.#putsInFlight.get(key)?.reserved ?? false);
    if (reserve && this.#index.size + this.#reservedNew >= this.#capacity) {
      throw new TorusError(
        ErrorCode.OutOfSpace,
        `block store ${this.name} is full (${this.#capacity} blocks)`,
      );
    }
    // Everything up to the first await runs at call time: the caller's bytes are copied now.
    const block = this.#takeStaging(data);
    const generation = this.#nextGeneration++;
    const flight = this.#beginPut(key);
    flight.latestGeneration = generation;
    if (reserve) {
      flight.reserved = true;
      this.#reservedNew++;
    }
    this.#opsInFlight++;
    try {
      await this.#writeAndInstall(ref, block, generation, flight);
    } finally {
      this.#endPut(key, flight);
      this.#giveStaging(block);
      this.#opDone();
      this.#checkInvariants();
    }
  }

  async #writeAndInstall(
    ref: BlockRef,
    block: Uint8Array,
    generation: number,
    flight: PutsInFlight,
  ): Promise<void> {
    let slot = this.#takeFree();
    if (slot < 0) slot = await this.#waitForSlot();
    let installed = false;
    try {
      const written = this.#slots.write(slot, block);
      // The checksum is computed while a worker thread writes the same (unchanging) bytes.
      const sums = { crc32: crc32(block) };
      await written;
      if (this.#failure !== null) throw this.#failure;
      const current = this.#index.get(ref.key);
      if ((current?.generation ?? 0) > generation || flight.supersededBelow > generation) return;
      this.#install({ ref, slot, generation, ...sums, oldSlots: null }, current);
      installed = true;
      if (current === undefined && flight.reserved) {
        // The ref now counts in the index; its reservation is no longer needed.
        flight.reserved = false;
        this.#reservedNew--;
      }
    } finally {
      this.#slotsHeld--;
      if (!installed) this.#releaseSlot(slot);
      this.#wakeSlotWaiters();
    }
  }

  /** Writes the entry of `stored`, then publishes it; `previous` starts retiring. */
  #install(stored: Stored, previous: Stored | undefined): void {
    encodeEntry(stored, this.#entryBytes);
    this.#writeEntry(stored.slot, this.#entryBytes);
    if (previous !== undefined) {
      stored.oldSlots = [...(previous.oldSlots ?? []), previous.slot];
      this.#retiring.push(previous.slot);
      this.#retiringOwner.set(previous.slot, stored.ref.key);
    }
    this.#index.set(stored.ref.key, stored);
  }

  #writeEntry(slot: number, bytes: Uint8Array): void {
    try {
      pwriteFullSync(this.#files.mapFd, bytes, HEADER_BYTES + slot * ENTRY_BYTES);
    } catch (error) {
      throw this.#fail(`writing the index entry of slot ${slot} failed`, error);
    }
  }

  /** Enters the failed state (see the module doc) and returns the error to throw. */
  #fail(what: string, error: unknown): TorusError {
    this.#failure ??= new TorusError(
      ErrorCode.Unavailable,
      `block store ${this.name} failed: ${what}: ${errorMessage(error)}`,
      { cause: error },
    );
    log.error(this.#failure.message);
    return this.#failure;
  }

  // Range operations as whole-block read-modify-write, serialized per ref. Correct but slow:
  // the journaled path of docs/adr/0004-block-volume-write-path.md replaces it.
  readonly #rangeChains = new Map<string, Promise<void>>();

  async readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    checkBlockRange(this.blockSizeBytes, offsetBytes, into.length);
    const block = await this.getBlock(ref, options);
    into.set(block.subarray(offsetBytes, offsetBytes + into.length));
  }

  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    const copy = data.slice();
    return this.#rangeChange(ref, offsetBytes, copy.length, options, (block) => {
      block.set(copy, offsetBytes);
    });
  }

  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.#rangeChange(ref, offsetBytes, lengthBytes, options, (block) => {
      block.fill(0, offsetBytes, offsetBytes + lengthBytes);
    });
  }

  #rangeChange(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options: RangeWriteOptions | undefined,
    change: (block: Uint8Array) => void,
  ): Promise<void> {
    try {
      this.#checkUsable();
      checkBlockRange(this.blockSizeBytes, offsetBytes, lengthBytes);
    } catch (error) {
      return Promise.reject(error);
    }
    const key = ref.key;
    const previous = this.#rangeChains.get(key) ?? Promise.resolve();
    const run = previous.catch(() => {}).then(async () => {
      let block: Uint8Array;
      if (options?.fresh || !this.#index.has(key)) block = new Uint8Array(this.blockSizeBytes);
      else block = await this.getBlock(ref, options);
      change(block);
      await this.putBlock(ref, block, options);
    });
    const tail = run.catch(() => {});
    this.#rangeChains.set(key, tail);
    void tail.then(() => {
      if (this.#rangeChains.get(key) === tail) this.#rangeChains.delete(key);
    });
    return run;
  }

  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
      return Promise.resolve(this.#index.has(ref.key));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
      const key = ref.key;
      const flight = this.#putsInFlight.get(key);
      // Whether a put of this ref is in flight that no earlier delete has cancelled yet.
      const cancelsPut = flight !== undefined && flight.latestGeneration > flight.supersededBelow;
      if (flight !== undefined) {
        // The puts in flight will not install: their capacity reservation goes now.
        flight.supersededBelow = this.#nextGeneration++;
        if (flight.reserved) {
          flight.reserved = false;
          this.#reservedNew--;
        }
      }
      const stored = this.#index.get(key);
      if (stored === undefined) {
        if (cancelsPut) return Promise.resolve();
        throw notExist(`block ${ref} not found`);
      }
      this.#removeStored(stored);
      this.#checkInvariants();
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Zeroes every entry of `stored`'s ref and frees its slot (old copies keep retiring). */
  #removeStored(stored: Stored): void {
    this.#writeEntry(stored.slot, this.#zeroEntryBytes);
    for (const old of stored.oldSlots ?? []) this.#writeEntry(old, this.#zeroEntryBytes);
    this.#index.delete(stored.ref.key);
    this.#releaseSlot(stored.slot);
    this.#wakeSlotWaiters();
  }

  async *blockRefs(): AsyncIterable<BlockRef> {
    this.#checkUsable();
    const snapshot = Array.from(this.#index.values(), (stored) => stored.ref);
    for (const ref of snapshot) yield ref;
  }

  usedBlocks(): number {
    this.#checkUsable();
    return this.#index.size;
  }

  totalBlocks(): number {
    this.#checkUsable();
    return this.#capacity;
  }

  flush(): Promise<void> {
    try {
      this.#checkUsable();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#flushNow();
  }

  /**
   * Runs a flush that starts after this call. At most one runs and one waits: callers arriving
   * while one waits share it, as it will cover their completed operations too.
   */
  #flushNow(): Promise<void> {
    if (this.#flushQueued !== null) return this.#flushQueued;
    if (this.#flushRunning === null) return this.#startFlush();
    const queued = this.#flushRunning.catch(() => {}).then(() => {
      this.#flushQueued = null;
      return this.#startFlush();
    });
    this.#flushQueued = queued;
    return queued;
  }

  #startFlush(): Promise<void> {
    const run = this.#syncAndRetire().finally(() => {
      if (this.#flushRunning === run) this.#flushRunning = null;
    });
    this.#flushRunning = run;
    return run;
  }

  async #syncAndRetire(): Promise<void> {
    if (this.#failure !== null) throw this.#failure;
    // Only copies retired before the syncs start are covered by them.
    const retiring = this.#retiring;
    this.#retiring = [];
    this.#retiringInFlush += retiring.length;
    try {
      await this.#slots.sync();
      await fdatasync(this.#files.mapFd);
      if (retiring.length === 0) return;
      // The new entries are durable: the old copies' entries can go, durably, then their slots.
      for (const slot of retiring) this.#forgetOldSlot(slot);
      await fdatasync(this.#files.mapFd);
    } catch (error) {
      throw this.#fail("flush failed", error);
    } finally {
      this.#retiringInFlush -= retiring.length;
      // On failure they stay retiring (the store is failed anyway: nothing reuses them).
      if (this.#failure !== null) this.#retiring.push(...retiring);
    }
    for (const slot of retiring) this.#releaseSlot(slot);
    this.#wakeSlotWaiters();
    this.#checkInvariants();
  }

  #forgetOldSlot(slot: number): void {
    this.#writeEntry(slot, this.#zeroEntryBytes);
    const key = this.#retiringOwner.get(slot);
    this.#retiringOwner.delete(slot);
    const owner = key === undefined ? undefined : this.#index.get(key);
    if (owner?.oldSlots) owner.oldSlots = owner.oldSlots.filter((old) => old !== slot);
  }

  close(): Promise<void> {
    this.#closePromise ??= this.#shutdown();
    return this.#closePromise;
  }

  /** Same as {@link close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #shutdown(): Promise<void> {
    this.#closing = true;
    while (this.#opsInFlight > 0) {
      await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    }
    try {
      if (this.#failure === null) await this.#flushNow();
    } finally {
      this.#slots.close();
      closeStoreFiles(this.#files);
    }
    if (this.#failure !== null) throw this.#failure;
  }

  #opDone(): void {
    this.#opsInFlight--;
    if (this.#opsInFlight > 0) return;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const wake of waiters) wake();
  }

  #beginPut(key: string): PutsInFlight {
    let flight = this.#putsInFlight.get(key);
    if (flight === undefined) {
      flight = { count: 0, latestGeneration: 0, supersededBelow: 0, reserved: false };
      this.#putsInFlight.set(key, flight);
    }
    flight.count++;
    return flight;
  }

  #endPut(key: string, flight: PutsInFlight): void {
    flight.count--;
    if (flight.count > 0) return;
    this.#putsInFlight.delete(key);
    if (flight.reserved) this.#reservedNew--;
  }

  #takeStaging(data: Uint8Array): Uint8Array {
    const block = this.#staging.pop() ?? new Uint8Array(this.blockSizeBytes);
    block.set(data);
    if (data.length < block.length) block.fill(0, data.length);
    return block;
  }

  #giveStaging(block: Uint8Array): void {
    if (this.#staging.length < STAGING_BUFFERS_MAX) this.#staging.push(block);
  }

  /** A free slot, now held by the caller, or -1. */
  #takeFree(): number {
    if (this.#freeTop === 0) return -1;
    this.#slotsHeld++;
    return this.#free[--this.#freeTop]!;
  }

  #releaseSlot(slot: number): void {
    assert(this.#freeTop < this.#slotCount, "free stack overflow: a slot was freed twice");
    this.#free[this.#freeTop++] = slot;
  }

  /**
   * Waits until a slot is free: flushing retires old copies, and puts in flight release or
   * retire theirs. Capacity reservations guarantee one of those exists (see the module doc).
   */
  async #waitForSlot(): Promise<number> {
    for (;;) {
      if (this.#retiring.length > 0) {
        await this.#flushNow();
      } else if (this.#retiringInFlush > 0 && this.#flushRunning !== null) {
        await this.#flushRunning;
      } else if (this.#slotsHeld > 0) {
        await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
      } else {
        throw new TorusError(ErrorCode.OutOfSpace, `block store ${this.name} has no free slot`);
      }
      if (this.#failure !== null) throw this.#failure;
      const slot = this.#takeFree();
      if (slot >= 0) return slot;
    }
  }

  #wakeSlotWaiters(): void {
    if (this.#slotWaiters.length === 0) return;
    const waiters = this.#slotWaiters;
    this.#slotWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Every slot is free, stored, held or retiring (checked when TORUS_VERIFY=1). */
  #checkInvariants(): void {
    if (!verifyEnabled()) return;
    const retiring = this.#retiring.length + this.#retiringInFlush;
    const accounted = this.#freeTop + this.#index.size + retiring + this.#slotsHeld;
    assert(
      accounted === this.#slotCount,
      `slot accounting broken: ${accounted} accounted of ${this.#slotCount} slots`,
    );
  }
}
