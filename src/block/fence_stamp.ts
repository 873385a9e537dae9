/**
 * The writer's fencing token on every change a volume sends to its store: a volume opened for
 * write sends its puts, range writes, zeroings and deletes through this wrapper, so the data
 * nodes of a cluster can refuse the changes of a writer whose lock was taken over
 * (ADR 0005, section 7). Reads pass through unchanged.
 * @module
 */

import type { BlockRef } from "../core/mod.ts";
import {
  type BlockCallOptions,
  type BlockStore,
  ForwardingStore,
  type PutOptions,
  type RangeWriteOptions,
} from "../storage/mod.ts";

/** `inner` with `fenceToken` added to every change. */
export class FenceStampedStore extends ForwardingStore {
  readonly fenceToken: number;

  constructor(inner: BlockStore, fenceToken: bigint) {
    super(inner);
    // Store revisions stay far below 2^53.
    this.fenceToken = Number(fenceToken);
  }

  #stamp<T extends BlockCallOptions>(options: T | undefined): T {
    return { ...options, fenceToken: this.fenceToken } as T;
  }

  /** Reads carry no token: a read done at once passes straight through too. */
  readCachedAt(ref: BlockRef, offsetBytes: number, into: Uint8Array): boolean {
    return this.inner.readCachedAt?.(ref, offsetBytes, into) ?? false;
  }

  override putBlock(ref: BlockRef, data: Uint8Array, options?: PutOptions): Promise<void> {
    return this.inner.putBlock(ref, data, this.#stamp(options));
  }
  override writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.inner.writeAt(ref, offsetBytes, data, this.#stamp(options));
  }
  override zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.inner.zeroAt(ref, offsetBytes, lengthBytes, this.#stamp(options));
  }
  override deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    return this.inner.deleteBlock(ref, this.#stamp(options));
  }
  /** The wrapped store belongs to its owner: closing the wrapper leaves it open. */
  override close(): Promise<void> {
    return Promise.resolve();
  }
}
