/**
 * A BlockStore wrapper for tests: its next call can be held at a gate (the contract's
 * holdNextIo, at the level of store calls, for stores over a network), and it records the
 * fencing tokens of the changes it gets.
 * @module
 */

import type { BlockRef } from "../core/mod.ts";
import type { BlockCallOptions, BlockStore } from "./block_store.ts";
import type { IoHold } from "./storage_contract.ts";

/**
 * A store whose next call can be held (the contract's holdNextIo, at the level of store calls),
 * and which records the fencing tokens of the changes it got.
 */
export class HeldStore implements BlockStore {
  readonly kind: string;
  readonly name: string;
  readonly blockSizeBytes: number;
  readonly fenceTokens: (number | undefined)[] = [];
  readonly #inner: BlockStore;
  #hold: { gate: Promise<void>; arrived: () => void; later: number } | null = null;
  #armed = false;

  constructor(inner: BlockStore) {
    this.#inner = inner;
    this.kind = inner.kind;
    this.name = inner.name;
    this.blockSizeBytes = inner.blockSizeBytes;
  }

  holdNext(): IoHold {
    let release!: () => void;
    let arrived!: () => void;
    const gate = new Promise<void>((resolve) => release = resolve);
    const arrivedPromise = new Promise<void>((resolve) => arrived = resolve);
    const hold = { gate, arrived, later: 0 };
    this.#hold = hold;
    this.#armed = true;
    return { arrived: arrivedPromise, laterOperations: () => hold.later, release };
  }

  async #pass<T>(call: () => Promise<T>): Promise<T> {
    const hold = this.#hold;
    if (hold !== null && this.#armed) {
      this.#armed = false;
      hold.arrived();
      await hold.gate;
    } else if (hold !== null) {
      hold.later++;
    }
    return call();
  }

  #fenced(options?: BlockCallOptions): void {
    this.fenceTokens.push(options?.fenceToken);
  }

  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    return this.#pass(() => this.#inner.getBlock(ref, options));
  }
  putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    this.#fenced(options);
    return this.#pass(() => this.#inner.putBlock(ref, data, options));
  }
  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    return this.#pass(() => this.#inner.hasBlock(ref, options));
  }
  readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    return this.#pass(() => this.#inner.readAt(ref, offsetBytes, into, options));
  }
  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    this.#fenced(options);
    return this.#pass(() => this.#inner.writeAt(ref, offsetBytes, data, options));
  }
  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: BlockCallOptions,
  ): Promise<void> {
    this.#fenced(options);
    return this.#pass(() => this.#inner.zeroAt(ref, offsetBytes, lengthBytes, options));
  }
  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    this.#fenced(options);
    return this.#pass(() => this.#inner.deleteBlock(ref, options));
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
    return this.#pass(() => this.#inner.flush());
  }
  close(): Promise<void> {
    return this.#inner.close();
  }
}
