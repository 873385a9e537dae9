/**
 * Reading input whose size is not ours to trust (a config file that may be `/dev/zero`, a PEM
 * file, a line typed at a prompt) with a cap: at most `maxBytes` are kept, and one byte more
 * fails the read with a one-line `invalid`, so no input can grow the process without bound. The
 * reader is passed in (a file, stdin, a socket), so this module itself does no I/O.
 * @module
 */

import { invalid } from "./errors.ts";

/** Anything with Deno's `read` shape: fills `buffer`, returns the count or null at the end. */
export interface ByteReader {
  read(buffer: Uint8Array): Promise<number | null>;
}

/** Read size of one call: large enough for few calls, small enough to cap memory early. */
const CHUNK_BYTES = 64 * 1024;

/**
 * Reads `reader` to its end, keeping at most `maxBytes`; `what` names the input in the error
 * (`config file /x`). Throws `invalid` as soon as more than `maxBytes` arrive.
 */
export async function readAllBounded(
  reader: ByteReader,
  maxBytes: number,
  what: string,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  // One byte more than allowed is enough to tell "too large" from "exactly the limit".
  const buffer = new Uint8Array(Math.min(CHUNK_BYTES, maxBytes + 1));
  for (;;) {
    const room = Math.min(buffer.length, maxBytes + 1 - total);
    const n = await reader.read(buffer.subarray(0, room));
    if (n === null) break;
    total += n;
    if (total > maxBytes) throw invalid(`${what} is larger than ${maxBytes} bytes`);
    chunks.push(buffer.slice(0, n));
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

/**
 * Reads one line (without its `\n` and a trailing `\r`) byte by byte, so nothing after the line
 * is consumed; null at end of input before any byte. Throws `invalid` when the line is longer
 * than `maxBytes`.
 */
export async function readLineBounded(
  reader: ByteReader,
  maxBytes: number,
  what: string,
): Promise<Uint8Array | null> {
  const line = new Uint8Array(maxBytes);
  const byte = new Uint8Array(1);
  let length = 0;
  for (;;) {
    const n = await reader.read(byte);
    if (n === null) return length > 0 ? line.slice(0, length) : null;
    if (n === 0) continue;
    if (byte[0] === 0x0a) break;
    if (length === maxBytes) throw invalid(`${what} is longer than ${maxBytes} bytes`);
    line[length++] = byte[0]!;
  }
  if (length > 0 && line[length - 1] === 0x0d) length--;
  return line.slice(0, length);
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Decodes UTF-8 strictly: invalid bytes are an `invalid` error naming `what`, not U+FFFD. */
export function decodeUtf8(bytes: Uint8Array, what: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw invalid(`${what} is not valid UTF-8`);
  }
}
