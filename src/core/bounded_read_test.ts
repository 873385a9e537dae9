/** Bounded reads: endless input fails at the cap, input at the cap passes, lines stop early. */

import assert from "node:assert/strict";
import {
  type ByteReader,
  decodeUtf8,
  ErrorCode,
  isTorusError,
  readAllBounded,
  readLineBounded,
} from "./mod.ts";

/** An endless source of `fill` bytes that counts what it handed out. */
function endless(fill = 0): ByteReader & { given: number } {
  const reader = {
    given: 0,
    read(buffer: Uint8Array): Promise<number | null> {
      buffer.fill(fill);
      reader.given += buffer.length;
      return Promise.resolve(buffer.length);
    },
  };
  return reader;
}

/** `bytes` in reads of at most `chunk` bytes, then the end. */
function source(bytes: Uint8Array, chunk = 3): ByteReader {
  let offset = 0;
  return {
    read(buffer: Uint8Array): Promise<number | null> {
      if (offset >= bytes.length) return Promise.resolve(null);
      const n = Math.min(chunk, buffer.length, bytes.length - offset);
      buffer.set(bytes.subarray(offset, offset + n));
      offset += n;
      return Promise.resolve(n);
    },
  };
}

const invalidMatching = (pattern: RegExp) => (error: unknown) =>
  isTorusError(error, ErrorCode.Invalid) && pattern.test(error.message);

Deno.test("readAllBounded stops an endless input one byte past the cap", async () => {
  const reader = endless();
  await assert.rejects(
    readAllBounded(reader, 1000, "config file /dev/zero"),
    invalidMatching(/^config file \/dev\/zero is larger than 1000 bytes$/),
  );
  assert.equal(reader.given, 1001);
  const big = endless();
  await assert.rejects(readAllBounded(big, 1 << 20, "x"), invalidMatching(/larger than 1048576/));
  assert.equal(big.given, (1 << 20) + 1);
});

Deno.test("readAllBounded returns input up to and at the cap, whatever the chunking", async () => {
  const bytes = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
  assert.deepEqual(await readAllBounded(source(bytes, 7), 1000, "x"), bytes);
  assert.deepEqual(await readAllBounded(source(bytes, 1000), 5000, "x"), bytes);
  assert.deepEqual(await readAllBounded(source(new Uint8Array(0)), 10, "x"), new Uint8Array(0));
  await assert.rejects(
    readAllBounded(source(bytes, 7), 999, "x"),
    invalidMatching(/larger than 999/),
  );
});

Deno.test("readLineBounded reads one line, strips CR, and refuses an overlong one", async () => {
  const text = new TextEncoder().encode("YES\r\nrest");
  const reader = source(text, 1);
  assert.deepEqual(await readLineBounded(reader, 16, "the answer"), Uint8Array.of(89, 69, 83));
  assert.deepEqual(
    await readLineBounded(reader, 16, "the answer"),
    Uint8Array.of(114, 101, 115, 116),
  );
  assert.equal(await readLineBounded(reader, 16, "the answer"), null);
  const long = endless(0x41);
  await assert.rejects(
    readLineBounded(long, 1024, "the answer"),
    invalidMatching(/^the answer is longer than 1024 bytes$/),
  );
  assert.equal(long.given, 1025);
});

Deno.test("decodeUtf8 refuses invalid UTF-8 instead of replacing it", () => {
  assert.equal(decodeUtf8(new TextEncoder().encode("é"), "x"), "é");
  assert.throws(
    () => decodeUtf8(Uint8Array.of(0x7b, 0xff), "config file c"),
    invalidMatching(/not valid UTF-8/),
  );
});
