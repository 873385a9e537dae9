/**
 * BlockVolume: the data path of a block volume opened for write, a {@link Device} over a block
 * store (docs/adr/0004-block-volume-write-path.md). Opening, locking and publishing belong to the
 * volume service (volumes.ts); this class only moves bytes and keeps the block map.
 *
 * Writes go to the current generation `g`:
 * - a block already in `g` is changed in place by a range write (the store journals it, so a
 *   FLUSH is one durable append);
 * - a block not yet in `g` is *materialized* under a per-index lock: allocated fresh (if it read
 *   as zeros) or copied up from its older generation or the clone parent, then the map points at
 *   `g`. Whole-block writes are whole-block puts (written once, not journaled).
 *
 * FLUSH runs in phases, so nothing durable ever points at something that is not:
 * 1. flush the store: every write that resolved is durable;
 * 2. write the map entries changed before phase 1 (in place, or a whole new chunk copied into `g`),
 *    flush;
 * 3. write the root fields changed in phase 2 (chunk table entries, size), flush;
 * 4. free the blocks that phase 2 made unreferenced (whole-block trims).
 * Phases 2-4 run only when the map changed, so a FLUSH after writes into existing blocks of `g`
 * costs one store flush.
 * @module
 */

import {
  assert,
  closed,
  ErrorCode,
  invalid,
  isTorusError,
  SharedRun,
  TorusError,
} from "../core/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import type {
  Device,
  DeviceCallOptions,
  DeviceExtent,
  DeviceWriteOptions,
  WriteZeroesOptions,
} from "./device.ts";
import {
  chunkRef,
  chunkTableOffset,
  dataRef,
  ENTRY_BYTES,
  ENTRY_UNWRITTEN,
  ENTRY_ZERO,
  entryBytes,
  type MapGeometry,
  RootField,
  rootRef,
} from "./volume_format.ts";
import type { DirtyEntries, VolumeMap } from "./volume_map.ts";
import { blockPieces, mergeExtents, type ReadSource } from "./volume_reader.ts";

/** The preferred I/O size of every volume: one checksummed sector of the store. */
export const VOLUME_PREFERRED_IO_BYTES = 4096;

/** What a read completed at once returns. */
const RESOLVED: Promise<void> = Promise.resolve();

/** What a generation change needs from the volume service. */
export interface GenerationChange {
  /** The new generation (from the volume's INode counter). */
  readonly generation: number;
  /**
   * Publishes the change in the metadata service (fenced by the lock), after the new root is
   * durable. If it throws, the volume stays in the old generation.
   */
  commit(): Promise<void>;
}

/** Options of {@link BlockVolume}. */
export interface BlockVolumeOptions {
  readonly store: BlockStore;
  readonly geometry: MapGeometry;
  /** The map of the current generation; its root is durable in the store. */
  readonly map: VolumeMap;
  /** The volume's size (the metadata record's). */
  readonly sizeBytes: number;
  /** Where never-written blocks read from (a clone's parent snapshot), or null for zeros. */
  readonly parent: ReadSource | null;
  /** Called once by close() after the final flush (the service unlocks there). */
  readonly onClose?: () => Promise<void>;
}

/** A block volume open for write. */
export class BlockVolume implements Device {
  readonly readOnly = false;
  readonly preferredBlockSizeBytes = VOLUME_PREFERRED_IO_BYTES;
  readonly volume: number;
  readonly #store: BlockStore;
  readonly #geometry: MapGeometry;
  readonly #blockSizeBytes: number;
  readonly #parent: ReadSource | null;
  readonly #onClose: (() => Promise<void>) | undefined;
  #map: VolumeMap;
  #sizeBytes: number;
  /** Root header fields changed in memory since the last flush (offsets). */
  #rootFieldsDirty = new Set<number>();
  /** Data blocks of `g` zeroed whole by a trim, waiting for the next flush to unmap them. */
  readonly #trimPending = new Set<number>();
  /** Per-index locks of materializations (a block entering the current generation). */
  readonly #indexLocks = new Map<number, Promise<void>>();
  /** Set while a generation change or close holds new operations back. */
  #gate: Promise<void> | null = null;
  #opsInFlight = 0;
  #drainWaiters: (() => void)[] = [];
  readonly #flushes = new SharedRun(() =>
    this.#flushPhases().catch((error) => {
      throw this.#noteFailure(error);
    })
  );
  #failure: TorusError | null = null;
  #closePromise: Promise<void> | null = null;
  #writtenBytes = 0;

  constructor(options: BlockVolumeOptions) {
    assert(options.map.generation > 0, "a writable volume needs a real generation");
    this.volume = options.map.volume;
    this.#store = options.store;
    this.#geometry = options.geometry;
    this.#blockSizeBytes = options.geometry.blockSizeBytes;
    this.#map = options.map;
    this.#sizeBytes = options.sizeBytes;
    this.#parent = options.parent;
    this.#onClose = options.onClose;
  }

  /** The current generation. */
  get generation(): number {
    return this.#map.generation;
  }

  get sizeBytes(): number {
    return this.#sizeBytes;
  }

  /** Bytes of writes (data and NO_HOLE zeroes) that succeeded since the volume was opened. */
  get writtenBytes(): number {
    return this.#writtenBytes;
  }

  /** What ended the volume (its lock was lost), or null while it is usable. */
  get failure(): TorusError | null {
    return this.#failure;
  }

  // ---- entry and exit of every operation --------------------------------------------------

  #checkUsable(): void {
    if (this.#failure !== null) throw this.#failure;
    if (this.#closePromise !== null) throw closed(`volume ${this.volume} is closed`);
  }

  #checkRange(offsetBytes: number, lengthBytes: number): void {
    if (
      !Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) ||
      offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > this.#sizeBytes
    ) {
      throw invalid(
        `range of ${lengthBytes} bytes at ${offsetBytes} is outside the volume ` +
          `(${this.#sizeBytes} bytes)`,
      );
    }
  }

  /** Waits while the gate is closed, then counts the caller in. */
  async #enter(options: DeviceCallOptions | undefined): Promise<void> {
    while (this.#gate !== null) {
      await this.#gate;
      this.#checkUsable();
    }
    options?.signal?.throwIfAborted();
    this.#opsInFlight++;
  }

  #leave(): void {
    this.#opsInFlight--;
    if (this.#opsInFlight > 0) return;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const wake of waiters) wake();
  }

  async #drain(): Promise<void> {
    while (this.#opsInFlight > 0) {
      await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    }
  }

  /** Runs `body` as one counted operation (after the gate). */
  async #operation<T>(options: DeviceCallOptions | undefined, body: () => Promise<T>): Promise<T> {
    this.#checkUsable();
    if (this.#gate !== null || options?.signal !== undefined) await this.#enter(options);
    else this.#opsInFlight++;
    try {
      return await body();
    } catch (error) {
      throw this.#noteFailure(error);
    } finally {
      this.#leave();
    }
  }

  /** A lost lock ends the volume: nothing more may be written under it. */
  #noteFailure(error: unknown): unknown {
    if (isTorusError(error, ErrorCode.Locked)) this.#failure ??= error;
    return error;
  }

  /** Ends the volume with `error`: every later call throws it (the lock was lost). */
  fail(error: TorusError): void {
    this.#failure ??= error;
  }

  // ---- reads -------------------------------------------------------------------------------

  readAt(offsetBytes: number, into: Uint8Array, options?: DeviceCallOptions): Promise<void> {
    try {
      this.#checkRange(offsetBytes, into.length);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.readCachedAt(offsetBytes, into, options)) return RESOLVED;
    return this.#operation(options, async () => {
      const reads: Promise<void>[] = [];
      for (const piece of blockPieces(offsetBytes, into.length, this.#blockSizeBytes)) {
        const target = into.subarray(piece.bufferOffset, piece.bufferOffset + piece.lengthBytes);
        reads.push(this.#readPiece(piece.index, piece.offsetInBlock, target));
      }
      await Promise.all(reads);
    });
  }

  /**
   * {@link readAt} done now, when it can be without waiting: a range inside one block whose map
   * entry is loaded and whose bytes the store has in memory (BlockStore.readCachedAt). False
   * otherwise, with nothing changed but `into`: readAt then takes its asynchronous path, which
   * also reports every error (a closed or failed volume, a bad range, an unreadable sector).
   * Nothing here yields, so no generation change or trim can come between the lookup and the
   * read; a cached QD1 read costs no promise chain (ADR 0004, section 7).
   */
  readCachedAt(offsetBytes: number, into: Uint8Array, options?: DeviceCallOptions): boolean {
    if (this.#failure !== null || this.#closePromise !== null || this.#gate !== null) return false;
    if (options?.signal?.aborted === true || into.length === 0) return false;
    if (offsetBytes < 0 || offsetBytes + into.length > this.#sizeBytes) return false;
    const index = Math.floor(offsetBytes / this.#blockSizeBytes);
    const offsetInBlock = offsetBytes - index * this.#blockSizeBytes;
    if (offsetInBlock + into.length > this.#blockSizeBytes) return false;
    const entry = this.#map.entryIfLoaded(index);
    if (entry === undefined || (entry === ENTRY_UNWRITTEN && this.#parent !== null)) return false;
    if (entry === ENTRY_ZERO || entry === ENTRY_UNWRITTEN) {
      into.fill(0);
      return true;
    }
    const ref = dataRef(this.volume, entry, index);
    return this.#store.readCachedAt?.(ref, offsetInBlock, into) ?? false;
  }

  async #readPiece(index: number, offsetInBlock: number, into: Uint8Array): Promise<void> {
    for (let attempt = 0;; attempt++) {
      const entry = this.#map.entryIfLoaded(index) ?? await this.#map.entry(index);
      if (entry === ENTRY_ZERO || (entry === ENTRY_UNWRITTEN && this.#parent === null)) {
        into.fill(0);
        return;
      }
      if (entry === ENTRY_UNWRITTEN) {
        await this.#parent!.readBlockRange(index, offsetInBlock, into);
        return;
      }
      try {
        await this.#store.readAt(dataRef(this.volume, entry, index), offsetInBlock, into);
        return;
      } catch (error) {
        // A trim or a copy-up can unmap the block between our map lookup and the read: look
        // again once. A second miss is lost data.
        if (!isTorusError(error, ErrorCode.NotExist) || attempt > 0) throw error;
        if (this.#map.entryIfLoaded(index) === entry) throw error;
      }
    }
  }

  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]> {
    try {
      this.#checkRange(offsetBytes, lengthBytes);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#operation(undefined, async () => {
      const extents: DeviceExtent[] = [];
      for (const piece of blockPieces(offsetBytes, lengthBytes, this.#blockSizeBytes)) {
        const entry = await this.#map.entry(piece.index);
        const start = piece.index * this.#blockSizeBytes + piece.offsetInBlock;
        if (entry === ENTRY_UNWRITTEN && this.#parent !== null) {
          extents.push(...await this.#parent.extents(start, piece.lengthBytes));
        } else {
          // A block of this generation trimmed whole reads as zeros at once; its entry turns
          // ZERO only at the next flush (a later write takes it off #trimPending first).
          const trimmed = entry === this.generation && this.#trimPending.has(piece.index);
          const zero = entry === ENTRY_ZERO || entry === ENTRY_UNWRITTEN || trimmed;
          extents.push({ offsetBytes: start, lengthBytes: piece.lengthBytes, zero });
        }
      }
      return mergeExtents(extents);
    });
  }

  // ---- writes ------------------------------------------------------------------------------

  writeAt(offsetBytes: number, data: Uint8Array, options?: DeviceWriteOptions): Promise<void> {
    try {
      this.#checkRange(offsetBytes, data.length);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#write(offsetBytes, data.length, data, options);
  }

  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    try {
      this.#checkRange(offsetBytes, lengthBytes);
    } catch (error) {
      return Promise.reject(error);
    }
    if (options?.noHole) return this.#write(offsetBytes, lengthBytes, null, options);
    return this.trim(offsetBytes, lengthBytes, options);
  }

  trim(offsetBytes: number, lengthBytes: number, options?: DeviceWriteOptions): Promise<void> {
    try {
      this.#checkRange(offsetBytes, lengthBytes);
    } catch (error) {
      return Promise.reject(error);
    }
    const body = async () => {
      const work: Promise<void>[] = [];
      for (const piece of blockPieces(offsetBytes, lengthBytes, this.#blockSizeBytes)) {
        work.push(
          piece.lengthBytes === this.#blockSizeBytes
            ? this.#trimBlock(piece.index)
            : this.#writePiece(piece.index, piece.offsetInBlock, piece.lengthBytes, null),
        );
      }
      await Promise.all(work);
    };
    return this.#operation(options, body).then(() => this.#afterWrite(options));
  }

  /** Writes `data` (or zeros when null) over `[offsetBytes, offsetBytes + lengthBytes)`. */
  #write(
    offsetBytes: number,
    lengthBytes: number,
    data: Uint8Array | null,
    options: DeviceWriteOptions | undefined,
  ): Promise<void> {
    const body = async () => {
      const work: Promise<void>[] = [];
      for (const piece of blockPieces(offsetBytes, lengthBytes, this.#blockSizeBytes)) {
        const bytes = data === null
          ? null
          : data.subarray(piece.bufferOffset, piece.bufferOffset + piece.lengthBytes);
        work.push(this.#writePiece(piece.index, piece.offsetInBlock, piece.lengthBytes, bytes));
      }
      await Promise.all(work);
      this.#writtenBytes += lengthBytes;
    };
    return this.#operation(options, body).then(() => this.#afterWrite(options));
  }

  #afterWrite(options: DeviceWriteOptions | undefined): Promise<void> | void {
    if (options?.fua) return this.flush();
  }

  /** Writes one piece inside block `index` (zeros when `bytes` is null). */
  async #writePiece(
    index: number,
    offsetInBlock: number,
    lengthBytes: number,
    bytes: Uint8Array | null,
  ): Promise<void> {
    for (;;) {
      const locked = this.#indexLocks.get(index);
      if (locked !== undefined) {
        await locked;
        continue;
      }
      const entry = this.#map.entryIfLoaded(index) ?? await this.#map.entry(index);
      if (this.#indexLocks.has(index)) continue; // a materialization began while we loaded
      if (entry === this.generation) {
        // Synchronously from here to the store call: a flush deciding about this block's pending
        // trim sees either the trim or this write, never neither.
        this.#trimPending.delete(index);
        await this.#changeInPlace(index, offsetInBlock, lengthBytes, bytes);
        return;
      }
      await this.#withIndexLock(
        index,
        () => this.#materialize(index, offsetInBlock, lengthBytes, bytes),
      );
      return;
    }
  }

  /** A range write, zeroing or whole-block put into block `index` of the current generation. */
  #changeInPlace(
    index: number,
    offsetInBlock: number,
    lengthBytes: number,
    bytes: Uint8Array | null,
    options?: { fresh?: boolean },
  ): Promise<void> {
    const ref = dataRef(this.volume, this.generation, index);
    if (bytes === null) return this.#store.zeroAt(ref, offsetInBlock, lengthBytes, options);
    if (lengthBytes === this.#blockSizeBytes) return this.#store.putBlock(ref, bytes);
    return this.#store.writeAt(ref, offsetInBlock, bytes, options);
  }

  async #withIndexLock(index: number, body: () => Promise<void>): Promise<void> {
    while (this.#indexLocks.has(index)) await this.#indexLocks.get(index);
    let release!: () => void;
    const lock = new Promise<void>((resolve) => release = resolve);
    this.#indexLocks.set(index, lock);
    try {
      await body();
    } finally {
      this.#indexLocks.delete(index);
      release();
    }
  }

  /** Brings block `index` into the current generation with the piece applied (under its lock). */
  async #materialize(
    index: number,
    offsetInBlock: number,
    lengthBytes: number,
    bytes: Uint8Array | null,
  ): Promise<void> {
    const entry = await this.#map.entry(index);
    if (entry === this.generation) {
      this.#trimPending.delete(index);
      return await this.#changeInPlace(index, offsetInBlock, lengthBytes, bytes);
    }
    const ref = dataRef(this.volume, this.generation, index);
    if (await this.#readsAsZeros(entry, index)) {
      // `fresh`: whatever an abandoned earlier life of this ref left in the store is not ours.
      await this.#changeInPlace(index, offsetInBlock, lengthBytes, bytes, { fresh: true });
    } else if (lengthBytes === this.#blockSizeBytes) {
      await this.#store.putBlock(ref, bytes ?? new Uint8Array(this.#blockSizeBytes));
    } else {
      const block = new Uint8Array(this.#blockSizeBytes);
      await this.#readOldBlock(entry, index, block);
      if (bytes === null) block.fill(0, offsetInBlock, offsetInBlock + lengthBytes);
      else block.set(bytes, offsetInBlock);
      await this.#store.putBlock(ref, block);
    }
    this.#map.setEntry(index, this.generation);
  }

  /** Whether a block whose entry is `entry` reads as all zeros. */
  async #readsAsZeros(entry: number, index: number): Promise<boolean> {
    if (entry === ENTRY_ZERO) return true;
    if (entry !== ENTRY_UNWRITTEN) return false;
    if (this.#parent === null) return true;
    const start = index * this.#blockSizeBytes;
    const extents = await this.#parent.extents(start, this.#blockSizeBytes);
    return extents.every((extent) => extent.zero);
  }

  async #readOldBlock(entry: number, index: number, into: Uint8Array): Promise<void> {
    if (entry === ENTRY_UNWRITTEN) {
      await this.#parent!.readBlockRange(index, 0, into);
    } else {
      await this.#store.readAt(dataRef(this.volume, entry, index), 0, into);
    }
  }

  /** A trim of the whole block `index`. */
  async #trimBlock(index: number): Promise<void> {
    for (;;) {
      const locked = this.#indexLocks.get(index);
      if (locked !== undefined) {
        await locked;
        continue;
      }
      const entry = this.#map.entryIfLoaded(index) ?? await this.#map.entry(index);
      if (this.#indexLocks.has(index)) continue;
      if (entry === this.generation) {
        // Zeroed now (reads see zeros at once), unmapped and freed by the next flush.
        this.#trimPending.add(index);
        await this.#store.zeroAt(dataRef(this.volume, entry, index), 0, this.#blockSizeBytes);
        return;
      }
      if (entry === ENTRY_ZERO) return;
      if (entry === ENTRY_UNWRITTEN && this.#parent === null) return;
      // An older generation's block (or the parent's) stays for the snapshots that see it.
      await this.#withIndexLock(index, () => {
        this.#map.setEntry(index, ENTRY_ZERO);
        return Promise.resolve();
      });
      return;
    }
  }

  // ---- flush -------------------------------------------------------------------------------

  flush(options?: DeviceCallOptions): Promise<void> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#flushNow();
  }

  /** One flush runs at a time; callers arriving meanwhile share the next one (SharedRun). */
  #flushNow(): Promise<void> {
    return this.#flushes.next();
  }

  async #flushPhases(): Promise<void> {
    // The map changes taken here are those of writes that already resolved, so the store flush
    // below makes their data durable before phase 2 writes the entries naming it. Changes made
    // while it runs belong to the next flush.
    this.#unmapTrimmedBlocks();
    const dirty = this.#map.takeDirty();
    await this.#store.flush();
    if (dirty.size === 0 && this.#rootFieldsDirty.size === 0) return;
    const trimmed = await this.#writeMapChanges(dirty);
    await this.#writeRootChanges();
    await this.#freeBlocks(trimmed);
  }

  /** Phase 2a: trimmed blocks of `g` become ZERO entries (their zeroing is durable now). */
  #unmapTrimmedBlocks(): void {
    for (const index of this.#trimPending) {
      if (this.#map.entryIfLoaded(index) === this.generation && !this.#indexLocks.has(index)) {
        this.#map.setEntry(index, ENTRY_ZERO);
      }
    }
    this.#trimPending.clear();
  }

  /** Phase 2: writes the map entries changed before phase 1; returns blocks it unmapped. */
  async #writeMapChanges(dirty: Map<number, DirtyEntries>): Promise<number[]> {
    const map = this.#map;
    const generation = map.generation;
    const writes: Promise<void>[] = [];
    const unmapped: number[] = [];
    for (const [chunk, entries] of dirty) {
      for (const [index, before] of entries) {
        if (before === generation && map.flushValue(index) === ENTRY_ZERO) unmapped.push(index);
      }
      if (map.chunkGeneration(chunk) === generation) {
        writes.push(...this.#writeEntries(chunk, [...entries.keys()]));
      } else {
        // The chunk still belongs to an older generation (or none): copy it into `g`.
        const bytes = map.flushChunkBytes(chunk);
        writes.push(this.#store.putBlock(chunkRef(this.volume, generation, chunk), bytes));
        map.setChunkGeneration(chunk, generation);
        this.#rootFieldsDirty.add(chunkTableOffset(chunk, this.#geometry));
      }
    }
    await Promise.all(writes);
    await this.#store.flush();
    return unmapped;
  }

  /** Range writes of runs of adjacent changed entries of one chunk. */
  #writeEntries(chunk: number, indexes: number[]): Promise<void>[] {
    indexes.sort((a, b) => a - b);
    const writes: Promise<void>[] = [];
    const first = chunk * this.#geometry.entriesPerChunk;
    let runStart = 0;
    for (let i = 1; i <= indexes.length; i++) {
      if (i < indexes.length && indexes[i] === indexes[i - 1]! + 1) continue;
      const run = indexes.slice(runStart, i);
      const bytes = new Uint8Array(run.length * ENTRY_BYTES);
      run.forEach((index, k) =>
        bytes.set(entryBytes(this.#map.flushValue(index)), k * ENTRY_BYTES)
      );
      const ref = chunkRef(this.volume, this.generation, chunk);
      writes.push(this.#store.writeAt(ref, (run[0]! - first) * ENTRY_BYTES, bytes));
      runStart = i;
    }
    return writes;
  }

  /** Phase 3: root fields changed in memory (chunk table entries, size) go to the store. */
  async #writeRootChanges(): Promise<void> {
    if (this.#rootFieldsDirty.size === 0) return;
    const offsets = [...this.#rootFieldsDirty];
    this.#rootFieldsDirty.clear();
    const root = this.#map.root.bytes;
    const ref = rootRef(this.volume, this.generation);
    await Promise.all(
      offsets.map((offset) =>
        this.#store.writeAt(ref, offset, root.slice(offset, offset + ENTRY_BYTES))
      ),
    );
    await this.#store.flush();
  }

  /** Phase 4: frees blocks of `g` that a durable map entry no longer names. */
  async #freeBlocks(indexes: number[]): Promise<void> {
    const deletes: Promise<void>[] = [];
    for (const index of indexes) {
      if (this.#map.entryIfLoaded(index) !== ENTRY_ZERO || this.#indexLocks.has(index)) continue;
      const ref = dataRef(this.volume, this.generation, index);
      deletes.push(
        this.#store.deleteBlock(ref).catch((error) => {
          if (!isTorusError(error, ErrorCode.NotExist)) throw error;
        }),
      );
    }
    await Promise.all(deletes);
  }

  // ---- size and generations ----------------------------------------------------------------

  /** Grows the volume to `sizeBytes` (the metadata record was already changed). */
  async grow(sizeBytes: number): Promise<void> {
    this.#checkUsable();
    if (sizeBytes <= this.#sizeBytes) {
      throw invalid(`volume ${this.volume} is already ${this.#sizeBytes} bytes`);
    }
    const view = new DataView(this.#map.root.bytes.buffer);
    view.setUint32(RootField.Size, sizeBytes % 2 ** 32, true);
    view.setUint32(RootField.Size + 4, Math.floor(sizeBytes / 2 ** 32), true);
    this.#rootFieldsDirty.add(RootField.Size);
    this.#sizeBytes = sizeBytes;
    await this.#flushNow();
  }

  /**
   * Ends the current generation (a snapshot takes it): holds new operations back, waits for those
   * in flight, flushes, writes the root of the generation `prepare` hands out, and lets `commit`
   * publish it. Returns the generation that ended. On failure the volume stays where it was.
   */
  async changeGeneration(
    prepare: (ending: number) => Promise<GenerationChange>,
  ): Promise<number> {
    this.#checkUsable();
    while (this.#gate !== null) await this.#gate;
    let open!: () => void;
    this.#gate = new Promise<void>((resolve) => open = resolve);
    try {
      await this.#drain();
      await this.#flushNow();
      const ending = this.generation;
      const change = await prepare(ending);
      assert(change.generation > ending, "a new generation must be newer");
      const root = this.#map.root.bytes.slice();
      const view = new DataView(root.buffer);
      view.setUint32(RootField.Generation, change.generation % 2 ** 32, true);
      view.setUint32(RootField.Generation + 4, Math.floor(change.generation / 2 ** 32), true);
      await this.#store.putBlock(rootRef(this.volume, change.generation), root);
      await this.#store.flush();
      await change.commit();
      this.#map = this.#map.handOver({
        ...this.#map.root,
        generation: change.generation,
        bytes: root,
      });
      return ending;
    } catch (error) {
      throw this.#noteFailure(error);
    } finally {
      this.#gate = null;
      open();
    }
  }

  // ---- close -------------------------------------------------------------------------------

  close(): Promise<void> {
    this.#closePromise ??= this.#shutdown();
    return this.#closePromise;
  }

  async #shutdown(): Promise<void> {
    while (this.#gate !== null) await this.#gate.catch(() => {});
    await this.#drain();
    try {
      if (this.#failure === null) await this.#flushNow();
    } finally {
      await this.#onClose?.();
    }
  }
}
