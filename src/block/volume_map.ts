/**
 * The block map of one generation of a block volume, in memory: the root (chunk table) and the
 * map chunks loaded so far (volume_format.ts describes both). Chunks are loaded from the block
 * store on first use and kept; a terabyte of volume at 512 KiB blocks is 16 MiB of map.
 *
 * A writable map also tracks what changed since the last flush, keeping each changed entry's value
 * as of the previous flush, so a flush can write exactly the values whose data is already durable
 * (see {@link VolumeMap.takeDirty}).
 * @module
 */

import { assert, blockUnavailable, ErrorCode, isTorusError } from "../core/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import {
  chunkRef,
  chunkTableOffset,
  ENTRY_BYTES,
  ENTRY_UNWRITTEN,
  type MapGeometry,
  readEntry,
  type Root,
  writeEntry,
} from "./volume_format.ts";

/** Changed entries of one chunk: entry index (within the volume) → value before the change. */
export type DirtyEntries = Map<number, number>;

/** The map of one generation of one volume. */
export class VolumeMap {
  readonly volume: number;
  readonly generation: number;
  readonly geometry: MapGeometry;
  readonly #store: BlockStore;
  readonly #root: Root;
  readonly #rootView: DataView;
  readonly #chunks = new Map<number, Uint8Array>();
  readonly #views = new Map<number, DataView>();
  readonly #loading = new Map<number, Promise<void>>();
  /** chunk → changed entries since the last {@link takeDirty}. */
  #dirty = new Map<number, DirtyEntries>();

  constructor(store: BlockStore, root: Root, geometry: MapGeometry) {
    assert(root.bytes.length === geometry.blockSizeBytes, "root block of the wrong size");
    this.volume = root.volume;
    this.generation = root.generation;
    this.geometry = geometry;
    this.#store = store;
    this.#root = root;
    this.#rootView = new DataView(root.bytes.buffer, root.bytes.byteOffset, root.bytes.byteLength);
  }

  /** The root this map reads its chunk table from (mutable for a writable map). */
  get root(): Root {
    return this.#root;
  }

  /** The generation holding chunk `chunk` (0 = no chunk). */
  chunkGeneration(chunk: number): number {
    return readEntry(this.#rootView, chunkTableOffset(chunk, this.geometry));
  }

  /** Points chunk table entry `chunk` at `generation` (in memory). */
  setChunkGeneration(chunk: number, generation: number): void {
    writeEntry(this.#rootView, chunkTableOffset(chunk, this.geometry), generation);
  }

  /** The chunk holding entry `index`. */
  chunkOf(index: number): number {
    return Math.floor(index / this.geometry.entriesPerChunk);
  }

  /** Entry `index` if its chunk is loaded (the fast path of every read and write). */
  entryIfLoaded(index: number): number | undefined {
    const view = this.#views.get(this.chunkOf(index));
    if (view === undefined) return undefined;
    return readEntry(view, (index % this.geometry.entriesPerChunk) * ENTRY_BYTES);
  }

  /** Entry `index`, loading its chunk when needed. */
  async entry(index: number): Promise<number> {
    const loaded = this.entryIfLoaded(index);
    if (loaded !== undefined) return loaded;
    await this.load(this.chunkOf(index));
    return this.entryIfLoaded(index)!;
  }

  /** Loads chunk `chunk` (once, however many callers ask at the same time). */
  load(chunk: number): Promise<void> {
    if (this.#chunks.has(chunk)) return Promise.resolve();
    let loading = this.#loading.get(chunk);
    if (loading === undefined) {
      loading = this.#read(chunk).finally(() => this.#loading.delete(chunk));
      this.#loading.set(chunk, loading);
    }
    return loading;
  }

  async #read(chunk: number): Promise<void> {
    const generation = this.chunkGeneration(chunk);
    let bytes: Uint8Array;
    if (generation === ENTRY_UNWRITTEN) {
      bytes = new Uint8Array(this.geometry.blockSizeBytes);
    } else {
      try {
        bytes = await this.#store.getBlock(chunkRef(this.volume, generation, chunk));
      } catch (error) {
        if (!isTorusError(error, ErrorCode.NotExist)) throw error;
        // The root names the chunk, so its absence is lost data, not an empty range.
        throw blockUnavailable(
          `map chunk ${chunk} of volume ${this.volume} (generation ${generation}) is missing`,
          { cause: error },
        );
      }
    }
    // A concurrent load cannot have won: loads are deduplicated by #loading.
    this.#chunks.set(chunk, bytes);
    this.#views.set(chunk, new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  }

  /** Sets entry `index` (its chunk must be loaded) and remembers it for the next flush. */
  setEntry(index: number, value: number): void {
    const chunk = this.chunkOf(index);
    const view = this.#views.get(chunk);
    assert(view !== undefined, `setEntry: chunk ${chunk} is not loaded`);
    const offset = (index % this.geometry.entriesPerChunk) * ENTRY_BYTES;
    const previous = readEntry(view, offset);
    if (previous === value) return;
    let dirty = this.#dirty.get(chunk);
    if (dirty === undefined) {
      dirty = new Map();
      this.#dirty.set(chunk, dirty);
    }
    if (!dirty.has(index)) dirty.set(index, previous);
    writeEntry(view, offset, value);
  }

  /** Whether anything changed since the last {@link takeDirty}. */
  hasDirty(): boolean {
    return this.#dirty.size > 0;
  }

  /**
   * Hands the changes made so far to a flush and starts collecting anew. The flush writes, for
   * each entry it took, the value to be made durable: {@link flushValue} answers it even if the
   * entry changed again after this call (that later change belongs to the next flush, whose data
   * may not be durable yet).
   */
  takeDirty(): Map<number, DirtyEntries> {
    const taken = this.#dirty;
    this.#dirty = new Map();
    return taken;
  }

  /** The value entry `index` had when {@link takeDirty} was called. */
  flushValue(index: number): number {
    const chunk = this.chunkOf(index);
    const later = this.#dirty.get(chunk)?.get(index);
    if (later !== undefined) return later;
    return this.entryIfLoaded(index)!;
  }

  /**
   * The bytes of chunk `chunk` as the flush in progress must write them: the in-memory chunk with
   * every entry changed after {@link takeDirty} put back to its value at that time.
   */
  flushChunkBytes(chunk: number): Uint8Array {
    const bytes = this.#chunks.get(chunk);
    assert(bytes !== undefined, `flushChunkBytes: chunk ${chunk} is not loaded`);
    const copy = bytes.slice();
    const later = this.#dirty.get(chunk);
    if (later !== undefined) {
      const view = new DataView(copy.buffer);
      for (const [index, value] of later) {
        writeEntry(view, (index % this.geometry.entriesPerChunk) * ENTRY_BYTES, value);
      }
    }
    return copy;
  }

  /**
   * A map of generation `generation` over the same contents: it takes over this map's loaded
   * chunks (this map must not be used afterwards) and a root that is a copy of this one's with
   * the new generation. Used when a snapshot ends the current generation.
   */
  handOver(root: Root): VolumeMap {
    assert(!this.hasDirty(), "handOver: flush first");
    const next = new VolumeMap(this.#store, root, this.geometry);
    for (const [chunk, bytes] of this.#chunks) {
      next.#chunks.set(chunk, bytes);
      next.#views.set(chunk, this.#views.get(chunk)!);
    }
    this.#chunks.clear();
    this.#views.clear();
    return next;
  }
}
