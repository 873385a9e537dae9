/**
 * Our NBD client with structured replies and block status: against our server (extents, sparse
 * reads, a dump that never reads holes), and against a scripted server that sends malformed
 * chunks, each of which must fail the connection instead of returning wrong bytes or hanging.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../src/core/mod.ts";
import { dumpDevice, type MemoryDevice, NbdClient } from "../../src/block/mod.ts";
import { connStream, StreamReader, writeAll } from "../../src/block/nbd/stream.ts";
import {
  decodeOptionHeader,
  decodeRequestHeader,
  encodeBlockStatusPayload,
  encodeChunk,
  encodeErrorPayload,
  encodeGreeting,
  encodeInfoReply,
  encodeMetaContextReply,
  encodeOffsetHolePayload,
  encodeOptionReply,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  newRequestHeader,
  type RequestHeader,
} from "../../src/block/nbd/protocol.ts";
import { NbdFixture, sameBytes } from "../support/nbd_fixture.ts";

const MiB = 1024 * 1024;
const KiB = 1024;

async function sparseFixture(): Promise<NbdFixture> {
  const nbd = await NbdFixture.start({ exports: { vol: 16 * MiB } });
  const vol = nbd.device("vol");
  await vol.writeAt(256 * KiB, new Uint8Array(64 * KiB).fill(0x11));
  await vol.writeAt(MiB + 100, new Uint8Array(3000).fill(0x22));
  await vol.writeAt(16 * MiB - 512, new Uint8Array(512).fill(0x33));
  return nbd;
}

async function client(
  nbd: NbdFixture,
  options: Partial<Parameters<typeof NbdClient.connect>[1]> = {},
) {
  return await NbdClient.connect(connStream(await nbd.connect()), {
    exportName: "vol",
    ...options,
  });
}

Deno.test("nbd client structured: extents come from block status and match the device", async () => {
  await using nbd = await sparseFixture();
  const vol = nbd.device("vol");
  const c = await client(nbd);
  assert.ok(c.structuredReplies && c.blockStatus);
  for (const [offset, length] of [[0, 16 * MiB], [300 * KiB, 5000], [MiB + 17, 3 * MiB], [0, 1]]) {
    assert.deepEqual(await c.extents(offset!, length!), await vol.extents(offset!, length!));
  }
  const before = nbd.server.stats.blockStatusRequests;
  await c.extents(0, 16 * MiB);
  assert.equal(nbd.server.stats.blockStatusRequests, before + 1, "asked the server");
  // Reads reassemble hole and data chunks byte-exact.
  const back = new Uint8Array(4 * MiB + 3);
  const expected = new Uint8Array(back.length);
  await c.readAt(100, back);
  await vol.readAt(100, expected);
  assert.ok(sameBytes(back, expected));
  assert.ok(nbd.server.stats.holeBytes > 3 * MiB, "sent as holes");
  await c.close();
});

Deno.test("nbd client structured: without block status or structured replies it still works", async () => {
  await using nbd = await sparseFixture();
  const vol = nbd.device("vol");
  for (const options of [{ blockStatus: false }, { structuredReplies: false }]) {
    const c = await client(nbd, options);
    assert.equal(c.blockStatus, false);
    assert.equal(c.structuredReplies, options.structuredReplies !== false);
    assert.deepEqual(await c.extents(0, 16 * MiB), [
      { offsetBytes: 0, lengthBytes: 16 * MiB, zero: false },
    ]);
    const back = new Uint8Array(2 * MiB);
    const expected = new Uint8Array(2 * MiB);
    await c.readAt(0, back);
    await vol.readAt(0, expected);
    assert.ok(sameBytes(back, expected), JSON.stringify(options));
    await c.close();
  }
});

/** A dump sink that keeps the bytes. */
function sink(sizeBytes: number) {
  const bytes = new Uint8Array(sizeBytes);
  let at = 0;
  return {
    bytes,
    sink: {
      write(data: Uint8Array) {
        bytes.set(data, at);
        at += data.length;
        return Promise.resolve();
      },
      zeros(length: number) {
        at += length;
        return Promise.resolve();
      },
    },
  };
}

Deno.test("nbd client structured: a dump reads only data, holes are skipped unread", async () => {
  await using nbd = await sparseFixture();
  const vol = nbd.device("vol") as MemoryDevice;
  const expected = new Uint8Array(16 * MiB);
  await vol.readAt(0, expected);
  for (const blockStatus of [true, false]) {
    const c = await client(nbd, { blockStatus });
    const readBefore = nbd.server.stats.readBytes;
    const out = sink(16 * MiB);
    const result = await dumpDevice(c, out.sink);
    await c.close();
    assert.ok(sameBytes(out.bytes, expected), `blockStatus ${blockStatus}`);
    const read = nbd.server.stats.readBytes - readBefore;
    if (blockStatus) {
      // Only the data extents (4 KiB pages of the memory device) were asked for.
      assert.equal(read, 64 * KiB + 4 * KiB + 4 * KiB);
      assert.equal(result.dataBytes, read);
    } else {
      // The zero-detection fallback reads everything, and still finds the zeros, 4 KiB at a
      // time: only the same data pages are written out.
      assert.equal(read, 16 * MiB);
      assert.equal(result.dataBytes, 64 * KiB + 4 * KiB + 4 * KiB);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// A scripted server: grants structured replies and base:allocation (context id 7), serves a
// 1 MiB read-only export, and answers each request with the bytes `answer` makes.

const CONTEXT = 7;
const SIZE = MiB;

type Answer = (request: RequestHeader) => Uint8Array;

function scriptedServer(answer: Answer, grant = true) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let accepted: Deno.Conn | null = null;
  const served = (async () => {
    const conn = await listener.accept();
    accepted = conn;
    try {
      await serveScript(conn, answer, grant);
    } catch {
      // The client hung up (or the test ended): the script is over.
    } finally {
      closeQuietly(conn);
    }
  })();
  return {
    port: listener.addr.port,
    async [Symbol.asyncDispose]() {
      listener.close();
      // A failed test leaves its client connected: end the script anyway.
      if (accepted !== null) closeQuietly(accepted);
      await served.catch(() => {});
    },
  };
}

function closeQuietly(closable: { close(): void }): void {
  try {
    closable.close();
  } catch {
    // Already closed.
  }
}

async function serveScript(conn: Deno.Conn, answer: Answer, grant: boolean): Promise<void> {
  const reader = new StreamReader(conn, new Uint8Array(64 * KiB));
  await writeAll(conn, encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  await reader.readExact(4);
  for (;;) {
    const { option, lengthBytes } = decodeOptionHeader(await reader.readExact(16));
    await reader.readExact(lengthBytes);
    if (option === NBD_OPT_STRUCTURED_REPLY) {
      await writeAll(conn, encodeOptionReply(option, grant ? NBD_REP_ACK : NBD_REP_ERR_UNSUP));
    } else if (option === NBD_OPT_SET_META_CONTEXT) {
      const context = encodeMetaContextReply(CONTEXT, "base:allocation");
      await writeAll(conn, encodeOptionReply(option, NBD_REP_META_CONTEXT, context));
      await writeAll(conn, encodeOptionReply(option, NBD_REP_ACK));
    } else if (option === NBD_OPT_GO) {
      const flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY;
      const info = encodeInfoReply({
        type: NBD_INFO_EXPORT,
        sizeBytes: SIZE,
        transmissionFlags: flags,
      });
      await writeAll(conn, encodeOptionReply(option, NBD_REP_INFO, info));
      await writeAll(conn, encodeOptionReply(option, NBD_REP_ACK));
      break;
    } else {
      await writeAll(conn, encodeOptionReply(option, NBD_REP_ERR_UNSUP));
    }
  }
  const header = newRequestHeader();
  for (;;) {
    const bytes = await reader.readExact(28);
    decodeRequestHeader(new DataView(bytes.buffer, bytes.byteOffset, 28), 0, header);
    if (header.type === NBD_CMD_DISC) return;
    await writeAll(conn, answer({ ...header }));
  }
}

const done = NBD_REPLY_FLAG_DONE;

function chunk(
  request: RequestHeader,
  type: number,
  flags: number,
  payload: Uint8Array = new Uint8Array(0),
) {
  return encodeChunk(
    { flags, type, handleHigh: request.handleHigh, handleLow: request.handleLow },
    payload,
  );
}

function data(offset: number, bytes: Uint8Array): Uint8Array {
  const payload = new Uint8Array(8 + bytes.length);
  new DataView(payload.buffer).setBigUint64(0, BigInt(offset));
  payload.set(bytes, 8);
  return payload;
}

function join(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

async function scriptedClient(port: number): Promise<NbdClient> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  return await NbdClient.connect(connStream(conn), { exportName: "x" });
}

/** The first READ of 64 KiB at 0, or the first BLOCK_STATUS, gets `reply`. */
const garbage: [string, "read" | "status", (r: RequestHeader) => Uint8Array][] = [
  [
    "data outside the request",
    "read",
    // The lengths add up: only the bounds check can tell.
    (r) =>
      join(
        chunk(r, NBD_REPLY_TYPE_OFFSET_DATA, 0, data(0, new Uint8Array(r.lengthBytes - 10))),
        chunk(r, NBD_REPLY_TYPE_OFFSET_DATA, done, data(r.lengthBytes, new Uint8Array(10))),
      ),
  ],
  ["overlapping data chunks", "read", (r) =>
    join(
      chunk(r, NBD_REPLY_TYPE_OFFSET_DATA, 0, data(0, new Uint8Array(r.lengthBytes / 2 + 1))),
      chunk(
        r,
        NBD_REPLY_TYPE_OFFSET_DATA,
        done,
        // The lengths add up (the last byte is missing): only the overlap check can tell.
        data(r.lengthBytes / 2, new Uint8Array(r.lengthBytes / 2 - 1)),
      ),
    )],
  ["DONE before all the data", "read", (r) =>
    join(
      chunk(r, NBD_REPLY_TYPE_OFFSET_HOLE, 0, encodeOffsetHolePayload(0, r.lengthBytes - 512)),
      chunk(r, NBD_REPLY_TYPE_NONE, done),
    )],
  ["an unknown chunk type", "read", (r) => chunk(r, 9, done, new Uint8Array(4))],
  ["a simple reply to a structured READ", "read", (r) => {
    const bytes = new Uint8Array(16);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, 0x67446698);
    view.setUint32(12, r.handleLow);
    return join(bytes, new Uint8Array(r.lengthBytes));
  }],
  [
    "a hole chunk of 13 bytes",
    "read",
    (r) =>
      chunk(
        r,
        NBD_REPLY_TYPE_OFFSET_HOLE,
        done,
        join(encodeOffsetHolePayload(0, r.lengthBytes), new Uint8Array(1)),
      ),
  ],
  [
    "a chunk for an unknown handle",
    "read",
    (r) => chunk({ ...r, handleLow: r.handleLow + 1000 }, NBD_REPLY_TYPE_NONE, done),
  ],
  ["NONE with a payload", "read", (r) => chunk(r, NBD_REPLY_TYPE_NONE, done, new Uint8Array(1))],
  ["an error chunk whose message overruns", "read", (r) => {
    const payload = encodeErrorPayload({ error: 5, message: "x", offsetBytes: null });
    new DataView(payload.buffer).setUint16(4, 500);
    return chunk(r, 0x8001, done, payload);
  }],
  [
    "an error offset outside the request",
    "read",
    (r) =>
      chunk(
        r,
        NBD_REPLY_TYPE_ERROR_OFFSET,
        done,
        encodeErrorPayload({ error: 5, message: "", offsetBytes: SIZE }),
      ),
  ],
  ["a zero-length extent", "status", (r) => {
    const payload = encodeBlockStatusPayload(CONTEXT, [{ lengthBytes: 4096, flags: 0 }]);
    new DataView(payload.buffer).setUint32(4, 0);
    return chunk(r, NBD_REPLY_TYPE_BLOCK_STATUS, done, payload);
  }],
  [
    "block status of another context",
    "status",
    (r) =>
      chunk(
        r,
        NBD_REPLY_TYPE_BLOCK_STATUS,
        done,
        encodeBlockStatusPayload(CONTEXT + 1, [{ lengthBytes: 4096, flags: 0 }]),
      ),
  ],
  ["a block status chunk over 1 MiB", "status", (r) => {
    const bytes = chunk(r, NBD_REPLY_TYPE_BLOCK_STATUS, done);
    new DataView(bytes.buffer).setUint32(16, 2 * MiB + 4);
    return bytes;
  }],
  ["DONE without a block status", "status", (r) => chunk(r, NBD_REPLY_TYPE_NONE, done)],
  [
    "read data in reply to block status",
    "status",
    (r) => chunk(r, NBD_REPLY_TYPE_OFFSET_DATA, done, data(0, new Uint8Array(8))),
  ],
];

for (const [name, kind, reply] of garbage) {
  Deno.test(`nbd client structured: ${name} fails the connection`, async () => {
    await using server = scriptedServer(reply);
    const c = await scriptedClient(server.port);
    const call = kind === "read" ? c.readAt(0, new Uint8Array(64 * KiB)) : c.extents(0, SIZE);
    await assert.rejects(call, (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Unavailable), String(error));
      assert.match(String(error), /NBD connection lost/);
      return true;
    });
    await assert.rejects(c.readAt(0, new Uint8Array(1)), /NBD connection lost/, "it stays failed");
    await c.close().catch(() => {});
  });
}

Deno.test("nbd client structured: chunks in any order, errors with messages and offsets", async () => {
  let calls = 0;
  await using server = scriptedServer((r) => {
    calls++;
    const half = r.lengthBytes / 2;
    if (r.type === NBD_CMD_BLOCK_STATUS) {
      return chunk(
        r,
        NBD_REPLY_TYPE_BLOCK_STATUS,
        done,
        encodeBlockStatusPayload(CONTEXT, [
          { lengthBytes: 4096, flags: NBD_STATE_HOLE }, // a hole that does not promise zeros
          { lengthBytes: 8192, flags: NBD_STATE_HOLE | NBD_STATE_ZERO },
          { lengthBytes: 2 * SIZE, flags: 0 }, // may run past the request
        ]),
      );
    }
    if (r.type === NBD_CMD_READ && calls === 2) {
      // Second half first, then the first half as a hole.
      return join(
        chunk(r, NBD_REPLY_TYPE_OFFSET_DATA, 0, data(half, new Uint8Array(half).fill(9))),
        chunk(r, NBD_REPLY_TYPE_OFFSET_HOLE, done, encodeOffsetHolePayload(0, half)),
      );
    }
    return join(
      chunk(r, NBD_REPLY_TYPE_OFFSET_HOLE, 0, encodeOffsetHolePayload(0, half)),
      chunk(
        r,
        0x8003,
        0,
        join(
          encodeErrorPayload({ error: 22, message: "weird", offsetBytes: null }),
          new Uint8Array(3),
        ),
      ),
      chunk(
        r,
        NBD_REPLY_TYPE_ERROR_OFFSET,
        done,
        encodeErrorPayload({ error: 5, message: "bad", offsetBytes: half }),
      ),
    );
  });
  const c = await scriptedClient(server.port);
  assert.deepEqual(await c.extents(0, SIZE), [
    { offsetBytes: 0, lengthBytes: 4096, zero: false },
    { offsetBytes: 4096, lengthBytes: 8192, zero: true },
    { offsetBytes: 12288, lengthBytes: SIZE - 12288, zero: false },
  ]);
  const back = new Uint8Array(8192).fill(1);
  await c.readAt(0, back);
  assert.ok(back.subarray(0, 4096).every((b) => b === 0));
  assert.ok(back.subarray(4096).every((b) => b === 9));
  await assert.rejects(c.readAt(0, new Uint8Array(8192)), (error: unknown) => {
    // The first error chunk wins; an unknown error type still carries its value and message.
    assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
    assert.match(String(error), /EINVAL: weird/);
    return true;
  });
  assert.equal(c.structuredReplies, true);
  await c.close();
});

Deno.test("nbd client structured: a server that declines gets simple-reply requests", async () => {
  await using server = scriptedServer((r) => {
    const bytes = new Uint8Array(16 + r.lengthBytes);
    const view = new DataView(bytes.buffer);
    view.setUint32(0, 0x67446698);
    view.setUint32(12, r.handleLow);
    bytes.fill(4, 16);
    return bytes;
  }, false);
  const c = await scriptedClient(server.port);
  assert.equal(c.structuredReplies, false);
  assert.equal(c.blockStatus, false);
  const back = new Uint8Array(100);
  await c.readAt(0, back);
  assert.ok(back.every((b) => b === 4));
  await c.close();
});
