/**
 * The byte stream NBD runs over, as an interface: a Deno TCP or Unix connection satisfies it as
 * is, and a socket created through libc FFI (kernel attach) can implement it, so the same
 * handshake code runs over both. Also a buffered reader for the handshake, whose unread bytes
 * carry over into the transmission phase.
 * @module
 */

import type { ByteStream } from "../../core/mod.ts";

export { type ByteStream, readFull, StreamReader, writeAll } from "../../core/mod.ts";

/** A Deno connection as a ByteStream, with Nagle's algorithm off on TCP (the spec's advice). */
export function connStream(conn: Deno.Conn): ByteStream {
  if (conn.remoteAddr.transport === "tcp") (conn as Deno.TcpConn).setNoDelay(true);
  return conn;
}
