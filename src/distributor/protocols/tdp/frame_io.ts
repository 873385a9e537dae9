/**
 * Frames over a byte stream: a reader that checks every header against the bounds before it
 * reads a body, and a writer that sends queued frames in order from one loop, gathering small
 * frames into one write (a reply to a 4 KiB read is one syscall with its neighbours, not three).
 * @module
 */

import { setImmediate } from "node:timers";
import { type ByteStream, closed, readFull, writeAll } from "../../../core/mod.ts";
import { type FrameHeader, readHeader, TDP_HEADER_BYTES } from "./codec.ts";

const READ_BUFFER_BYTES = 256 * 1024;
/** Frames up to this size are copied into the gather buffer; larger ones are written as they are. */
const GATHER_PART_MAX_BYTES = 64 * 1024;
const GATHER_BUFFER_BYTES = 256 * 1024;
/** Bodies from this size up are read into the reader's own buffer when it lends bodies. */
export const LENT_BODY_MIN_BYTES = 64 * 1024;

/**
 * A frame read: its header and its body. The caller owns the body, except a reader made with
 * `lendsLargeBodies`: there a body over LENT_BODY_MIN_BYTES is valid until the next `next()`.
 */
export interface Frame {
  readonly header: FrameHeader;
  readonly body: Uint8Array;
}

/** Reads frames of one direction (`replies`) from a stream. */
export class FrameReader {
  readonly #stream: ByteStream;
  readonly #replies: boolean;
  readonly #peer: string;
  readonly #lendsLargeBodies: boolean;
  /** The buffer lent large bodies, grown to the largest one read. */
  #lent = new Uint8Array(0);
  readonly #buffer = new Uint8Array(READ_BUFFER_BYTES);
  #start = 0;
  #end = 0;
  /** The largest body accepted; set once the handshake fixed the block size. */
  bodyMaxBytes: number;
  /** Whether part of a frame has arrived and the rest has not (a stalled peer shows here). */
  inFrame = false;
  /** Whether a next() call is waiting for bytes (not the caller holding back). */
  reading = false;
  /** Frames read so far. */
  framesRead = 0;

  constructor(
    stream: ByteStream,
    options: { replies: boolean; peer: string; bodyMaxBytes: number; lendsLargeBodies?: boolean },
  ) {
    this.#stream = stream;
    this.#replies = options.replies;
    // A server hands a request's data to a store that copies it at the call, before it reads
    // the next frame: one buffer for every block-sized body spares a fresh allocation (and the
    // garbage collector's work for it) per block written.
    this.#lendsLargeBodies = options.lendsLargeBodies ?? false;
    this.#peer = options.peer;
    this.bodyMaxBytes = options.bodyMaxBytes;
  }

  /**
   * The next frame, or null when the stream ended between frames. A stream that ends inside a
   * frame throws `closed`; a header that breaks the rules throws TdpFrameError.
   */
  async next(): Promise<Frame | null> {
    this.reading = true;
    try {
      return await this.#next();
    } finally {
      this.reading = false;
    }
  }

  async #next(): Promise<Frame | null> {
    this.inFrame = this.#end > this.#start;
    if (!await this.#fill(TDP_HEADER_BYTES, true)) return null;
    this.inFrame = true;
    const header = readHeader(this.#buffer, this.#start, this.#replies, this.bodyMaxBytes);
    this.#start += TDP_HEADER_BYTES;
    const body = this.#bodyFor(header.bodyBytes);
    const buffered = Math.min(this.#end - this.#start, body.length);
    body.set(this.#buffer.subarray(this.#start, this.#start + buffered));
    this.#start += buffered;
    if (buffered < body.length) {
      if (body.length - buffered < this.#buffer.length) {
        // A short rest is read through the buffer, so the next headers come in the same read.
        await this.#fill(body.length - buffered, false);
        body.set(
          this.#buffer.subarray(this.#start, this.#start + body.length - buffered),
          buffered,
        );
        this.#start += body.length - buffered;
      } else {
        await readFull(this.#stream, body.subarray(buffered), this.#peer);
      }
    }
    this.inFrame = this.#end > this.#start;
    this.framesRead++;
    return { header, body };
  }

  #bodyFor(bytes: number): Uint8Array {
    if (!this.#lendsLargeBodies || bytes < LENT_BODY_MIN_BYTES) return new Uint8Array(bytes);
    if (this.#lent.length < bytes) this.#lent = new Uint8Array(bytes);
    return this.#lent.subarray(0, bytes);
  }

  /** Buffers at least `bytes`; false if the stream ended before any byte of them (`atBoundary`). */
  async #fill(bytes: number, atBoundary: boolean): Promise<boolean> {
    if (this.#end - this.#start >= bytes) return true;
    if (this.#start > 0) {
      this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    while (this.#end < bytes) {
      const n = await this.#stream.read(this.#buffer.subarray(this.#end));
      if (n !== null && n > 0) this.inFrame = true;
      if (n === null) {
        if (atBoundary && this.#end === 0) return false;
        throw closed(`${this.#peer} closed the connection inside a frame`);
      }
      this.#end += n;
    }
    return true;
  }
}

/**
 * Sends frames in the order they are queued. A failed write fails the writer: `onError` is told
 * once, and later frames are dropped (the connection is going away).
 */
export class FrameWriter {
  readonly #stream: ByteStream;
  readonly #onError: (error: unknown) => void;
  #queue: Uint8Array[] = [];
  #spare: Uint8Array[] = [];
  #running = false;
  #failed = false;
  readonly #gather = new Uint8Array(GATHER_BUFFER_BYTES);
  #idleWaiters: (() => void)[] = [];

  readonly #moreComing: () => boolean;
  readonly #start = () => void this.#run();

  constructor(
    stream: ByteStream,
    onError: (error: unknown) => void,
    moreComing: () => boolean = () => false,
  ) {
    this.#stream = stream;
    this.#onError = onError;
    this.#moreComing = moreComing;
  }

  /**
   * Queues the chunks of one frame. The write starts once this turn's microtasks ran, or, while
   * `moreComing()` says other frames of this connection are about to be queued (calls still in
   * flight), after the event loop's next turn: frames that complete together leave in one
   * write. Each write wakes the peer's process, and a wakeup costs more here than the bytes.
   */
  send(chunks: readonly Uint8Array[]): void {
    if (this.#failed) return;
    for (const chunk of chunks) this.#queue.push(chunk);
    if (!this.#running) {
      this.#running = true;
      if (this.#moreComing()) setImmediate(this.#start);
      else queueMicrotask(this.#start);
    }
  }

  /** Resolves once everything queued so far was written (or the writer failed). */
  idle(): Promise<void> {
    if (!this.#running) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  async #run(): Promise<void> {
    try {
      while (this.#queue.length > 0 && !this.#failed) {
        // Swap the queues: frames queued while this batch is written gather for the next one.
        const batch = this.#queue;
        this.#queue = this.#spare;
        this.#spare = batch;
        await this.#writeBatch(batch);
        batch.length = 0;
      }
    } catch (error) {
      this.#failed = true;
      this.#queue.length = 0;
      this.#onError(error);
    } finally {
      this.#running = false;
      const waiters = this.#idleWaiters;
      this.#idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  async #writeBatch(batch: readonly Uint8Array[]): Promise<void> {
    let used = 0;
    for (const chunk of batch) {
      if (chunk.length <= GATHER_PART_MAX_BYTES) {
        if (used + chunk.length > this.#gather.length) {
          await writeAll(this.#stream, this.#gather.subarray(0, used));
          used = 0;
        }
        this.#gather.set(chunk, used);
        used += chunk.length;
        continue;
      }
      if (used > 0) await writeAll(this.#stream, this.#gather.subarray(0, used));
      used = 0;
      await writeAll(this.#stream, chunk);
    }
    if (used > 0) await writeAll(this.#stream, this.#gather.subarray(0, used));
  }
}
