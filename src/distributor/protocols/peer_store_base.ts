/**
 * What every protocol's client store has in common: the remote counts of the last reply, the calls
 * in flight that close waits for, the closed state, and close's contract (it flushes the remote
 * store only when a change went out since the last flush).
 * @module
 */

import { type BlockRef, closed, InFlight, invalid, unavailable } from "../../core/mod.ts";
import type { PutOptions, RangeWriteOptions } from "../../storage/mod.ts";
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
  /** The server instance of the latest handshake (null before the first). */
  protected serverInstance: string | null = null;
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

  get instance(): string | null {
    return this.serverInstance;
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

  /** A whole block as a reply carried it; `unavailable` when it has another size. */
  protected checkedBlock(data: Uint8Array): Uint8Array {
    if (data.length !== this.blockSizeBytes) {
      throw unavailable(`${this.address} sent a block of ${data.length} bytes`);
    }
    return data;
  }

  /** Copies a range read's reply into `into`; `unavailable` when its length differs. */
  protected fillFrom(into: Uint8Array, data: Uint8Array): void {
    if (data.length !== into.length) {
      throw unavailable(
        `${this.address} answered a read of ${into.length} bytes with ${data.length}`,
      );
    }
    into.set(data);
  }

  /** Closes the protocol's connections once no call is in flight. */
  protected abstract release(): Promise<void>;

  abstract refreshCounts(options?: PeerCallOptions): Promise<void>;
  abstract getBlock(ref: BlockRef, options?: PeerCallOptions): Promise<Uint8Array>;
  abstract putBlock(
    ref: BlockRef,
    data: Uint8Array,
    options?: PutOptions & PeerCallOptions,
  ): Promise<void>;
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

/**
 * `value` as a u32 field; `invalid` for what no store accepts (negative, fractional, too large),
 * rather than letting the encoding wrap it into another number.
 */
export function wireU32(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw invalid(`${what} ${value} is not a byte position in a block`);
  }
  return value;
}

/**
 * The ring version a change carries (`ringVersion`), as the wire's u64 (0 for none); `invalid` if
 * it is not a non-negative safe integer.
 */
export function wireRingVersion(options?: PeerCallOptions): number {
  const version = options?.ringVersion ?? 0;
  if (!Number.isSafeInteger(version) || version < 0) {
    throw invalid(`ring version ${version} is invalid`);
  }
  return version;
}

/**
 * The bytes a change sends: the caller's own when it never changes them (`unchangingData`),
 * else a copy made now, since a queued request may be written after its call returned (a call
 * that timed out) and the caller may change its buffer from then on.
 */
export function sentData(data: Uint8Array, options?: PeerCallOptions): Uint8Array {
  return options?.unchangingData === true ? data : data.slice();
}
