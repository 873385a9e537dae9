/**
 * Reusable byte buffers for request payloads and read replies, so the transmission hot path does
 * not allocate (and later garbage-collect) a fresh buffer per request.
 *
 * Buffers come in size classes of 2^k + 32 bytes (k >= 12): a 4 KiB write payload and a 4 KiB
 * read reply (a 16-byte simple reply header or a 28-byte OFFSET_DATA chunk prefix, then the data)
 * both fit the smallest class, so the reply can be written from the buffer it was read into,
 * header and data in one piece. Each buffer carries
 * its DataView, made once. The pool keeps at most `retainedBytesMax` of free buffers; beyond that
 * a returned buffer is left to the garbage collector. Single-threaded: shared by every
 * connection of a server.
 * @module
 */

import { assert } from "../../core/mod.ts";
import { NBD_READ_REPLY_PREFIX_MAX_BYTES } from "./protocol.ts";

const SMALLEST_CLASS_LOG2 = 12;

/** A buffer from the pool. `bytes.length` is its capacity (at least what was asked). */
export class PooledBuffer {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly sizeClass: number;

  constructor(sizeClass: number) {
    this.sizeClass = sizeClass;
    this.bytes = new Uint8Array(
      2 ** (sizeClass + SMALLEST_CLASS_LOG2) + NBD_READ_REPLY_PREFIX_MAX_BYTES,
    );
    this.view = new DataView(this.bytes.buffer);
  }
}

/** Options of {@link BufferPool}. */
export interface BufferPoolOptions {
  /** Most bytes of free buffers kept for reuse. */
  retainedBytesMax: number;
}

/** A pool of {@link PooledBuffer}s by size class. */
export class BufferPool {
  readonly #retainedBytesMax: number;
  #retainedBytes = 0;
  readonly #free: PooledBuffer[][] = [];

  constructor(options: BufferPoolOptions) {
    this.#retainedBytesMax = options.retainedBytesMax;
  }

  /** Bytes of free buffers held for reuse. */
  get retainedBytes(): number {
    return this.#retainedBytes;
  }

  /** A buffer of at least `lengthBytes` (contents unspecified). */
  take(lengthBytes: number): PooledBuffer {
    const sizeClass = classOf(lengthBytes);
    const free = this.#free[sizeClass];
    const buffer = free?.pop();
    if (buffer === undefined) return new PooledBuffer(sizeClass);
    this.#retainedBytes -= buffer.bytes.length;
    return buffer;
  }

  /** Returns a buffer taken from this pool; the caller no longer uses it. */
  give(buffer: PooledBuffer): void {
    if (this.#retainedBytes + buffer.bytes.length > this.#retainedBytesMax) return;
    let free = this.#free[buffer.sizeClass];
    if (free === undefined) {
      free = [];
      this.#free[buffer.sizeClass] = free;
    }
    free.push(buffer);
    this.#retainedBytes += buffer.bytes.length;
  }
}

/** The smallest class whose buffers hold `lengthBytes`. */
function classOf(lengthBytes: number): number {
  assert(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0, "buffer length");
  const payload = Math.max(lengthBytes - NBD_READ_REPLY_PREFIX_MAX_BYTES, 1);
  return Math.max(0, Math.ceil(Math.log2(payload)) - SMALLEST_CLASS_LOG2);
}
