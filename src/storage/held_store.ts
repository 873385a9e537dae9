/**
 * A BlockStore wrapper for tests: its next call can be held at a gate (the contract's
 * holdNextIo, at the level of store calls, for stores over a network), and it records the
 * fencing tokens of the changes it gets.
 * @module
 */

import { type BlockRef, blockUnavailable } from "../core/mod.ts";
import type { BlockCallOptions, PutOptions, RangeWriteOptions } from "./block_store.ts";
import { ForwardingStore } from "./forwarding_store.ts";
import type { IoHold } from "./storage_contract.ts";

/**
 * A store whose next call can be held (the contract's holdNextIo, at the level of store calls),
 * and which records the fencing tokens and ring versions of the changes it got. A ref can be
 * torn: its reads then fail their checksums, as a copy torn by a power loss does, until it is
 * written whole or deleted.
 */
export class HeldStore extends ForwardingStore {
  readonly fenceTokens: (number | undefined)[] = [];
  readonly ringVersions: (number | undefined)[] = [];
  readonly #torn = new Set<string>();
  #hold: { gate: Promise<void>; arrived: () => void; later: number } | null = null;
  #armed = false;
  #all: IoHold | null = null;
  #gateOfAll: Promise<void> = Promise.resolve();

  holdNext(): IoHold {
    let release!: () => void;
    let arrived!: () => void;
    const gate = new Promise<void>((resolve) => release = resolve);
    const arrivedPromise = new Promise<void>((resolve) => arrived = resolve);
    const hold = { gate, arrived, later: 0 };
    this.#gateOfAll = gate;
    this.#hold = hold;
    this.#armed = true;
    return { arrived: arrivedPromise, laterOperations: () => hold.later, release };
  }

  /** Holds every call from now on (a store that stopped answering) until released. */
  holdAll(): IoHold {
    const hold = this.holdNext();
    this.#all = hold;
    return {
      ...hold,
      release: () => {
        this.#all = null;
        hold.release();
      },
    };
  }

  async #pass<T>(call: () => Promise<T>): Promise<T> {
    if (this.#all !== null) await this.#gateOfAll;
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

  /** Makes reads of `ref` fail their checksums until it is put again or deleted. */
  tear(ref: BlockRef): void {
    this.#torn.add(ref.key);
  }

  #checkTorn(ref: BlockRef): void {
    if (this.#torn.has(ref.key)) {
      throw blockUnavailable(`${ref}: a sector failed its checksum (torn in a test)`);
    }
  }

  #fenced(options?: BlockCallOptions): void {
    this.fenceTokens.push(options?.fenceToken);
    this.ringVersions.push(options?.ringVersion);
  }

  override getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    return this.#pass(() => {
      this.#checkTorn(ref);
      return this.inner.getBlock(ref, options);
    });
  }
  override putBlock(ref: BlockRef, data: Uint8Array, options?: PutOptions): Promise<void> {
    this.#fenced(options);
    return this.#pass(async () => {
      await this.inner.putBlock(ref, data, options);
      this.#torn.delete(ref.key);
    });
  }
  override hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    return this.#pass(() => this.inner.hasBlock(ref, options));
  }
  override readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    return this.#pass(() => {
      this.#checkTorn(ref);
      return this.inner.readAt(ref, offsetBytes, into, options);
    });
  }
  override writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    this.#fenced(options);
    return this.#pass(() => this.inner.writeAt(ref, offsetBytes, data, options));
  }
  override zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    this.#fenced(options);
    return this.#pass(() => this.inner.zeroAt(ref, offsetBytes, lengthBytes, options));
  }
  override deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    this.#fenced(options);
    return this.#pass(async () => {
      await this.inner.deleteBlock(ref, options);
      this.#torn.delete(ref.key);
    });
  }
  override flush(): Promise<void> {
    return this.#pass(() => this.inner.flush());
  }
}
