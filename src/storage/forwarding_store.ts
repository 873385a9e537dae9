/**
 * A BlockStore that passes every call to another: the base of wrappers that change a few calls
 * (a fence that refuses old writers, a stamp that adds the writer's token, a test gate) and
 * leave the rest as they are.
 * @module
 */

import type { BlockRef } from "../core/mod.ts";
import type { BlockCallOptions, BlockStore, PutOptions, RangeWriteOptions } from "./block_store.ts";

/** Every call goes to `inner`; subclasses override what they change. */
export class ForwardingStore implements BlockStore {
  readonly kind: string;
  readonly name: string;
  readonly blockSizeBytes: number;
  protected readonly inner: BlockStore;

  constructor(inner: BlockStore) {
    this.inner = inner;
    this.kind = inner.kind;
    this.name = inner.name;
    this.blockSizeBytes = inner.blockSizeBytes;
  }

  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    return this.inner.getBlock(ref, options);
  }
  putBlock(ref: BlockRef, data: Uint8Array, options?: PutOptions): Promise<void> {
    return this.inner.putBlock(ref, data, options);
  }
  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    return this.inner.hasBlock(ref, options);
  }
  readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    return this.inner.readAt(ref, offsetBytes, into, options);
  }
  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.inner.writeAt(ref, offsetBytes, data, options);
  }
  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.inner.zeroAt(ref, offsetBytes, lengthBytes, options);
  }
  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    return this.inner.deleteBlock(ref, options);
  }
  blockRefs(): AsyncIterable<BlockRef> {
    return this.inner.blockRefs();
  }
  usedBlocks(): number {
    return this.inner.usedBlocks();
  }
  totalBlocks(): number {
    return this.inner.totalBlocks();
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
