/**
 * The byte stream NBD runs over, as an interface: a Deno TCP or Unix connection satisfies it as
 * is, and a socket created through libc FFI (kernel attach) can implement it, so the same
 * handshake code runs over both. Also a buffered reader for the handshake, whose unread bytes
 * carry over into the transmission phase.
 * @module
 */

import { closed } from "../../core/mod.ts";

/** A full-duplex byte stream (the subset of Deno.Conn that NBD uses). */
export interface ByteStream {
  /** Reads into `into`; the number of bytes read, or null at end of stream. */
  read(into: Uint8Array): Promise<number | null>;
  /** Writes some of `data`; the number of bytes written. */
  write(data: Uint8Array): Promise<number>;
  /** Closes both directions; pending reads and writes fail. */
  close(): void;
}

/** A Deno connection as a ByteStream, with Nagle's algorithm off on TCP (the spec's advice). */
export function connStream(conn: Deno.Conn): ByteStream {
  if (conn.remoteAddr.transport === "tcp") (conn as Deno.TcpConn).setNoDelay(true);
  return conn;
}

/** Writes all of `data` (a stream may take it in pieces). */
export async function writeAll(stream: ByteStream, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) {
    // Only the first write passes the caller's array itself, so a whole write allocates nothing.
    done += await stream.write(done === 0 ? data : data.subarray(done));
  }
}

/** Fills `into` completely; `closed` if the stream ends first. */
export async function readFull(stream: ByteStream, into: Uint8Array): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const n = await stream.read(done === 0 ? into : into.subarray(done));
    if (n === null) throw closed("NBD peer closed the connection");
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

  constructor(stream: ByteStream, buffer: Uint8Array) {
    this.stream = stream;
    this.buffer = buffer;
  }

  /**
   * The next `lengthBytes` bytes, as a view that stays valid until the next call; `closed` at end
   * of stream. `lengthBytes` must not exceed the buffer.
   */
  async readExact(lengthBytes: number): Promise<Uint8Array> {
    if (lengthBytes > this.buffer.length) throw closed("NBD message larger than the read buffer");
    if (this.end - this.start < lengthBytes && this.start > 0) {
      this.buffer.copyWithin(0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    while (this.end - this.start < lengthBytes) {
      const n = await this.stream.read(this.buffer.subarray(this.end));
      if (n === null) throw closed("NBD peer closed the connection");
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
    if (buffered < into.length) await readFull(this.stream, into.subarray(buffered));
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
