/**
 * FileBlockStore: the on-disk engine of `torus serve`. Blocks live in fixed-size slots of
 * `data-<name>.blk`; `map-<name>.blk` holds one checksummed 64-byte entry per slot (format in
 * file_format.ts). The index is kept in memory off the JavaScript heap (slot_index.ts: typed
 * arrays, about 50 bytes per slot) and loaded at open from the entries below the map's
 * high-water mark. Every file operation goes through the FileIo the store was opened with
 * (file_io.ts), the real one by default: nothing here blocks the event loop.
 *
 * Crash safety (a process kill or a power loss at any instant):
 * - A put writes the block into a free slot first; only after that write completed does the slot
 *   become Stored in the index, and only Stored (or Retiring) slots have their entry written
 *   (by the background MapWriter), so an entry never names a slot whose write was still running.
 *   Every entry carries the block's CRC-32 and every read verifies it: bytes that a power loss
 *   left half-written are answered `block_unavailable` (and the entry dropped), never returned.
 * - Replacing a ref writes the new copy into another slot with a higher generation; the old slot
 *   keeps its entry (Retiring) until a flush has made the new entry durable, then its entry is
 *   zeroed and synced, and only then is the slot reused. Reopening therefore finds the old or the
 *   new copy (the highest generation that verifies wins), never a mix and never another block's.
 * - A delete zeroes the entries of the ref (current and not yet retired old copies). The deleted
 *   slot is reused only once its zeroed entry was written (Clearing), so a process kill never
 *   leaves an entry naming another block's bytes; old copies wait for the next flush (Dead).
 * - `flush` = fdatasync of the data file, write of every changed entry, fdatasync of the map
 *   (then the retirement above). A failed sync or entry write puts the store in a failed state
 *   (every later call throws `unavailable`): after a writeback error the kernel may have dropped
 *   dirty pages, so nothing can be promised.
 *
 * Concurrency (many calls in flight; the event loop is the only thread touching this state):
 * - Puts and deletes of one ref take effect in call order: each gets a generation when called,
 *   and a put whose write finishes after a later put or delete of the same ref was called is
 *   dropped (it still resolves; its bytes were superseded). A delete while a put of the same ref
 *   is in flight cancels that put and resolves even if nothing was stored yet.
 * - A get reads the version current when it was called; if that slot is reused meanwhile the
 *   checksum shows it and the get retries on the new state (or answers `not_exist`).
 * - The index changes synchronously ("check, change, mark the entry dirty" is atomic with respect
 *   to other calls); entries reach the map file in background batches.
 *
 * Slot accounting: every slot is in exactly one SlotState (slot_index.ts): free, held by a put in
 * flight, stored, retiring or dead (an old copy awaiting a flush), clearing (a zeroed entry being
 * written) or retired (being freed by a flush). One slot is kept spare, so replacing a block in a
 * full store always has room; `totalBlocks()` is the slot count minus that spare.
 * @module
 */

import { setImmediate } from "node:timers";
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
import { tuneMallocForLargeBuffers } from "../sys/mod.ts";
import type { BlockCallOptions, BlockStore } from "./block_store.ts";
import type { FileIo } from "./file_io.ts";
import { slotOffsetBytes } from "./file_format.ts";
import {
  closeStoreFiles,
  type LoadedIndex,
  loadIndex,
  openStoreFiles,
  resizeStore,
  settleHighWater,
  SPARE_SLOTS,
  type StoreFiles,
} from "./file_open.ts";
import { MapWriter } from "./map_writer.ts";
import { REF_WORDS, SlotIndex, SlotState } from "./slot_index.ts";
import { SysFileIo } from "./sys_file_io.ts";

export { SPARE_SLOTS } from "./file_open.ts";

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
  /** The file system, for every file operation. Default: the real one (SysFileIo). */
  io?: FileIo;
}

/** Staging buffers kept for reuse by puts (each one block). */
const STAGING_BUFFERS_MAX = 16;
/** Reads of a block that keeps being replaced under a get before it gives up. */
const READ_ATTEMPTS_MAX = 8;
/** Slots `blockRefs` looks at between two turns of the event loop. */
const REFS_CHUNK_SLOTS = 4096;

const log = logger("storage");

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

/**
 * A `blockRefs` iteration in progress. Its snapshot is the refs stored when it started: the walk
 * skips slots whose copy was installed after that (`installed`), and copies that existed then
 * but leave the index before the walk reaches them are kept in `removed`.
 */
interface RefWalk {
  position: number;
  installed: Set<number>;
  removed: BlockRef[];
}

/** A BlockStore over a data file and an index file; see the module doc. */
export class FileBlockStore implements BlockStore {
  readonly kind = "file";
  readonly name: string;
  readonly blockSizeBytes: number;
  readonly #files: StoreFiles;
  readonly #slotCount: number;
  readonly #capacity: number;
  readonly #index: SlotIndex;
  readonly #writer: MapWriter;
  readonly #free: Uint32Array;
  #freeTop = 0;
  /** Slots from here on were never handed out since open (all free, entries zero on disk). */
  #fresh: number;
  /** Retiring and dead slots, in the order they started retiring. */
  #retiring: number[] = [];
  #retiredInFlush = 0;
  #clearing = 0;
  #nextGeneration: number;
  readonly #putsInFlight = new Map<string, PutsInFlight>();
  #reservedNew = 0;
  #slotsHeld = 0;
  #slotWaiters: (() => void)[] = [];
  readonly #walks = new Set<RefWalk>();
  #opsInFlight = 0;
  #drainWaiters: (() => void)[] = [];
  #flushRunning: Promise<void> | null = null;
  #flushQueued: Promise<void> | null = null;
  #closing = false;
  #closePromise: Promise<void> | null = null;
  #failure: TorusError | null = null;
  readonly #staging: Uint8Array[] = [];

  /** Use {@link FileBlockStore.open}. */
  private constructor(files: StoreFiles, loaded: LoadedIndex) {
    assert(files.highWater !== null, "a store opens with a settled high-water mark");
    this.name = files.name;
    this.blockSizeBytes = files.blockSizeBytes;
    this.#files = files;
    this.#slotCount = files.slotCount;
    this.#capacity = Math.max(0, files.slotCount - SPARE_SLOTS);
    this.#index = loaded.index;
    this.#nextGeneration = loaded.maxGeneration + 1;
    // Pushed from the top down, so puts fill the file from its start; slots from `#fresh` on are
    // handed out in order after the free stack is empty.
    this.#free = new Uint32Array(files.slotCount);
    const scanned = Math.min(loaded.scannedSlots, files.slotCount);
    for (let slot = scanned - 1; slot >= 0; slot--) {
      if (this.#index.states[slot] !== SlotState.Stored) this.#free[this.#freeTop++] = slot;
    }
    this.#fresh = scanned;
    this.#writer = new MapWriter({
      map: files.map,
      index: this.#index,
      slotCount: files.slotCount,
      highWater: files.highWater,
      onWritten: (slots) => this.#entriesWritten(slots),
      onFailure: (error) => this.#fail("writing index entries failed", error),
    });
    this.#checkInvariants();
  }

  /**
   * Opens the store `<dir>/{data,map}-<name>.blk`, creating it when absent, growing it when
   * `sizeBytes` asks for more slots and shrinking it when what is dropped is free and the spare
   * slot stays.
   */
  static async open(options: FileBlockStoreOptions): Promise<FileBlockStore> {
    const name = options.name ?? "current";
    if (!Number.isSafeInteger(options.sizeBytes) || options.sizeBytes < 0) {
      throw invalid(`invalid store size: ${options.sizeBytes} bytes`);
    }
    const slotCount = Math.floor(options.sizeBytes / options.blockSizeBytes);
    // Every get returns a fresh block-sized buffer: keep their memory out of mmap/munmap churn.
    tuneMallocForLargeBuffers();
    const files = await openStoreFiles(options.io ?? new SysFileIo(), {
      dir: options.dir,
      name,
      blockSizeBytes: options.blockSizeBytes,
      slotCount,
    });
    try {
      const loaded = await loadIndex(files, slotCount);
      if (loaded.damagedEntries + loaded.supersededEntries > 0) {
        log.notice(
          `store ${name}: cleared ${loaded.damagedEntries} damaged and ` +
            `${loaded.supersededEntries} superseded index entries`,
        );
      }
      await resizeStore(files, slotCount, {
        usedBlocks: loaded.index.size,
        highestUsedSlot: loaded.highestUsedSlot,
      });
      await settleHighWater(files, loaded);
      return new FileBlockStore(files, loaded);
    } catch (error) {
      await closeStoreFiles(files).catch(() => {});
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

  /**
   * Resolves once every index change made before the call is written to the map file (not
   * synced: what a process kill would leave). For tests and tools; `flush` is the durable one.
   */
  indexWritten(): Promise<void> {
    try {
      this.#checkUsable();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#writer.written();
  }

  #checkUsable(): void {
    if (this.#closing) throw closed(`block store ${this.name} is closed`);
    if (this.#failure !== null) throw this.#failure;
  }

  async getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    this.#checkUsable();
    options?.signal?.throwIfAborted();
    const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
    this.#opsInFlight++;
    try {
      for (let attempt = 1;; attempt++) {
        const slot = this.#index.find(key);
        if (slot < 0) throw notExist(`block ${ref} not found`);
        const read = await this.#readVerified(ref, key, slot);
        if (read !== null) {
          const expected = options?.expectedCrc32;
          if (expected !== undefined && read.crc !== expected >>> 0) {
            throw blockUnavailable(`block ${ref} does not match its expected CRC`);
          }
          return read.block;
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
   * Reads stored `slot` into a fresh buffer, with its checksum. Null when the version changed
   * while reading (retry); throws `block_unavailable` (and drops the entry) when the bytes fail
   * their checksum.
   */
  async #readVerified(
    ref: BlockRef,
    key: Uint32Array,
    slot: number,
  ): Promise<{ block: Uint8Array; crc: number } | null> {
    const generation = this.#index.generations[slot]!;
    const expectedCrc = this.#index.crcs[slot]!;
    // A changed index means the slot was reused under us, not that the disk is bad.
    const changed = () =>
      this.#index.find(key) !== slot || this.#index.generations[slot] !== generation;
    const block = new Uint8Array(this.blockSizeBytes);
    try {
      const got = await this.#files.data.read(block, slotOffsetBytes(slot, this.blockSizeBytes));
      if (got !== block.length) {
        throw blockUnavailable(`data file ends inside slot ${slot} (read ${got} bytes)`);
      }
    } catch (error) {
      if (changed()) return null;
      throw blockUnavailable(`reading block ${ref} failed: ${errorMessage(error)}`, {
        cause: error,
      });
    }
    if (crc32(block) === expectedCrc) return { block, crc: expectedCrc };
    if (changed()) return null;
    this.#removeStored(slot);
    this.#checkInvariants();
    throw blockUnavailable(`block ${ref} in slot ${slot} failed its checksum; dropped`);
  }

  async putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    this.#checkUsable();
    options?.signal?.throwIfAborted();
    if (data.length > this.blockSizeBytes) {
      throw invalid(`block of ${data.length} bytes exceeds block size ${this.blockSizeBytes}`);
    }
    const keyText = ref.key;
    const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
    // A new ref reserves capacity once, however many puts of it are in flight.
    const reserve = this.#index.find(key) < 0 &&
      !(this.#putsInFlight.get(keyText)?.reserved ?? false);
    if (reserve && this.#index.size + this.#reservedNew >= this.#capacity) {
      throw new TorusError(
        ErrorCode.OutOfSpace,
        `block store ${this.name} is full (${this.#capacity} blocks)`,
      );
    }
    // Everything up to the first await runs at call time: the caller's bytes are copied now.
    const block = this.#takeStaging(data);
    const generation = this.#nextGeneration++;
    const flight = this.#beginPut(keyText);
    flight.latestGeneration = generation;
    if (reserve) {
      flight.reserved = true;
      this.#reservedNew++;
    }
    this.#opsInFlight++;
    try {
      await this.#writeAndInstall({ key, block, generation, flight });
    } finally {
      this.#endPut(keyText, flight);
      this.#giveStaging(block);
      this.#opDone();
      this.#checkInvariants();
    }
  }

  async #writeAndInstall(
    put: { key: Uint32Array; block: Uint8Array; generation: number; flight: PutsInFlight },
  ): Promise<void> {
    let slot = this.#takeFree();
    if (slot < 0) slot = await this.#waitForSlot();
    let installed = false;
    try {
      const written = this.#files.data.write(put.block, slotOffsetBytes(slot, this.blockSizeBytes));
      // The checksum is computed while a worker thread writes the same (unchanging) bytes.
      const blockCrc = crc32(put.block);
      await written;
      if (this.#failure !== null) throw this.#failure;
      const current = this.#index.find(put.key);
      const newer = current >= 0 && this.#index.generations[current]! > put.generation;
      if (newer || put.flight.supersededBelow > put.generation) return;
      this.#install(slot, { ...put, blockCrc, current });
      installed = true;
      if (current < 0 && put.flight.reserved) {
        // The ref now counts in the index; its reservation is no longer needed.
        put.flight.reserved = false;
        this.#reservedNew--;
      }
    } finally {
      this.#slotsHeld--;
      if (!installed) this.#releaseSlot(slot);
      this.#wakeSlotWaiters();
    }
  }

  /** Makes held `slot` the stored copy of its ref; the previous copy starts retiring. */
  #install(
    slot: number,
    copy: { key: Uint32Array; generation: number; blockCrc: number; current: number },
  ): void {
    const index = this.#index;
    index.setRef(slot, copy.key);
    index.generations[slot] = copy.generation;
    index.crcs[slot] = copy.blockCrc;
    if (copy.current >= 0) {
      this.#walkRemoved(copy.current);
      index.replace(copy.current, slot);
      index.states[copy.current] = SlotState.Retiring;
      index.older[slot] = copy.current + 1;
      this.#retiring.push(copy.current);
    } else {
      index.insert(slot);
    }
    this.#walkInstalled(slot);
    this.#writer.markDirty(slot);
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

  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
      const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
      return Promise.resolve(this.#index.find(key) >= 0);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
      const flight = this.#putsInFlight.get(ref.key);
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
      const slot = this.#index.find(SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS)));
      if (slot < 0) {
        if (cancelsPut) return Promise.resolve();
        throw notExist(`block ${ref} not found`);
      }
      this.#removeStored(slot);
      this.#checkInvariants();
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Takes stored `slot` out of the index: its entry and those of its ref's retiring copies are
   * zeroed; the slot is reused once its zero entry was written, the old copies after a flush.
   */
  #removeStored(slot: number): void {
    const index = this.#index;
    this.#walkRemoved(slot);
    index.remove(slot);
    index.states[slot] = SlotState.Clearing;
    this.#clearing++;
    this.#writer.markDirty(slot);
    for (let link = index.older[slot]!; link !== 0;) {
      const old = link - 1;
      link = index.older[old]!;
      index.older[old] = 0;
      index.states[old] = SlotState.Dead;
      this.#writer.markDirty(old);
    }
    index.older[slot] = 0;
  }

  /** The MapWriter wrote these entries: clearing slots are free now. */
  #entriesWritten(slots: readonly number[]): void {
    let freed = false;
    for (const slot of slots) {
      if (this.#index.states[slot] !== SlotState.Clearing) continue;
      this.#clearing--;
      this.#releaseSlot(slot);
      freed = true;
    }
    if (freed) this.#wakeSlotWaiters();
    this.#checkInvariants();
  }

  async *blockRefs(): AsyncIterable<BlockRef> {
    this.#checkUsable();
    const walk: RefWalk = { position: 0, installed: new Set(), removed: [] };
    // Slots from `#fresh` on held nothing when the walk started.
    const end = this.#fresh;
    this.#walks.add(walk);
    try {
      while (walk.position < end) {
        const refs: BlockRef[] = [];
        const chunkEnd = Math.min(end, walk.position + REFS_CHUNK_SLOTS);
        for (let slot = walk.position; slot < chunkEnd; slot++) {
          if (this.#index.states[slot] !== SlotState.Stored || walk.installed.has(slot)) continue;
          refs.push(this.#index.refAt(slot));
        }
        walk.position = chunkEnd;
        refs.push(...walk.removed.splice(0));
        for (const ref of refs) yield ref;
        // Let other work run between chunks: a store of millions of blocks is walked in seconds.
        await new Promise<void>((resolve) => setImmediate(resolve));
        this.#checkUsable();
      }
      for (const ref of walk.removed.splice(0)) yield ref;
    } finally {
      this.#walks.delete(walk);
    }
  }

  /** A copy installed in `slot` is not part of the snapshots of walks in progress. */
  #walkInstalled(slot: number): void {
    for (const walk of this.#walks) if (slot >= walk.position) walk.installed.add(slot);
  }

  /** The copy in stored `slot` leaves the index: walks that have not reached it keep its ref. */
  #walkRemoved(slot: number): void {
    for (const walk of this.#walks) {
      if (slot >= walk.position && !walk.installed.has(slot)) {
        walk.removed.push(this.#index.refAt(slot));
      }
    }
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
    this.#retiredInFlush += retiring.length;
    try {
      await this.#files.data.datasync();
      await this.#writer.written();
      await this.#files.map.datasync();
      if (retiring.length > 0) {
        // The new entries are durable: the old copies' entries can go, durably, then their slots.
        this.#retire(retiring);
        await this.#writer.written();
        await this.#files.map.datasync();
      }
    } catch (error) {
      throw this.#fail("flush failed", error);
    } finally {
      this.#retiredInFlush -= retiring.length;
      // On failure they stay retiring (the store is failed anyway: nothing reuses them).
      if (this.#failure !== null) this.#retiring.push(...retiring);
    }
    for (const slot of retiring) this.#releaseSlot(slot);
    this.#wakeSlotWaiters();
    this.#checkInvariants();
  }

  /** Marks `slots` (retiring or dead) Retired, unlinks them from their chains, zeroes entries. */
  #retire(slots: readonly number[]): void {
    const index = this.#index;
    const alive: number[] = [];
    for (const slot of slots) {
      if (index.states[slot] === SlotState.Retiring) alive.push(slot);
      index.states[slot] = SlotState.Retired;
      this.#writer.markDirty(slot);
    }
    // Retired copies are the oldest of their chains: cut each chain above its first one.
    const cutChains = new Set<number>();
    for (const slot of alive) {
      const head = index.findRefOf(slot);
      assert(head >= 0, "a retiring copy's ref is stored");
      if (cutChains.has(head)) continue;
      cutChains.add(head);
      let link = head;
      while (
        index.older[link] !== 0 && index.states[index.older[link]! - 1] !== SlotState.Retired
      ) {
        link = index.older[link]! - 1;
      }
      index.older[link] = 0;
    }
    for (const slot of slots) index.older[slot] = 0;
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
      this.#writer.stop();
      await closeStoreFiles(this.#files);
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
    let slot: number;
    if (this.#freeTop > 0) slot = this.#free[--this.#freeTop]!;
    else if (this.#fresh < this.#slotCount) slot = this.#fresh++;
    else return -1;
    this.#index.states[slot] = SlotState.Held;
    this.#slotsHeld++;
    return slot;
  }

  #releaseSlot(slot: number): void {
    assert(this.#freeTop < this.#slotCount, "free stack overflow: a slot was freed twice");
    this.#index.states[slot] = SlotState.Free;
    this.#free[this.#freeTop++] = slot;
  }

  /**
   * Waits until a slot is free: flushing retires old copies, the map writer frees clearing slots,
   * and puts in flight release or retire theirs. Capacity reservations guarantee one of those
   * exists (see the module doc).
   */
  async #waitForSlot(): Promise<number> {
    for (;;) {
      if (this.#retiring.length > 0) {
        await this.#flushNow();
      } else if (this.#retiredInFlush > 0 && this.#flushRunning !== null) {
        await this.#flushRunning;
      } else if (this.#clearing > 0) {
        await this.#writer.written();
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

  /** Every slot is in exactly one state (checked when TORUS_VERIFY=1). */
  #checkInvariants(): void {
    if (!verifyEnabled()) return;
    const retiring = this.#retiring.length + this.#retiredInFlush;
    const free = this.#freeTop + (this.#slotCount - this.#fresh);
    const accounted = free + this.#index.size + retiring + this.#slotsHeld + this.#clearing;
    assert(
      accounted === this.#slotCount,
      `slot accounting broken: ${accounted} accounted of ${this.#slotCount} slots`,
    );
    if (this.#slotCount <= 4096) this.#checkStates();
  }

  /** Small stores: the per-state counts match the slot states. */
  #checkStates(): void {
    const counts = new Array<number>(7).fill(0);
    for (let slot = 0; slot < this.#slotCount; slot++) counts[this.#index.states[slot]!]!++;
    assert(counts[SlotState.Held] === this.#slotsHeld, "held slots miscounted");
    assert(counts[SlotState.Stored] === this.#index.size, "stored slots miscounted");
    assert(counts[SlotState.Clearing] === this.#clearing, "clearing slots miscounted");
    assert(
      counts[SlotState.Retiring]! + counts[SlotState.Dead]! + counts[SlotState.Retired]! ===
        this.#retiring.length + this.#retiredInFlush,
      "retiring slots miscounted",
    );
  }
}
