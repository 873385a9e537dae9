/**
 * In-memory BlockStore: the store of clients (a write-back cache of `--write-cache-size`) and of
 * tests. Production code, held to the same contract as the disk engine.
 * @module
 */

import {
  assert,
  type BlockRef,
  blockUnavailable,
  closed,
  crc32,
  ErrorCode,
  exists,
  invalid,
  notExist,
  TorusError,
} from "../core/mod.ts";
import type { BlockCallOptions, BlockStore, PutOptions, RangeWriteOptions } from "./block_store.ts";
import { checkBlockRange } from "./range.ts";

/** Options of {@link MemoryBlockStore}. */
export interface MemoryBlockStoreOptions {
  name?: string;
  blockSizeBytes: number;
  /** Capacity in blocks. */
  totalBlocks: number;
}

/** Blocks in a Map, copied on the way in and out. */
export class MemoryBlockStore implements BlockStore {
  readonly kind = "memory";
  readonly name: string;
  readonly blockSizeBytes: number;
  readonly #totalBlocks: number;
  #blocks: Map<string, { ref: BlockRef; data: Uint8Array }> | null = new Map();

  constructor(options: MemoryBlockStoreOptions) {
    assert(options.blockSizeBytes > 0, "memory store: block size must be positive");
    assert(options.totalBlocks >= 0, "memory store: capacity must not be negative");
    this.name = options.name ?? "current";
    this.blockSizeBytes = options.blockSizeBytes;
    this.#totalBlocks = options.totalBlocks;
  }

  #open(): Map<string, { ref: BlockRef; data: Uint8Array }> {
    if (this.#blocks === null) throw closed(`block store ${this.name} is closed`);
    return this.#blocks;
  }

  // Every failure, a closed store or an aborted signal included, arrives as a rejected promise
  // (never a synchronous throw), as with the disk engine.

  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    return settle(() => {
      const blocks = this.#open();
      options?.signal?.throwIfAborted();
      const entry = blocks.get(ref.key);
      if (!entry) throw notExist(`block ${ref} not found`);
      if (
        options?.expectedCrc32 !== undefined && crc32(entry.data) !== options.expectedCrc32 >>> 0
      ) {
        throw blockUnavailable(`block ${ref} does not match its expected CRC`);
      }
      return entry.data.slice();
    });
  }

  putBlock(ref: BlockRef, data: Uint8Array, options?: PutOptions): Promise<void> {
    return settle(() => {
      const blocks = this.#open();
      options?.signal?.throwIfAborted();
      if (data.length > this.blockSizeBytes) {
        throw invalid(`block of ${data.length} bytes exceeds block size ${this.blockSizeBytes}`);
      }
      if (options?.ifAbsent && blocks.has(ref.key)) throw exists(`block ${ref} is already stored`);
      if (!blocks.has(ref.key) && blocks.size >= this.#totalBlocks) {
        throw new TorusError(
          ErrorCode.OutOfSpace,
          `block store ${this.name} is full (${blocks.size} blocks)`,
        );
      }
      const copy = new Uint8Array(this.blockSizeBytes);
      copy.set(data);
      blocks.set(ref.key, { ref, data: copy });
    });
  }

  readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    return settle(() => {
      const blocks = this.#open();
      options?.signal?.throwIfAborted();
      checkBlockRange(this.blockSizeBytes, offsetBytes, into.length);
      const entry = blocks.get(ref.key);
      if (!entry) throw notExist(`block ${ref} not found`);
      into.set(entry.data.subarray(offsetBytes, offsetBytes + into.length));
    });
  }

  readCachedAt(ref: BlockRef, offsetBytes: number, into: Uint8Array): boolean {
    const entry = this.#blocks?.get(ref.key);
    if (entry === undefined || offsetBytes < 0) return false;
    if (offsetBytes + into.length > this.blockSizeBytes) return false;
    into.set(entry.data.subarray(offsetBytes, offsetBytes + into.length));
    return true;
  }

  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return settle(() => {
      const block = this.#blockForRangeWrite(ref, offsetBytes, data.length, options);
      block.set(data, offsetBytes);
    });
  }

  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return settle(() => {
      const block = this.#blockForRangeWrite(ref, offsetBytes, lengthBytes, options);
      block.fill(0, offsetBytes, offsetBytes + lengthBytes);
    });
  }

  /**
   * The stored bytes a range write changes, created (or reset, when `fresh`) as zeros; absent
   * with `mustExist` (and not `fresh`) is `not_exist`.
   */
  #blockForRangeWrite(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options: RangeWriteOptions | undefined,
  ): Uint8Array {
    const blocks = this.#open();
    options?.signal?.throwIfAborted();
    checkBlockRange(this.blockSizeBytes, offsetBytes, lengthBytes);
    const entry = blocks.get(ref.key);
    if (entry) {
      if (options?.fresh) entry.data.fill(0);
      return entry.data;
    }
    if (options?.mustExist && !options.fresh) throw notExist(`block ${ref} not found`);
    if (blocks.size >= this.#totalBlocks) {
      throw new TorusError(
        ErrorCode.OutOfSpace,
        `block store ${this.name} is full (${blocks.size} blocks)`,
      );
    }
    const data = new Uint8Array(this.blockSizeBytes);
    blocks.set(ref.key, { ref, data });
    return data;
  }

  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    return settle(() => {
      const blocks = this.#open();
      options?.signal?.throwIfAborted();
      return blocks.has(ref.key);
    });
  }

  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    return settle(() => {
      const blocks = this.#open();
      options?.signal?.throwIfAborted();
      if (!blocks.delete(ref.key)) throw notExist(`block ${ref} not found`);
    });
  }

  async *blockRefs(): AsyncIterable<BlockRef> {
    const snapshot = [...this.#open().values()].map((entry) => entry.ref);
    for (const ref of snapshot) yield ref;
  }

  usedBlocks(): number {
    return this.#open().size;
  }

  totalBlocks(): number {
    this.#open();
    return this.#totalBlocks;
  }

  flush(): Promise<void> {
    return settle(() => {
      this.#open();
    });
  }

  close(): Promise<void> {
    this.#blocks = null;
    return Promise.resolve();
  }

  /** Same as {@link close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Runs `body` now and reports its result or its exception as a promise. */
function settle<T>(body: () => T): Promise<T> {
  try {
    return Promise.resolve(body());
  } catch (error) {
    return Promise.reject(error);
  }
}
