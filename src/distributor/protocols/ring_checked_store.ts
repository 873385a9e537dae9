/**
 * A test double of a data node's ring check (src/server/fenced_store.ts does it for real): refuses
 * changes placed by a ring older than the one it is told of, with `compare_failed`. Used by the
 * protocol contract and the distributor's test clusters.
 * @module
 */

import { type BlockRef, ErrorCode, TorusError } from "../../core/mod.ts";
import {
  type BlockCallOptions,
  type BlockStore,
  ForwardingStore,
  type PutOptions,
  type RangeWriteOptions,
} from "../../storage/mod.ts";

/** Refuses changes placed by a ring older than `nodeRingVersion()` (as FencedStore does). */
export class RingCheckedStore extends ForwardingStore {
  readonly #nodeRingVersion: () => number;

  constructor(inner: BlockStore, nodeRingVersion: () => number) {
    super(inner);
    this.#nodeRingVersion = nodeRingVersion;
  }

  #check(options: BlockCallOptions | undefined): void {
    const version = options?.ringVersion ?? 0;
    if (version > 0 && version < this.#nodeRingVersion()) {
      throw new TorusError(
        ErrorCode.CompareFailed,
        `ring version ${version} is older than ${this.#nodeRingVersion()}`,
      );
    }
  }

  /** Reads are not fenced: one done at once passes straight through too. */
  readCachedAt(ref: BlockRef, offsetBytes: number, into: Uint8Array): boolean {
    return this.inner.readCachedAt?.(ref, offsetBytes, into) ?? false;
  }

  override async putBlock(ref: BlockRef, data: Uint8Array, options?: PutOptions): Promise<void> {
    this.#check(options);
    await super.putBlock(ref, data, options);
  }

  override async writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    this.#check(options);
    await super.writeAt(ref, offsetBytes, data, options);
  }

  override async zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    this.#check(options);
    await super.zeroAt(ref, offsetBytes, lengthBytes, options);
  }

  override async deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    this.#check(options);
    await super.deleteBlock(ref, options);
  }
}
