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
  invalid,
  notExist,
  TorusError,
} from "../core/mod.ts";
import type { BlockCallOptions, BlockStore } from "./block_store.ts";

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

  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    options?.signal?.throwIfAborted();
    const entry = this.#open().get(ref.key);
    if (!entry) return Promise.reject(notExist(`block ${ref} not found`));
    if (options?.expectedCrc32 !== undefined && crc32(entry.data) !== options.expectedCrc32) {
      return Promise.reject(blockUnavailable(`block ${ref} does not match its expected CRC`));
    }
    return Promise.resolve(entry.data.slice());
  }

  putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    options?.signal?.throwIfAborted();
    const blocks = this.#open();
    if (data.length > this.blockSizeBytes) {
      return Promise.reject(
        invalid(`block of ${data.length} bytes exceeds block size ${this.blockSizeBytes}`),
      );
    }
    if (!blocks.has(ref.key) && blocks.size >= this.#totalBlocks) {
      return Promise.reject(
        new TorusError(
          ErrorCode.OutOfSpace,
          `block store ${this.name} is full (${blocks.size} blocks)`,
        ),
      );
    }
    const copy = new Uint8Array(this.blockSizeBytes);
    copy.set(data);
    blocks.set(ref.key, { ref, data: copy });
    return Promise.resolve();
  }

  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    options?.signal?.throwIfAborted();
    return Promise.resolve(this.#open().has(ref.key));
  }

  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    options?.signal?.throwIfAborted();
    if (!this.#open().delete(ref.key)) {
      return Promise.reject(notExist(`block ${ref} not found`));
    }
    return Promise.resolve();
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
    this.#open();
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.#blocks = null;
    return Promise.resolve();
  }
}
