/**
 * The NBD server's structured replies and block status, byte by byte: the options that turn them
 * on (and their refusals), sparse READ replies with hole chunks, DF, NBD_CMD_BLOCK_STATUS with
 * and without REQ_ONE, error chunks with messages, a failed range inside a sparse read, and old
 * clients that never asked and keep getting simple replies.
 */

import assert from "node:assert/strict";
import {
  blockUnavailable,
  NBD_BLOCK_STATUS_EXTENTS_MAX,
  NBD_BLOCK_STATUS_QUERY_MAX_BYTES,
} from "../../src/core/mod.ts";
import { MemoryDevice, NbdNegotiation } from "../../src/block/mod.ts";
import {
  type BlockStatusDescriptor,
  decodeBlockStatusPayload,
  decodeErrorPayload,
  decodeMetaContextReply,
  decodeOffsetHolePayload,
  decodeOptionReplyHeader,
  decodeReplyStart,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_EIO,
  NBD_EPERM,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_SEND_DF,
  NBD_GREETING_BYTES,
  NBD_OPT_GO,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTION_REPLY_HEADER_BYTES,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
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
  newStructuredReplyHeader,
} from "../../src/block/nbd/protocol.ts";
import { SPARSE_READ_MIN_BYTES } from "../../src/block/nbd/transmission.ts";
import { BASE_ALLOCATION_CONTEXT_ID } from "../../src/block/nbd/server_handshake.ts";
import { NbdFixture, RawNbd } from "../support/nbd_fixture.ts";
import { type DeviceCall, FaultDevice } from "../support/test_devices.ts";

const MiB = 1024 * 1024;
const KiB = 1024;
const HOLE = NBD_STATE_HOLE | NBD_STATE_ZERO;

/** 16 MiB "vol": 64 KiB of 0x11 at 256 KiB, 4 KiB of 0x22 at 1 MiB; "other" is empty. */
async function fixture(wrap?: (inner: MemoryDevice) => FaultDevice): Promise<NbdFixture> {
  const nbd = await NbdFixture.start({
    exports: { vol: 16 * MiB, other: MiB },
    deviceFactory: (name, sizeBytes) => {
      const inner = new MemoryDevice({ sizeBytes });
      return Promise.resolve(name === "vol" && wrap ? wrap(inner) : inner);
    },
  });
  const vol = nbd.device("vol");
  await vol.writeAt(256 * KiB, new Uint8Array(64 * KiB).fill(0x11));
  await vol.writeAt(MiB, new Uint8Array(4 * KiB).fill(0x22));
  return nbd;
}

/** A connection in transmission that negotiated structured replies (and a meta context). */
async function structured(
  nbd: NbdFixture,
  name: string,
  meta: string | null = name,
): Promise<{ raw: RawNbd; transmissionFlags: number }> {
  const conn = await nbd.connect();
  const negotiation = await NbdNegotiation.start(conn);
  assert.ok(await negotiation.structuredReply(), "structured replies granted");
  if (meta !== null) {
    const contexts = await negotiation.setMetaContext(meta, ["base:allocation"]);
    assert.deepEqual([...contexts], [["base:allocation", BASE_ALLOCATION_CONTEXT_ID]]);
  }
  const info = await negotiation.go(name);
  return { raw: new RawNbd(conn, negotiation.reader), transmissionFlags: info.transmissionFlags };
}

/** One reply message: a simple reply, or a structured chunk with its payload. */
type Message =
  | { kind: "simple"; error: number; handle: number }
  | { kind: "chunk"; flags: number; type: number; handle: number; payload: Uint8Array };

async function message(raw: RawNbd): Promise<Message> {
  const bytes = await raw.data(16);
  const view = new DataView(bytes.buffer);
  const header = newStructuredReplyHeader();
  if (decodeReplyStart(view, 0, header) === NBD_SIMPLE_REPLY_MAGIC) {
    return { kind: "simple", error: view.getUint32(4), handle: view.getUint32(12) };
  }
  const length = new DataView((await raw.data(4)).buffer).getUint32(0);
  const payload = await raw.data(length);
  return {
    kind: "chunk",
    flags: header.flags,
    type: header.type,
    handle: header.handleLow,
    payload,
  };
}

/** The chunks of one structured reply, up to and including the one flagged DONE. */
async function chunks(raw: RawNbd): Promise<Extract<Message, { kind: "chunk" }>[]> {
  const all: Extract<Message, { kind: "chunk" }>[] = [];
  for (;;) {
    const next = await message(raw);
    assert.equal(next.kind, "chunk", "a structured reply");
    if (next.kind !== "chunk") throw new Error("unreachable");
    all.push(next);
    if ((next.flags & NBD_REPLY_FLAG_DONE) !== 0) return all;
  }
}

/** What a READ reply's content chunks say, as [offset, length, "data" | "hole"] and bytes. */
function content(replyChunks: Extract<Message, { kind: "chunk" }>[]) {
  return replyChunks.map((chunk) => {
    const view = new DataView(chunk.payload.buffer);
    if (chunk.type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      const hole = decodeOffsetHolePayload(chunk.payload);
      return { offset: hole.offsetBytes, length: hole.holeBytes, kind: "hole", data: null };
    }
    assert.equal(chunk.type, NBD_REPLY_TYPE_OFFSET_DATA, `chunk type ${chunk.type}`);
    const offset = Number(view.getBigUint64(0));
    const data = chunk.payload.subarray(8);
    return { offset, length: data.length, kind: "data", data };
  });
}

function errorOf(chunk: Extract<Message, { kind: "chunk" }>) {
  return decodeErrorPayload(chunk.type, chunk.payload);
}

async function statusOf(raw: RawNbd): Promise<BlockStatusDescriptor[]> {
  const [only, ...rest] = await chunks(raw);
  assert.equal(rest.length, 0, "one chunk per context");
  assert.equal(only!.type, NBD_REPLY_TYPE_BLOCK_STATUS);
  const { contextId, descriptors } = decodeBlockStatusPayload(only!.payload);
  assert.equal(contextId, BASE_ALLOCATION_CONTEXT_ID);
  return descriptors;
}

/** A raw connection past the client flags, in option haggling. */
async function haggling(nbd: NbdFixture): Promise<RawNbd> {
  const raw = new RawNbd(await nbd.connect());
  await raw.reader.readExact(NBD_GREETING_BYTES);
  await raw.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
  return raw;
}

async function optionReplies(raw: RawNbd): Promise<{ replyType: number; data: Uint8Array }[]> {
  const replies: { replyType: number; data: Uint8Array }[] = [];
  for (;;) {
    const header = decodeOptionReplyHeader(await raw.data(NBD_OPTION_REPLY_HEADER_BYTES));
    const reply = { replyType: header.replyType, data: await raw.data(header.lengthBytes) };
    replies.push(reply);
    if (reply.replyType !== NBD_REP_META_CONTEXT) return replies;
  }
}

const contextNames = (replies: { replyType: number; data: Uint8Array }[]) =>
  replies.filter((r) => r.replyType === NBD_REP_META_CONTEXT).map((r) =>
    decodeMetaContextReply(r.data)
  );

Deno.test("nbd structured: the meta context options select base:allocation only", async () => {
  await using nbd = await fixture();
  using raw = await haggling(nbd);
  const metaOption = (option: number, queries: string[], exportName = "vol") =>
    raw.write(encodeOption(option, encodeMetaContextRequest({ exportName, queries })));

  // Before structured replies, both are refused (the spec: SHOULD be ERR_INVALID).
  for (const option of [NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT]) {
    await metaOption(option, ["base:allocation"]);
    const [refused] = await optionReplies(raw);
    assert.equal(refused!.replyType, NBD_REP_ERR_INVALID);
    assert.match(new TextDecoder().decode(refused!.data), /structured replies/);
  }
  await raw.write(encodeOption(NBD_OPT_STRUCTURED_REPLY, new Uint8Array(1)));
  assert.equal((await optionReplies(raw))[0]!.replyType, NBD_REP_ERR_INVALID, "data refused");
  await raw.write(encodeOption(NBD_OPT_STRUCTURED_REPLY));
  assert.equal((await optionReplies(raw))[0]!.replyType, NBD_REP_ACK);

  const cases: [number, string[], { contextId: number; name: string }[]][] = [
    [NBD_OPT_LIST_META_CONTEXT, [], [{ contextId: 0, name: "base:allocation" }]],
    [NBD_OPT_LIST_META_CONTEXT, ["base:"], [{ contextId: 0, name: "base:allocation" }]],
    [NBD_OPT_LIST_META_CONTEXT, ["qemu:dirty-bitmap:a", "x-foo:"], []],
    [NBD_OPT_SET_META_CONTEXT, [], []],
    [NBD_OPT_SET_META_CONTEXT, ["base:"], []],
    [NBD_OPT_SET_META_CONTEXT, ["base:nonesuch", "qemu:allocation-depth"], []],
    [
      NBD_OPT_SET_META_CONTEXT,
      ["x-a:b", "base:allocation", "base:allocation"],
      [{ contextId: BASE_ALLOCATION_CONTEXT_ID, name: "base:allocation" }],
    ],
  ];
  for (const [option, queries, expected] of cases) {
    await metaOption(option, queries);
    const replies = await optionReplies(raw);
    assert.equal(replies.at(-1)!.replyType, NBD_REP_ACK, `${option} ${queries}`);
    assert.deepEqual(contextNames(replies), expected, `${option} ${queries}`);
  }
  // Garbage gets ERR_INVALID and haggling stays in step.
  await metaOption(NBD_OPT_SET_META_CONTEXT, ["nonamespace"]);
  assert.equal((await optionReplies(raw))[0]!.replyType, NBD_REP_ERR_INVALID, "no namespace");
  const lying = encodeMetaContextRequest({ exportName: "vol", queries: ["base:allocation"] });
  new DataView(lying.buffer).setUint32(7, 1000);
  await raw.write(encodeOption(NBD_OPT_SET_META_CONTEXT, lying));
  assert.equal((await optionReplies(raw))[0]!.replyType, NBD_REP_ERR_INVALID, "lying count");
  await raw.write(encodeOption(NBD_OPT_GO, encodeInfoRequest({ name: "vol", infoTypes: [] })));
  let reply = await optionReplies(raw);
  while (reply.at(-1)!.replyType !== NBD_REP_ACK) reply = await optionReplies(raw);
  // The failed SET cleared the selection: block status is refused.
  await raw.send({ type: NBD_CMD_BLOCK_STATUS, handle: 1, lengthBytes: MiB });
  const [refused] = await chunks(raw);
  assert.equal(refused!.type, NBD_REPLY_TYPE_ERROR);
  assert.equal(errorOf(refused!).error, NBD_EINVAL);
});

Deno.test("nbd structured: SEND_DF is advertised only with structured replies", async () => {
  await using nbd = await fixture();
  const { raw, transmissionFlags } = await structured(nbd, "vol");
  assert.ok((transmissionFlags & NBD_FLAG_SEND_DF) !== 0);
  raw.close();
  const plain = await NbdNegotiation.start(await nbd.connect());
  const info = await plain.go("vol");
  assert.equal(info.transmissionFlags & NBD_FLAG_SEND_DF, 0);
  plain.stream.close();
});

Deno.test("nbd structured: a small READ is one data chunk flagged DONE", async () => {
  await using nbd = await fixture();
  using raw = (await structured(nbd, "vol")).raw;
  await raw.send({ type: NBD_CMD_READ, handle: 7, offsetBytes: 256 * KiB - 100, lengthBytes: 200 });
  const reply = await chunks(raw);
  assert.equal(reply.length, 1);
  assert.equal(reply[0]!.handle, 7);
  const [data] = content(reply);
  assert.equal(data!.offset, 256 * KiB - 100);
  assert.deepEqual([...data!.data!.subarray(98, 102)], [0, 0, 0x11, 0x11]);
  // A zero-length READ still gets a structured reply.
  await raw.send({ type: NBD_CMD_READ, handle: 8, offsetBytes: 0, lengthBytes: 0 });
  const [none] = await chunks(raw);
  assert.equal(none!.type, NBD_REPLY_TYPE_NONE);
});

Deno.test("nbd structured: a large READ sends holes as hole chunks and reads only data", async () => {
  const reads: DeviceCall[] = [];
  await using nbd = await fixture((inner) =>
    new FaultDevice(inner, (call) => {
      if (call.kind === "read") reads.push(call);
      return null;
    })
  );
  using raw = (await structured(nbd, "vol")).raw;
  reads.length = 0;
  await raw.send({ type: NBD_CMD_READ, handle: 1, offsetBytes: 0, lengthBytes: 2 * MiB });
  const reply = content(await chunks(raw));
  assert.deepEqual(reply.map(({ offset, length, kind }) => [offset, length, kind]), [
    [0, 256 * KiB, "hole"],
    [256 * KiB, 64 * KiB, "data"],
    [320 * KiB, MiB - 320 * KiB, "hole"],
    [MiB, 4 * KiB, "data"],
    [MiB + 4 * KiB, MiB - 4 * KiB, "hole"],
  ]);
  assert.ok(reply[1]!.data!.every((b) => b === 0x11));
  assert.ok(reply[3]!.data!.every((b) => b === 0x22));
  assert.deepEqual(reads.map((r) => [r.offsetBytes, r.lengthBytes]), [
    [256 * KiB, 64 * KiB],
    [MiB, 4 * KiB],
  ], "holes were never read");
  assert.equal(nbd.server.stats.holeBytes, 2 * MiB - 68 * KiB);
  // With DF: one content chunk for the whole range, zeros spelled out.
  await raw.send({
    type: NBD_CMD_READ,
    flags: NBD_CMD_FLAG_DF,
    handle: 2,
    offsetBytes: 0,
    lengthBytes: 2 * MiB,
  });
  const unfragmented = content(await chunks(raw));
  assert.equal(unfragmented.length, 1);
  assert.equal(unfragmented[0]!.length, 2 * MiB);
  assert.equal(unfragmented[0]!.data![256 * KiB], 0x11);
  assert.equal(unfragmented[0]!.data![0], 0);
  // A read just below the sparse threshold is one data chunk even over a hole.
  await raw.send({
    type: NBD_CMD_READ,
    handle: 3,
    offsetBytes: 4 * MiB,
    lengthBytes: SPARSE_READ_MIN_BYTES - 512,
  });
  assert.deepEqual(content(await chunks(raw)).map((c) => c.kind), ["data"]);
});

Deno.test("nbd structured: a data range that fails to read gets its own error offset", async () => {
  await using nbd = await fixture((inner) =>
    new FaultDevice(
      inner,
      (call) =>
        call.kind === "read" && call.offsetBytes === MiB ? blockUnavailable("sector rotten") : null,
    )
  );
  using raw = (await structured(nbd, "vol")).raw;
  await raw.send({ type: NBD_CMD_READ, handle: 4, offsetBytes: 0, lengthBytes: 2 * MiB });
  const reply = await chunks(raw);
  const failed = reply.filter((c) => c.type === NBD_REPLY_TYPE_ERROR_OFFSET).map(errorOf);
  assert.deepEqual(failed.map((e) => [e.error, e.offsetBytes]), [[NBD_EIO, MiB]]);
  assert.match(failed[0]!.message, /sector rotten/);
  const good = content(reply.filter((c) => c.type !== NBD_REPLY_TYPE_ERROR_OFFSET));
  assert.deepEqual(good.map((c) => [c.offset, c.kind]), [
    [0, "hole"],
    [256 * KiB, "data"],
    [320 * KiB, "hole"],
    [MiB + 4 * KiB, "hole"],
  ], "everything but the failed range is still sent");
  assert.ok(good[1]!.data!.every((b) => b === 0x11));
  // A small read of the same range: one generic error chunk with the message.
  await raw.send({ type: NBD_CMD_READ, handle: 5, offsetBytes: MiB, lengthBytes: 4096 });
  const [error] = await chunks(raw);
  assert.equal(error!.type, NBD_REPLY_TYPE_ERROR);
  assert.deepEqual([errorOf(error!).error, errorOf(error!).offsetBytes], [NBD_EIO, null]);
  assert.match(errorOf(error!).message, /sector rotten/);
});

Deno.test("nbd structured: BLOCK_STATUS describes holes and data, REQ_ONE one extent", async () => {
  await using nbd = await fixture();
  using raw = (await structured(nbd, "vol")).raw;
  await raw.send({ type: NBD_CMD_BLOCK_STATUS, handle: 1, offsetBytes: 0, lengthBytes: 16 * MiB });
  assert.deepEqual(await statusOf(raw), [
    { lengthBytes: 256 * KiB, flags: HOLE },
    { lengthBytes: 64 * KiB, flags: 0 },
    { lengthBytes: MiB - 320 * KiB, flags: HOLE },
    { lengthBytes: 4 * KiB, flags: 0 },
    { lengthBytes: 15 * MiB - 4 * KiB, flags: HOLE },
  ]);
  await raw.send({
    type: NBD_CMD_BLOCK_STATUS,
    flags: NBD_CMD_FLAG_REQ_ONE,
    handle: 2,
    offsetBytes: 300 * KiB,
    lengthBytes: MiB,
  });
  assert.deepEqual(await statusOf(raw), [{ lengthBytes: 20 * KiB, flags: 0 }]);
  await raw.send({
    type: NBD_CMD_BLOCK_STATUS,
    flags: NBD_CMD_FLAG_REQ_ONE,
    handle: 3,
    offsetBytes: 0,
    lengthBytes: 4096,
  });
  assert.deepEqual(await statusOf(raw), [{ lengthBytes: 4096, flags: HOLE }], "within the request");
  // A trimmed range becomes a hole again; a write makes data.
  await nbd.device("vol").trim(256 * KiB, 64 * KiB);
  await raw.send({ type: NBD_CMD_WRITE, handle: 4, offsetBytes: 0, payload: new Uint8Array(512) });
  assert.deepEqual(await message(raw), { kind: "simple", error: 0, handle: 4 });
  await raw.send({ type: NBD_CMD_BLOCK_STATUS, handle: 5, offsetBytes: 0, lengthBytes: MiB });
  assert.deepEqual(await statusOf(raw), [
    { lengthBytes: 4096, flags: 0 },
    { lengthBytes: MiB - 4096, flags: HOLE },
  ]);
});

Deno.test("nbd structured: BLOCK_STATUS replies are bounded; the rest is asked again", async () => {
  await using nbd = await NbdFixture.start({
    exports: { big: 2 * NBD_BLOCK_STATUS_QUERY_MAX_BYTES },
  });
  const big = nbd.device("big");
  // Every other 4 KiB page written: more extents than one reply may list.
  const pages = NBD_BLOCK_STATUS_EXTENTS_MAX;
  for (let page = 0; page < pages; page++) await big.writeAt(page * 8192, new Uint8Array([1]));
  using raw = (await structured(nbd, "big")).raw;
  await raw.send({ type: NBD_CMD_BLOCK_STATUS, handle: 1, lengthBytes: big.sizeBytes });
  const first = await statusOf(raw);
  assert.equal(first.length, NBD_BLOCK_STATUS_EXTENTS_MAX);
  // Data and hole alternate per 4 KiB page: the cap cuts the reply at half the pattern.
  assert.equal(
    first.reduce((sum, d) => sum + d.lengthBytes, 0),
    NBD_BLOCK_STATUS_EXTENTS_MAX * 4096,
  );
  await raw.send({
    type: NBD_CMD_BLOCK_STATUS,
    handle: 2,
    offsetBytes: pages * 8192,
    lengthBytes: big.sizeBytes - pages * 8192,
  });
  const tail = await statusOf(raw);
  assert.deepEqual(tail, [{ lengthBytes: NBD_BLOCK_STATUS_QUERY_MAX_BYTES, flags: HOLE }]);
  // Our client puts the pieces together.
  const client = await nbd.client("big");
  const extents = await client.extents(0, big.sizeBytes);
  assert.deepEqual(extents, await big.extents(0, big.sizeBytes));
  await client.close();
});

Deno.test("nbd structured: errors are error chunks with a message", async () => {
  await using nbd = await fixture();
  nbd.addExport("vol@snap", (nbd.device("vol") as MemoryDevice).snapshot());
  using raw = (await structured(nbd, "vol")).raw;
  const cases: [string, Parameters<RawNbd["send"]>[0], number, RegExp][] = [
    [
      "read past the end",
      { type: NBD_CMD_READ, offsetBytes: 16 * MiB, lengthBytes: 1 },
      NBD_EINVAL,
      /beyond the end/,
    ],
    [
      "read with REQ_ONE",
      { type: NBD_CMD_READ, flags: NBD_CMD_FLAG_REQ_ONE, lengthBytes: 1 },
      NBD_EINVAL,
      /flags/,
    ],
    ["unknown command", { type: 77, lengthBytes: 1 }, NBD_EINVAL, /unknown command 77/],
    ["empty block status", { type: NBD_CMD_BLOCK_STATUS, lengthBytes: 0 }, NBD_EINVAL, /empty/],
    [
      "block status past the end",
      { type: NBD_CMD_BLOCK_STATUS, offsetBytes: 16 * MiB - 512, lengthBytes: 1024 },
      NBD_EINVAL,
      /beyond/,
    ],
    [
      "block status with DF",
      { type: NBD_CMD_BLOCK_STATUS, flags: NBD_CMD_FLAG_DF, lengthBytes: 512 },
      NBD_EINVAL,
      /flags/,
    ],
  ];
  for (const [i, [name, request, errno, pattern]] of cases.entries()) {
    await raw.send({ ...request, handle: 100 + i });
    const reply = await chunks(raw);
    assert.equal(reply.length, 1, name);
    assert.equal(reply[0]!.handle, 100 + i, name);
    assert.equal(reply[0]!.type, NBD_REPLY_TYPE_ERROR, name);
    const error = errorOf(reply[0]!);
    assert.equal(error.error, errno, name);
    assert.match(error.message, pattern, name);
  }
  // Successes without payload stay simple replies.
  await raw.send({ type: NBD_CMD_FLUSH, handle: 9 });
  assert.deepEqual(await message(raw), { kind: "simple", error: 0, handle: 9 });
  using snap = (await structured(nbd, "vol@snap")).raw;
  await snap.send({ type: NBD_CMD_WRITE, handle: 1, payload: new Uint8Array(512) });
  const [refused] = await chunks(snap);
  assert.deepEqual([errorOf(refused!).error, errorOf(refused!).message], [
    NBD_EPERM,
    "the export is read-only",
  ]);
});

Deno.test("nbd structured: BLOCK_STATUS needs a context selected for the same export", async () => {
  await using nbd = await fixture();
  for (const meta of [null, "other"]) {
    using raw = (await structured(nbd, "vol", meta)).raw;
    await raw.send({ type: NBD_CMD_BLOCK_STATUS, handle: 1, lengthBytes: MiB });
    const [refused] = await chunks(raw);
    assert.equal(refused!.type, NBD_REPLY_TYPE_ERROR, `selected for ${meta}`);
    assert.match(errorOf(refused!).message, /no metadata context/);
    // The connection goes on.
    await raw.send({ type: NBD_CMD_READ, handle: 2, offsetBytes: MiB, lengthBytes: 1 });
    assert.deepEqual(content(await chunks(raw)).map((c) => c.data![0]), [0x22]);
  }
});

Deno.test("nbd structured: a client that never asked keeps getting simple replies", async () => {
  await using nbd = await fixture();
  using raw = await RawNbd.open(nbd, "vol");
  await raw.send({ type: NBD_CMD_READ, handle: 1, offsetBytes: 0, lengthBytes: 2 * MiB });
  assert.deepEqual(await raw.reply(), { error: 0, handle: 1 });
  const data = await raw.data(2 * MiB);
  assert.equal(data[256 * KiB], 0x11);
  await raw.send({ type: NBD_CMD_READ, handle: 2, offsetBytes: 16 * MiB, lengthBytes: 1 });
  assert.deepEqual(await raw.reply(), { error: NBD_EINVAL, handle: 2 });
  await raw.send({ type: NBD_CMD_BLOCK_STATUS, handle: 3, lengthBytes: MiB });
  assert.deepEqual(await raw.reply(), { error: NBD_EINVAL, handle: 3 });
  await raw.send({ type: NBD_CMD_READ, flags: NBD_CMD_FLAG_DF, handle: 4, lengthBytes: 512 });
  assert.deepEqual(await raw.reply(), { error: NBD_EINVAL, handle: 4 }, "DF was not offered");
  assert.equal(nbd.server.stats.holeBytes, 0);
});
