/**
 * The writer's fencing token on every change a volume sends to its store: a volume opened for
 * write sends its puts, range writes, zeroings and deletes through this wrapper, so the data
 * nodes of a cluster can refuse the changes of a writer whose lock was taken over
 * (ADR 0005, section 7). Reads pass through unchanged.
 * @module
 */

import type { BlockRef } from "../core/mod.ts";
import type { BlockCallOptions, BlockStore, RangeWriteOptions } from "../storage/mod.ts";

/** `inner` with `fenceToken` added to every change. */
export class FenceStampedStore implements BlockStore {
  readonly kind: string;
  readonly name: string;
  readonly blockSizeBytes: number;
  readonly fenceToken: number;
  readonly #inner: BlockStore;

  constructor(inner: BlockStore, fenceToken: bigint) {
    this.#inner = inner;
    this.kind = inner.kind;
    this.name = inner.name;
    this.blockSizeBytes = inner.blockSizeBytes;
    // Store revisions stay far below 2^53.
    this.fenceToken = Number(fenceToken);
  }

  #stamp<T extends BlockCallOptions>(options: T | undefined): T {
    return { ...options, fenceToken: this.fenceToken } as T;
  }

  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    return this.#inner.getBlock(ref, options);
  }
  putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    return this.#inner.putBlock(ref, data, this.#stamp(options));
  }
  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    return this.#inner.hasBlock(ref, options);
  }
  readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    return this.#inner.readAt(ref, offsetBytes, into, options);
  }
  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.#inner.writeAt(ref, offsetBytes, data, this.#stamp(options));
  }
  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.#inner.zeroAt(ref, offsetBytes, lengthBytes, this.#stamp(options));
  }
  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    return this.#inner.deleteBlock(ref, this.#stamp(options));
  }
  blockRefs(): AsyncIterable<BlockRef> {
    return this.#inner.blockRefs();
  }
  usedBlocks(): number {
    return this.#inner.usedBlocks();
  }
  totalBlocks(): number {
    return this.#inner.totalBlocks();
  }
  flush(): Promise<void> {
    return this.#inner.flush();
  }
  /** The wrapped store belongs to its owner: closing the wrapper leaves it open. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}
