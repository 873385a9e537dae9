/**
 * What every protocol's client store has in common: the remote counts of the last reply, the calls
 * in flight that close waits for, the closed state, and close's contract (it flushes the remote
 * store only when a change went out since the last flush).
 * @module
 */

import { type BlockRef, closed, InFlight } from "../../core/mod.ts";
import type { RangeWriteOptions } from "../../storage/mod.ts";
import type { PeerCallOptions, PeerStore } from "./protocol.ts";

/** Counts of the remote store, as its last reply gave them. */
export interface RemoteCounts {
  readonly usedBlocks: number;
  readonly totalBlocks: number;
}

/** The base of TdpPeerStore and GrpcPeerStore. */
export abstract class PeerStoreBase implements PeerStore {
  abstract readonly kind: string;
  readonly name: string;
  readonly address: string;
  readonly blockSizeBytes: number;
  /** The remote counts from the latest reply. */
  protected counts: RemoteCounts = { usedBlocks: 0, totalBlocks: 0 };
  readonly #calls = new InFlight();
  readonly #protocol: string;
  #closed = false;
  #closing = false;
  /** A change went out since the last flush did (close flushes only then). */
  #changedSinceFlush = false;

  /** `protocol` names the client in errors (`TDP`, `gRPC`). */
  protected constructor(address: string, blockSizeBytes: number, protocol: string) {
    this.address = address;
    this.name = address;
    this.blockSizeBytes = blockSizeBytes;
    this.#protocol = protocol;
  }

  usedBlocks(): number {
    this.checkOpen();
    return this.counts.usedBlocks;
  }

  totalBlocks(): number {
    this.checkOpen();
    return this.counts.totalBlocks;
  }

  /** `closed` once close() has run. */
  protected checkOpen(): void {
    if (this.#closed) throw closed(`the ${this.#protocol} client of ${this.address} is closed`);
  }

  /** Runs `work` as a call in flight (close waits for it). */
  protected tracked<T>(work: () => Promise<T>): Promise<T> {
    return this.#calls.run(work);
  }

  /** Notes a change going out (the next close flushes), or a flush (it does not need to). */
  protected noteSent(what: "change" | "flush" | "read"): void {
    if (what === "change") this.#changedSinceFlush = true;
    else if (what === "flush") this.#changedSinceFlush = false;
  }

  /** Flushes if a change went out since the last flush, then lets the protocol let go. */
  async close(): Promise<void> {
    if (this.#closing) {
      await this.#calls.idle();
      return;
    }
    this.#closing = true;
    await this.#calls.idle();
    // The BlockStore contract: close flushes. Only changes sent through this client need it.
    if (this.#changedSinceFlush) await this.flush().catch(() => {});
    this.#closed = true;
    await this.#calls.idle();
    await this.release();
  }

  /** Closes the protocol's connections once no call is in flight. */
  protected abstract release(): Promise<void>;

  abstract refreshCounts(options?: PeerCallOptions): Promise<void>;
  abstract getBlock(ref: BlockRef, options?: PeerCallOptions): Promise<Uint8Array>;
  abstract putBlock(ref: BlockRef, data: Uint8Array, options?: PeerCallOptions): Promise<void>;
  abstract hasBlock(ref: BlockRef, options?: PeerCallOptions): Promise<boolean>;
  abstract hasBlocks(refs: readonly BlockRef[], options?: PeerCallOptions): Promise<boolean[]>;
  abstract readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: PeerCallOptions,
  ): Promise<void>;
  abstract writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions & PeerCallOptions,
  ): Promise<void>;
  abstract zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions & PeerCallOptions,
  ): Promise<void>;
  abstract deleteBlock(ref: BlockRef, options?: PeerCallOptions): Promise<void>;
  abstract flush(): Promise<void>;
  abstract blockRefs(): AsyncIterable<BlockRef>;
}
