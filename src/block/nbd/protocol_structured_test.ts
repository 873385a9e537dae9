/**
 * The NBD codec's structured replies and metadata contexts: the spec's byte layouts, round trips,
 * and truncated, oversized, lying and random input that must be rejected as `invalid` only.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom, testSeed } from "../../core/mod.ts";
import {
  decodeBlockStatusPayload,
  decodeChunkOffset,
  decodeErrorPayload,
  decodeMetaContextReply,
  decodeMetaContextRequest,
  decodeOffsetHolePayload,
  decodeReplyStart,
  decodeStructuredReplyHeader,
  encodeBlockStatusPayload,
  encodeChunk,
  encodeErrorPayload,
  encodeMetaContextReply,
  encodeMetaContextRequest,
  encodeOffsetHolePayload,
  encodeSimpleReply,
  encodeStructuredReplyHeader,
  isErrorChunkType,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_META_CONTEXT,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_HEADER_BYTES,
  NBD_STRUCTURED_REPLY_MAGIC,
  newStructuredReplyHeader,
} from "./protocol.ts";

const hex = (bytes: Uint8Array) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");

function assertInvalid(fn: () => unknown, what = ""): void {
  assert.throws(fn, (error: unknown) => isTorusError(error, ErrorCode.Invalid), what);
}

/** Every strict prefix of `bytes` is rejected. */
function assertEveryTruncationInvalid(bytes: Uint8Array, decode: (b: Uint8Array) => unknown) {
  for (let cut = 0; cut < bytes.length; cut++) {
    assertInvalid(() => decode(bytes.subarray(0, cut)), `cut at ${cut}`);
  }
}

function withTrailingByte(bytes: Uint8Array): Uint8Array {
  const longer = new Uint8Array(bytes.length + 1);
  longer.set(bytes);
  return longer;
}

Deno.test("protocol structured: constants have the spec's values", () => {
  assert.equal(NBD_OPT_STRUCTURED_REPLY, 8);
  assert.equal(NBD_OPT_LIST_META_CONTEXT, 9);
  assert.equal(NBD_OPT_SET_META_CONTEXT, 10);
  assert.equal(NBD_REP_META_CONTEXT, 4);
  assert.equal(NBD_STRUCTURED_REPLY_MAGIC, 0x668e33ef);
  assert.equal(NBD_REPLY_FLAG_DONE, 1);
  assert.deepEqual(
    [NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_REPLY_TYPE_OFFSET_HOLE],
    [0, 1, 2],
  );
  assert.equal(NBD_REPLY_TYPE_BLOCK_STATUS, 5);
  assert.equal(NBD_REPLY_TYPE_ERROR, 0x8001);
  assert.equal(NBD_REPLY_TYPE_ERROR_OFFSET, 0x8002);
  assert.ok(isErrorChunkType(0x8003) && !isErrorChunkType(NBD_REPLY_TYPE_BLOCK_STATUS));
  assert.deepEqual([NBD_STATE_HOLE, NBD_STATE_ZERO], [1, 2]);
});

Deno.test("protocol structured: meta context requests have the spec's layout", () => {
  const request = { exportName: "v", queries: ["base:allocation", "x:"] };
  const bytes = encodeMetaContextRequest(request);
  assert.equal(
    hex(bytes),
    "00000001" + "76" + "00000002" + "0000000f" + hex(new TextEncoder().encode("base:allocation")) +
      "00000002" + "783a",
  );
  assert.deepEqual(decodeMetaContextRequest(bytes), request);
  const none = { exportName: "", queries: [] };
  assert.equal(hex(encodeMetaContextRequest(none)), "00000000" + "00000000");
  assert.deepEqual(decodeMetaContextRequest(encodeMetaContextRequest(none)), none);
});

Deno.test("protocol structured: bad meta context requests are invalid", () => {
  const bytes = encodeMetaContextRequest({ exportName: "vol", queries: ["base:allocation", "a:"] });
  assertEveryTruncationInvalid(bytes, decodeMetaContextRequest);
  assertInvalid(() => decodeMetaContextRequest(withTrailingByte(bytes)), "a byte too many");
  const lyingName = bytes.slice();
  new DataView(lyingName.buffer).setUint32(0, 0xffffffff);
  assertInvalid(() => decodeMetaContextRequest(lyingName), "name length beyond the data");
  const lyingCount = bytes.slice();
  new DataView(lyingCount.buffer).setUint32(7, 0xffffffff);
  assertInvalid(() => decodeMetaContextRequest(lyingCount), "four billion queries");
  const lyingQuery = bytes.slice();
  new DataView(lyingQuery.buffer).setUint32(11, 1000);
  assertInvalid(() => decodeMetaContextRequest(lyingQuery), "query length beyond the data");
  const notUtf8 = encodeMetaContextRequest({ exportName: "v", queries: ["ab"] });
  notUtf8.set([0xff, 0xfe], notUtf8.length - 2);
  assertInvalid(() => decodeMetaContextRequest(notUtf8), "query not UTF-8");
  const nul = encodeMetaContextRequest({ exportName: "v", queries: ["ab"] });
  nul[nul.length - 1] = 0;
  assertInvalid(() => decodeMetaContextRequest(nul), "NUL in a query");
  const long = encodeMetaContextRequest({ exportName: "v", queries: ["q"] });
  const oversized = new Uint8Array(long.length + 5000);
  oversized.set(long.subarray(0, 9));
  new DataView(oversized.buffer).setUint32(9, 5001);
  assertInvalid(() => decodeMetaContextRequest(oversized), "a query over 4096 bytes");
});

Deno.test("protocol structured: NBD_REP_META_CONTEXT round trips; short or bad data is invalid", () => {
  const bytes = encodeMetaContextReply(7, "base:allocation");
  assert.equal(hex(bytes.subarray(0, 4)), "00000007");
  assert.deepEqual(decodeMetaContextReply(bytes), { contextId: 7, name: "base:allocation" });
  assertEveryTruncationInvalid(bytes.subarray(0, 4), decodeMetaContextReply);
  const bad = bytes.slice();
  bad[4] = 0xc3;
  bad[5] = 0x28;
  assertInvalid(() => decodeMetaContextReply(bad), "name not UTF-8");
});

Deno.test("protocol structured: chunk headers have the spec's layout", () => {
  const bytes = new Uint8Array(NBD_STRUCTURED_REPLY_HEADER_BYTES);
  const view = new DataView(bytes.buffer);
  const header = {
    flags: NBD_REPLY_FLAG_DONE,
    type: NBD_REPLY_TYPE_OFFSET_HOLE,
    handleHigh: 0x01020304,
    handleLow: 0x05060708,
    lengthBytes: 12,
  };
  encodeStructuredReplyHeader(view, 0, header);
  assert.equal(hex(bytes), "668e33ef" + "0001" + "0002" + "0102030405060708" + "0000000c");
  const decoded = newStructuredReplyHeader();
  assert.ok(decodeStructuredReplyHeader(view, 0, decoded));
  assert.deepEqual(decoded, header);
  assert.equal(decodeReplyStart(view, 0, newStructuredReplyHeader()), NBD_STRUCTURED_REPLY_MAGIC);
  // A simple reply is told apart by its magic and leaves the chunk record alone.
  const simple = new Uint8Array(16);
  encodeSimpleReply(new DataView(simple.buffer), 0, { error: 5, handleHigh: 0, handleLow: 9 });
  const untouched = newStructuredReplyHeader();
  assert.equal(decodeReplyStart(new DataView(simple.buffer), 0, untouched), NBD_SIMPLE_REPLY_MAGIC);
  assert.deepEqual(untouched, newStructuredReplyHeader());
  assert.equal(decodeStructuredReplyHeader(new DataView(simple.buffer), 0, decoded), false);
  const chunk = encodeChunk(
    { flags: 0, type: NBD_REPLY_TYPE_NONE, handleHigh: 0, handleLow: 3 },
    new Uint8Array([9]),
  );
  assert.equal(hex(chunk), "668e33ef" + "0000" + "0000" + "0000000000000003" + "00000001" + "09");
});

Deno.test("protocol structured: OFFSET_HOLE and offsets round trip; bad ones are invalid", () => {
  const payload = encodeOffsetHolePayload(2 ** 40 + 512, 65536);
  assert.equal(hex(payload), "0000010000000200" + "00010000");
  assert.deepEqual(decodeOffsetHolePayload(payload), {
    offsetBytes: 2 ** 40 + 512,
    holeBytes: 65536,
  });
  assertEveryTruncationInvalid(payload, decodeOffsetHolePayload);
  assertInvalid(() => decodeOffsetHolePayload(withTrailingByte(payload)), "13 bytes");
  assertInvalid(() => decodeOffsetHolePayload(encodeOffsetHolePayload(0, 0)), "zero hole size");
  const huge = payload.slice();
  huge.fill(0xff, 0, 8);
  assertInvalid(() => decodeOffsetHolePayload(huge), "offset beyond 2^53");
  assert.equal(decodeChunkOffset(payload.subarray(0, 8)), 2 ** 40 + 512);
  assertEveryTruncationInvalid(payload.subarray(0, 8), decodeChunkOffset);
});

Deno.test("protocol structured: BLOCK_STATUS payloads round trip; bad lengths are invalid", () => {
  const descriptors = [
    { lengthBytes: 1024 * 1024, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
    { lengthBytes: 4096, flags: 0 },
  ];
  const payload = encodeBlockStatusPayload(3, descriptors);
  assert.equal(hex(payload), "00000003" + "00100000" + "00000003" + "00001000" + "00000000");
  assert.deepEqual(decodeBlockStatusPayload(payload), { contextId: 3, descriptors });
  for (const length of [0, 4, 8, 11, 13, 19, 21]) {
    const bytes = new Uint8Array(length);
    if (length >= 12) bytes[7] = 1;
    assertInvalid(() => decodeBlockStatusPayload(bytes), `${length} bytes`);
  }
  const zeroLength = encodeBlockStatusPayload(1, [{ lengthBytes: 0, flags: 0 }]);
  assertInvalid(() => decodeBlockStatusPayload(zeroLength), "a zero-length extent");
});

Deno.test("protocol structured: error chunks round trip with and without an offset", () => {
  const plain = encodeErrorPayload({ error: 5, message: "bad sector", offsetBytes: null });
  assert.equal(hex(plain.subarray(0, 6)), "00000005" + "000a");
  assert.deepEqual(decodeErrorPayload(NBD_REPLY_TYPE_ERROR, plain), {
    error: 5,
    message: "bad sector",
    offsetBytes: null,
  });
  const located = encodeErrorPayload({ error: 22, message: "é", offsetBytes: 4096 });
  assert.equal(hex(located), "00000016" + "0002" + "c3a9" + "0000000000001000");
  assert.deepEqual(decodeErrorPayload(NBD_REPLY_TYPE_ERROR_OFFSET, located), {
    error: 22,
    message: "é",
    offsetBytes: 4096,
  });
  // A message over 4096 bytes is cut at a character boundary; NUL never goes on the wire.
  const long = encodeErrorPayload({
    error: 5,
    message: "é".repeat(3000) + "\0",
    offsetBytes: null,
  });
  const messageLength = new DataView(long.buffer).getUint16(4);
  assert.ok(messageLength <= 4096 && messageLength % 2 === 0, `${messageLength} bytes`);
  assert.equal(decodeErrorPayload(NBD_REPLY_TYPE_ERROR, long).message, "é".repeat(2048));
  const nul = encodeErrorPayload({ error: 5, message: "a\0b", offsetBytes: null });
  assert.equal(decodeErrorPayload(NBD_REPLY_TYPE_ERROR, nul).message, "a b");
});

Deno.test("protocol structured: bad error chunks are invalid; unknown error types are read", () => {
  const plain = encodeErrorPayload({ error: 5, message: "abc", offsetBytes: null });
  const located = encodeErrorPayload({ error: 5, message: "abc", offsetBytes: 9 });
  assertEveryTruncationInvalid(plain, (b) => decodeErrorPayload(NBD_REPLY_TYPE_ERROR, b));
  assertEveryTruncationInvalid(located, (b) => decodeErrorPayload(NBD_REPLY_TYPE_ERROR_OFFSET, b));
  assertInvalid(() => decodeErrorPayload(NBD_REPLY_TYPE_ERROR, withTrailingByte(plain)));
  assertInvalid(() => decodeErrorPayload(NBD_REPLY_TYPE_ERROR_OFFSET, withTrailingByte(located)));
  assertInvalid(() => decodeErrorPayload(NBD_REPLY_TYPE_ERROR_OFFSET, plain), "no offset");
  const zero = plain.slice();
  zero.fill(0, 0, 4);
  assertInvalid(() => decodeErrorPayload(NBD_REPLY_TYPE_ERROR, zero), "error value 0");
  const lying = plain.slice();
  new DataView(lying.buffer).setUint16(4, 0xffff);
  assertInvalid(() => decodeErrorPayload(NBD_REPLY_TYPE_ERROR, lying), "message overruns");
  assertInvalid(() => decodeErrorPayload(0x8003, lying), "message overruns, unknown type");
  // An error type this client does not know: its message is read, its extra fields skipped.
  const unknown = withTrailingByte(withTrailingByte(plain));
  assert.deepEqual(decodeErrorPayload(0x8003, unknown), {
    error: 5,
    message: "abc",
    offsetBytes: null,
  });
});

Deno.test(`protocol structured: random garbage is invalid or decoded (seed ${testSeed()})`, () => {
  const random = new SeededRandom(testSeed());
  const decoders: ((bytes: Uint8Array) => unknown)[] = [
    decodeMetaContextRequest,
    decodeMetaContextReply,
    decodeOffsetHolePayload,
    decodeBlockStatusPayload,
    decodeChunkOffset,
    (bytes) => decodeErrorPayload(NBD_REPLY_TYPE_ERROR, bytes),
    (bytes) => decodeErrorPayload(NBD_REPLY_TYPE_ERROR_OFFSET, bytes),
    (bytes) => decodeErrorPayload(0x8077, bytes),
  ];
  for (let i = 0; i < 3000; i++) {
    const bytes = random.bytes(random.int(48));
    // Small length fields now and then, so decoding gets past the first check.
    if (random.chance(0.5) && bytes.length >= 8) bytes.set([0, 0, 0, random.int(8)], 0);
    for (const decode of decoders) {
      try {
        decode(bytes);
      } catch (error) {
        assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
      }
    }
  }
});
