/** The NBD codec: round trips, the spec's byte layouts, and garbage that must not crash it. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom, testSeed } from "../../core/mod.ts";
import {
  decodeClientFlags,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeRequestHeader,
  decodeServerReplyData,
  decodeSimpleReply,
  decodeString,
  encodeClientFlags,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoReply,
  encodeInfoRequest,
  encodeOption,
  encodeOptionError,
  encodeOptionReply,
  encodeRequestHeader,
  encodeServerReplyData,
  encodeSimpleReply,
  encodeString,
  isOptionReplyError,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_WRITE,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_SERVER,
  NBD_REQUEST_HEADER_BYTES,
  NBD_SIMPLE_REPLY_BYTES,
  newRequestHeader,
} from "./protocol.ts";

const hex = (bytes: Uint8Array) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");

function assertInvalid(fn: () => unknown): void {
  assert.throws(fn, (error: unknown) => isTorusError(error, ErrorCode.Invalid));
}

Deno.test("protocol: constants have the spec's values", () => {
  assert.equal(NBD_REP_ERR_UNSUP, 0x80000001);
  assert.equal(NBD_REP_ERR_UNKNOWN, 0x80000006);
  assert.ok(isOptionReplyError(NBD_REP_ERR_UNSUP));
  assert.ok(!isOptionReplyError(NBD_REP_SERVER));
});

Deno.test("protocol: greeting is NBDMAGIC, IHAVEOPT and the flags", () => {
  const greeting = encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  assert.equal(hex(greeting), "4e42444d41474943" + "49484156454f5054" + "0003");
  assert.deepEqual(decodeGreeting(greeting), { handshakeFlags: 3 });
  const oldstyle = greeting.slice();
  oldstyle.set([0x00, 0x00, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53], 8);
  assert.throws(() => decodeGreeting(oldstyle), /oldstyle/);
  assertInvalid(() => decodeGreeting(greeting.subarray(0, 17)));
  assert.equal(decodeClientFlags(encodeClientFlags(0xffffffff)), 0xffffffff);
});

Deno.test("protocol: options and option replies round trip", () => {
  const option = encodeOption(NBD_OPT_LIST);
  assert.equal(hex(option), "49484156454f5054" + "00000003" + "00000000");
  assert.deepEqual(decodeOptionHeader(option), { option: NBD_OPT_LIST, lengthBytes: 0 });
  const request = { name: "vol@snap", infoTypes: [NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME] };
  const go = encodeOption(NBD_OPT_GO, encodeInfoRequest(request));
  assert.deepEqual(decodeOptionHeader(go.subarray(0, 16)), { option: NBD_OPT_GO, lengthBytes: 18 });
  assert.deepEqual(decodeInfoRequest(go.subarray(16)), request);
  const reply = encodeOptionReply(NBD_OPT_GO, NBD_REP_ACK);
  assert.equal(hex(reply), "0003e889045565a9" + "00000007" + "00000001" + "00000000");
  assert.deepEqual(decodeOptionReplyHeader(reply), {
    option: NBD_OPT_GO,
    replyType: NBD_REP_ACK,
    lengthBytes: 0,
  });
  const error = encodeOptionError(NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, "no export\0 named x");
  assert.equal(new TextDecoder().decode(error.subarray(20)), "no export  named x");
  assert.deepEqual(decodeServerReplyData(encodeServerReplyData("a", "desc")), {
    name: "a",
    description: "desc",
  });
});

Deno.test("protocol: info replies have the spec's lengths", () => {
  const infos = [
    { type: NBD_INFO_EXPORT, sizeBytes: 2 ** 40 + 512, transmissionFlags: 0x14d },
    { type: NBD_INFO_NAME, name: "völ" },
    { type: NBD_INFO_DESCRIPTION, description: "a volume" },
    {
      type: NBD_INFO_BLOCK_SIZE,
      minimumBytes: 1,
      preferredBytes: 4096,
      maximumBytes: 32 * 1024 * 1024,
    },
  ] as const;
  for (const info of infos) assert.deepEqual(decodeInfoReply(encodeInfoReply(info)), info);
  assert.equal(encodeInfoReply(infos[0]).length, 12);
  assert.equal(encodeInfoReply(infos[3]).length, 14);
  const unknown = decodeInfoReply(new Uint8Array([0, 99, 1, 2]));
  assert.deepEqual(unknown, { type: "unknown", infoType: 99, data: new Uint8Array([1, 2]) });
  assertInvalid(() => decodeInfoReply(new Uint8Array([0, 0, 1])));
  assertInvalid(() => decodeInfoReply(new Uint8Array([0, 3, 0, 0])));
  const huge = encodeInfoReply(infos[0]);
  huge.fill(0xff, 2, 10);
  assertInvalid(() => decodeInfoReply(huge));
});

Deno.test("protocol: export name reply with and without zeroes", () => {
  assert.equal(encodeExportNameReply(4096, 1, false).length, 134);
  const reply = encodeExportNameReply(2 ** 33, 0x10d, true);
  assert.equal(hex(reply), "0000000200000000" + "010d");
  assert.deepEqual(decodeExportNameReply(reply), { sizeBytes: 2 ** 33, transmissionFlags: 0x10d });
});

Deno.test("protocol: request and simple reply headers round trip without allocating", () => {
  const buffer = new Uint8Array(64);
  const view = new DataView(buffer.buffer);
  const header = {
    flags: NBD_CMD_FLAG_FUA,
    type: NBD_CMD_WRITE,
    handleHigh: 0xdeadbeef,
    handleLow: 0x01020304,
    offsetBytes: 2 ** 52 + 4096,
    lengthBytes: 0xffffffff,
  };
  encodeRequestHeader(view, 3, header);
  assert.equal(
    hex(buffer.subarray(3, 3 + NBD_REQUEST_HEADER_BYTES)),
    "25609513" + "0001" + "0001" + "deadbeef01020304" + "0010000000001000" + "ffffffff",
  );
  const decoded = newRequestHeader();
  assert.ok(decodeRequestHeader(view, 3, decoded));
  assert.deepEqual(decoded, header);
  assert.ok(!decodeRequestHeader(view, 4, decoded), "a shifted header has a bad magic");
  encodeSimpleReply(view, 30, { error: 22, handleHigh: 1, handleLow: 2 });
  assert.equal(
    hex(buffer.subarray(30, 30 + NBD_SIMPLE_REPLY_BYTES)),
    "67446698" + "00000016" +
      "0000000100000002",
  );
  const reply = { error: 0, handleHigh: 0, handleLow: 0 };
  assert.ok(decodeSimpleReply(view, 30, reply));
  assert.deepEqual(reply, { error: 22, handleHigh: 1, handleLow: 2 });
  assert.ok(!decodeSimpleReply(view, 0, reply));
});

Deno.test("protocol: an offset beyond 2^53 still decodes as beyond every export", () => {
  const buffer = new Uint8Array(NBD_REQUEST_HEADER_BYTES);
  const view = new DataView(buffer.buffer);
  encodeRequestHeader(view, 0, { ...newRequestHeader(), offsetBytes: 0 });
  view.setUint32(16, 0xffffffff);
  view.setUint32(20, 0xffffffff);
  const decoded = newRequestHeader();
  assert.ok(decodeRequestHeader(view, 0, decoded));
  assert.ok(decoded.offsetBytes > Number.MAX_SAFE_INTEGER);
});

Deno.test("protocol: strings are UTF-8 without NUL, at most 4096 bytes", () => {
  assert.equal(decodeString(encodeString("vol@snap-ü")), "vol@snap-ü");
  assertInvalid(() => encodeString("a\0b"));
  assertInvalid(() => encodeString("x".repeat(4097)));
  assertInvalid(() => decodeString(new Uint8Array([0xff, 0xfe])));
  assertInvalid(() => decodeString(new Uint8Array([0x61, 0])));
});

Deno.test("protocol: truncated and oversized handshake messages are invalid", () => {
  const request = encodeInfoRequest({ name: "abc", infoTypes: [3] });
  for (let cut = 0; cut < request.length; cut++) {
    assertInvalid(() => decodeInfoRequest(request.subarray(0, cut)));
  }
  const longer = new Uint8Array(request.length + 1);
  longer.set(request);
  assertInvalid(() => decodeInfoRequest(longer));
  const lyingName = request.slice();
  new DataView(lyingName.buffer).setUint32(0, 0xffffffff);
  assertInvalid(() => decodeInfoRequest(lyingName));
  const server = encodeServerReplyData("name");
  for (let cut = 0; cut < 8; cut++) {
    assertInvalid(() => decodeServerReplyData(server.subarray(0, cut)));
  }
  assertInvalid(() => decodeOptionHeader(new Uint8Array(15)));
  assertInvalid(() => decodeOptionHeader(new Uint8Array(17)));
  assertInvalid(() => decodeOptionReplyHeader(new Uint8Array(20)));
  assertInvalid(() => decodeExportNameReply(new Uint8Array(9)));
});

Deno.test(`protocol: random garbage never throws anything but invalid (seed ${testSeed()})`, () => {
  const random = new SeededRandom(testSeed());
  const decoders: ((bytes: Uint8Array) => unknown)[] = [
    decodeGreeting,
    decodeClientFlags,
    decodeOptionHeader,
    decodeOptionReplyHeader,
    decodeInfoRequest,
    decodeInfoReply,
    decodeServerReplyData,
    decodeExportNameReply,
    decodeString,
  ];
  const header = newRequestHeader();
  const reply = { error: 0, handleHigh: 0, handleLow: 0 };
  for (let i = 0; i < 3000; i++) {
    const bytes = random.bytes(random.int(40));
    // Half the time, give the garbage a valid-looking prefix so decoding gets further.
    if (random.chance(0.5) && bytes.length >= 8) bytes.set(encodeGreeting(0).subarray(8, 16));
    for (const decode of decoders) {
      try {
        decode(bytes);
      } catch (error) {
        assert.ok(isTorusError(error, ErrorCode.Invalid), `${decode.name}: ${String(error)}`);
      }
    }
    if (bytes.length >= NBD_REQUEST_HEADER_BYTES) {
      const view = new DataView(bytes.buffer);
      decodeRequestHeader(view, 0, header);
      decodeSimpleReply(view, 0, reply);
    }
  }
});
