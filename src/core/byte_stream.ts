/**
 * A full-duplex byte stream as an interface (the subset of Deno.Conn that the wire protocols use):
 * a Deno TCP or Unix connection satisfies it as is, a socket made through libc FFI can implement
 * it, and a test can pass an in-memory pair, so protocol code never opens a socket itself. Also a
 * buffered reader of whole messages whose unread bytes carry over to the next phase of a
 * protocol. `peer` in messages names the other end (`NBD peer closed the connection`).
 * @module
 */

import { closed } from "./errors.ts";

/** A full-duplex byte stream (the subset of Deno.Conn that the protocols use). */
export interface ByteStream {
  /** Reads into `into`; the number of bytes read, or null at end of stream. */
  read(into: Uint8Array): Promise<number | null>;
  /** Writes some of `data`; the number of bytes written. */
  write(data: Uint8Array): Promise<number>;
  /** Closes both directions; pending reads and writes fail. */
  close(): void;
}

/** Writes all of `data` (a stream may take it in pieces). */
export async function writeAll(stream: ByteStream, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) {
    // Only the first write passes the caller's array itself, so a whole write allocates nothing.
    done += await stream.write(done === 0 ? data : data.subarray(done));
  }
}

/** Fills `into` completely; `closed` if the stream ends first (`peer` names who closed it). */
export async function readFull(
  stream: ByteStream,
  into: Uint8Array,
  peer = "the peer",
): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const n = await stream.read(done === 0 ? into : into.subarray(done));
    if (n === null) throw closed(`${peer} closed the connection`);
    done += n;
  }
}

/**
 * Buffered reads of whole messages from a stream, for the handshake. `buffer` is the caller's,
 * so the transmission phase can continue parsing the bytes read ahead ({@link start}..{@link end}).
 */
export class StreamReader {
  readonly stream: ByteStream;
  readonly buffer: Uint8Array;
  /** The unread bytes are buffer[start, end). */
  start = 0;
  end = 0;

  /** Names the other end in errors (`TDP peer`). */
  readonly peer: string;

  constructor(stream: ByteStream, buffer: Uint8Array, peer = "the peer") {
    this.stream = stream;
    this.buffer = buffer;
    this.peer = peer;
  }

  /**
   * The next `lengthBytes` bytes, as a view that stays valid until the next call; `closed` at end
   * of stream. `lengthBytes` must not exceed the buffer.
   */
  async readExact(lengthBytes: number): Promise<Uint8Array> {
    if (lengthBytes > this.buffer.length) {
      throw closed(`${this.peer} sent a message larger than the read buffer`);
    }
    if (this.end - this.start < lengthBytes && this.start > 0) {
      this.buffer.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    while (this.end - this.start < lengthBytes) {
      const n = await this.stream.read(this.buffer.subarray(this.end));
      if (n === null) throw closed(`${this.peer} closed the connection`);
      this.end += n;
    }
    const view = this.buffer.subarray(this.start, this.start + lengthBytes);
    this.start += lengthBytes;
    return view;
  }

  /** Fills `into`: first from the buffered bytes, then straight from the stream. */
  async readInto(into: Uint8Array): Promise<void> {
    const buffered = Math.min(this.end - this.start, into.length);
    if (buffered > 0) {
      into.set(this.buffer.subarray(this.start, this.start + buffered));
      this.start += buffered;
    }
    if (buffered < into.length) await readFull(this.stream, into.subarray(buffered), this.peer);
  }

  /** Reads and drops `lengthBytes` bytes (an option's data the reader does not want). */
  async skip(lengthBytes: number): Promise<void> {
    let left = lengthBytes;
    while (left > 0) {
      const chunk = Math.min(left, this.buffer.length);
      await this.readExact(chunk);
      left -= chunk;
    }
  }
}
