/** The peer protocol contract over TDP, and TDP's own frames: round trips, garbage, bounds. */

import assert from "node:assert/strict";
import { BlockRef, ErrorCode, isTorusError } from "../../../core/mod.ts";
import { MemoryBlockStore, testRef } from "../../../storage/mod.ts";
import { peerProtocolContract } from "../protocol_contract.ts";
import {
  codeOf,
  decodeHello,
  decodeRequest,
  encodeErrorReply,
  encodeHello,
  encodeHelloRequest,
  encodeRequest,
  Flag,
  Op,
  readHeader,
  type Request,
  statusOf,
  TDP_HEADER_BYTES,
  TDP_VERSION,
  tdpBodyMaxBytes,
  TdpFrameError,
} from "./codec.ts";
import { TdpProtocol } from "./mod.ts";

peerProtocolContract("TDP", () => new TdpProtocol());

const ref = new BlockRef({ volume: 5, inode: 2n ** 63n + 1n, index: 77n });

const requests: Request[] = [
  { op: Op.Ping },
  { op: Op.Get, ref },
  { op: Op.Get, ref, expectedCrc32: 0xdeadbeef },
  {
    op: Op.Put,
    ref,
    fence: 2 ** 52 + 1,
    ring: 0,
    ifAbsent: false,
    data: new Uint8Array([1, 2, 3]),
  },
  { op: Op.Put, ref, fence: 0, ring: 7, ifAbsent: true, data: new Uint8Array([4]) },
  {
    op: Op.Put,
    ref,
    fence: 4,
    ring: Number.MAX_SAFE_INTEGER,
    ifAbsent: false,
    data: new Uint8Array(),
  },
  { op: Op.Has, refs: [ref, testRef(1), testRef(2)] },
  { op: Op.ReadAt, ref, offsetBytes: 4096, lengthBytes: 512 },
  {
    op: Op.WriteAt,
    ref,
    fence: 3,
    ring: 0,
    fresh: true,
    mustExist: false,
    offsetBytes: 7,
    data: new Uint8Array([9]),
  },
  {
    op: Op.WriteAt,
    ref,
    fence: 0,
    ring: 2 ** 40 + 5,
    fresh: false,
    mustExist: true,
    offsetBytes: 0,
    data: new Uint8Array([1, 2]),
  },
  {
    op: Op.WriteAt,
    ref,
    fence: 1,
    ring: 1,
    fresh: true,
    mustExist: true,
    offsetBytes: 9,
    data: new Uint8Array([3]),
  },
  {
    op: Op.ZeroAt,
    ref,
    fence: 0,
    ring: 0,
    fresh: false,
    mustExist: false,
    offsetBytes: 8,
    lengthBytes: 100,
  },
  {
    op: Op.ZeroAt,
    ref,
    fence: 5,
    ring: 9,
    fresh: false,
    mustExist: true,
    offsetBytes: 1,
    lengthBytes: 2,
  },
  {
    op: Op.ZeroAt,
    ref,
    fence: 0,
    ring: Number.MAX_SAFE_INTEGER,
    fresh: true,
    mustExist: true,
    offsetBytes: 0,
    lengthBytes: 3,
  },
  { op: Op.Delete, ref, fence: 12, ring: 0 },
  { op: Op.Delete, ref, fence: 0, ring: 3 },
  { op: Op.Delete, ref, fence: 2 ** 33, ring: 2 ** 33 + 1 },
  { op: Op.Flush },
  { op: Op.Counts },
  { op: Op.ListOpen },
  { op: Op.ListNext, cursor: 3, maxRefs: 100 },
  { op: Op.ListClose, cursor: 3 },
];

function frameOf(request: Request, id = 42): Uint8Array {
  const chunks = encodeRequest(request, id);
  const frame = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    frame.set(chunk, at);
    at += chunk.length;
  }
  return frame;
}

function decodeFrame(frame: Uint8Array): Request {
  const header = readHeader(frame, 0, false, tdpBodyMaxBytes(4096));
  assert.equal(header.bodyBytes, frame.length - TDP_HEADER_BYTES);
  return decodeRequest(header, frame.subarray(TDP_HEADER_BYTES));
}

Deno.test("TDP codec: every request survives a round trip", () => {
  for (const request of requests) {
    const decoded = decodeFrame(frameOf(request));
    assert.deepEqual(
      JSON.stringify(decoded, (_, v) => v instanceof BlockRef ? v.key : v),
      JSON.stringify(request, (_, v) => v instanceof BlockRef ? v.key : v),
      `op ${request.op}`,
    );
  }
});

Deno.test("TDP codec: the option flags are their bits of the header, per opcode", () => {
  const flagsOf = (request: Request) => readHeader(frameOf(request), 0, false, 1 << 20).flags;
  const data = new Uint8Array([1]);
  const put = { op: Op.Put, ref, fence: 0, ring: 0, data } as const;
  assert.equal(flagsOf({ ...put, ifAbsent: false }), 0);
  assert.equal(flagsOf({ ...put, ifAbsent: true }), Flag.IfAbsent);
  assert.equal(Flag.IfAbsent, 0x01);
  assert.equal(Flag.MustExist, 0x02);
  const write = { op: Op.WriteAt, ref, fence: 0, ring: 0, offsetBytes: 0, data } as const;
  const zero = { op: Op.ZeroAt, ref, fence: 0, ring: 0, offsetBytes: 0, lengthBytes: 1 } as const;
  for (const base of [write, zero]) {
    for (const fresh of [false, true]) {
      for (const mustExist of [false, true]) {
        const request: Request = { ...base, fresh, mustExist };
        const expected = (fresh ? Flag.Fresh : 0) | (mustExist ? Flag.MustExist : 0);
        assert.equal(
          flagsOf(request),
          expected,
          `op ${base.op} fresh ${fresh} mustExist ${mustExist}`,
        );
        const decoded = decodeFrame(frameOf(request));
        assert.ok(decoded.op === Op.WriteAt || decoded.op === Op.ZeroAt);
        assert.equal(decoded.fresh, fresh);
        assert.equal(decoded.mustExist, mustExist);
      }
    }
  }
  const decodedPut = decodeFrame(frameOf({ ...put, ifAbsent: true }));
  assert.ok(decodedPut.op === Op.Put && decodedPut.ifAbsent);
});

Deno.test("TDP codec: a truncated or padded body of every request is a frame error", () => {
  for (const request of requests) {
    const frame = frameOf(request);
    const header = readHeader(frame, 0, false, 1 << 20);
    const body = frame.subarray(TDP_HEADER_BYTES);
    const dataOps: number[] = [Op.Put, Op.WriteAt];
    if (body.length > 0 && !dataOps.includes(request.op)) {
      assert.throws(() => decodeRequest(header, body.subarray(0, body.length - 1)), TdpFrameError);
    }
    if (!dataOps.includes(request.op)) {
      const padded = new Uint8Array(body.length + 1);
      padded.set(body);
      assert.throws(() => decodeRequest(header, padded), TdpFrameError, `op ${request.op} padded`);
    }
  }
});

Deno.test("TDP codec: a change's ring version is the u64 after its fence", () => {
  const changes: Request[] = [
    { op: Op.Put, ref, fence: 3, ring: 2 ** 40 + 7, ifAbsent: false, data: new Uint8Array([9]) },
    {
      op: Op.WriteAt,
      ref,
      fence: 3,
      ring: 2 ** 40 + 7,
      fresh: false,
      mustExist: false,
      offsetBytes: 5,
      data: new Uint8Array([9]),
    },
    {
      op: Op.ZeroAt,
      ref,
      fence: 3,
      ring: 2 ** 40 + 7,
      fresh: false,
      mustExist: false,
      offsetBytes: 5,
      lengthBytes: 6,
    },
    { op: Op.Delete, ref, fence: 3, ring: 2 ** 40 + 7 },
  ];
  for (const request of changes) {
    const body = frameOf(request).subarray(TDP_HEADER_BYTES);
    const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    assert.equal(view.getBigUint64(24, true), 3n, `op ${request.op} fence`);
    assert.equal(view.getBigUint64(32, true), 2n ** 40n + 7n, `op ${request.op} ring`);
    if (request.op === Op.WriteAt || request.op === Op.ZeroAt) {
      assert.equal(view.getUint32(40, true), 5, `op ${request.op} offset`);
    }
    if (request.op === Op.ZeroAt) assert.equal(view.getUint32(44, true), 6);
  }
});

Deno.test("TDP codec: a change body one byte short of its fixed fields is a frame error", () => {
  // The fixed fields run to the ring version (PUT, DELETE) or to the offset and length.
  const fixedBytes: [Request, number][] = [
    [{ op: Op.Put, ref, fence: 1, ring: 2, ifAbsent: false, data: new Uint8Array() }, 40],
    [{ op: Op.Delete, ref, fence: 1, ring: 2 }, 40],
    [{
      op: Op.WriteAt,
      ref,
      fence: 1,
      ring: 2,
      fresh: false,
      mustExist: false,
      offsetBytes: 0,
      data: new Uint8Array(),
    }, 44],
    [{
      op: Op.ZeroAt,
      ref,
      fence: 1,
      ring: 2,
      fresh: false,
      mustExist: false,
      offsetBytes: 0,
      lengthBytes: 1,
    }, 48],
  ];
  for (const [request, fixed] of fixedBytes) {
    const frame = frameOf(request);
    const header = readHeader(frame, 0, false, 1 << 20);
    const body = frame.subarray(TDP_HEADER_BYTES);
    assert.equal(body.length, fixed, `op ${request.op} body`);
    assert.ok(decodeRequest(header, body).op === request.op);
    // Cut inside the ring version (an older sender's body without it), and one byte short.
    for (const cut of [32, 33, 39, fixed - 1]) {
      assert.throws(
        () => decodeRequest(header, body.subarray(0, cut)),
        TdpFrameError,
        `op ${request.op} cut to ${cut}`,
      );
    }
  }
});

Deno.test("TDP codec: headers that are not ours are refused before any body is read", () => {
  const good = frameOf({ op: Op.Flush });
  const cases: [string, (frame: Uint8Array) => void, boolean][] = [
    ["bad magic", (f) => f[0] = 0, false],
    ["opcode 0", (f) => f[2] = 0, false],
    ["opcode past the last", (f) => f[2] = 99, false],
    ["a reply where a request belongs", (f) => f[2] = Op.Flush | 0x80, false],
    ["reserved bits", (f) => f[15] = 1, false],
    ["a status on a request", (f) => f[12] = 1, false],
    ["a body over the bound", (f) => new DataView(f.buffer).setUint32(8, 0xffffffff, true), false],
  ];
  for (const [what, corrupt] of cases) {
    const frame = good.slice();
    corrupt(frame);
    assert.throws(() => readHeader(frame, 0, false, tdpBodyMaxBytes(4096)), TdpFrameError, what);
  }
  // A request is not a reply either.
  assert.throws(() => readHeader(good, 0, true, 1 << 20), TdpFrameError);
});

Deno.test("TDP codec: random bytes never decode into anything but a frame error", () => {
  let x = 7;
  const next = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  for (let round = 0; round < 5000; round++) {
    const frame = frameOf(requests[round % requests.length]!);
    // Flip a few bytes of a real frame, or use noise.
    if (round % 2 === 0) {
      for (let i = 0; i < 3; i++) frame[next() % frame.length] = next();
    } else {
      for (let i = 0; i < frame.length; i++) frame[i] = next();
    }
    try {
      decodeFrame(frame);
    } catch (error) {
      if (error instanceof TdpFrameError) continue;
      if (error instanceof assert.AssertionError) continue; // body length differs from the header
      throw error;
    }
  }
});

Deno.test("TDP codec: HELLO round trip and garbage", () => {
  const hello = {
    version: TDP_VERSION,
    blockSizeBytes: 4096,
    clusterId: "c-1",
    nodeName: "n é",
    instance: "i-1",
  };
  assert.deepEqual(decodeHello(encodeHello(hello)), hello);
  const [header, body] = encodeHelloRequest(hello, 0);
  assert.equal(readHeader(header!, 0, false, 1024).op, Op.Hello);
  assert.deepEqual(decodeHello(body!), hello);
  assert.throws(() => decodeHello(body!.subarray(0, 5)), TdpFrameError);
  assert.throws(() => decodeHello(new Uint8Array(0)), TdpFrameError);
  const badText = body!.slice();
  badText[10] = 0xff; // inside the cluster id: not UTF-8
  assert.throws(() => decodeHello(badText), TdpFrameError);
  assert.throws(() => encodeHello({ ...hello, clusterId: "x".repeat(256) }), /longer than 255/);
});

Deno.test("TDP codec: error codes keep their identity on the wire; unknown ones are unavailable", () => {
  for (const code of Object.values(ErrorCode)) assert.equal(codeOf(statusOf(code)), code);
  assert.equal(codeOf(999), ErrorCode.Unavailable);
  const reply = encodeErrorReply(Op.Get, 1, ErrorCode.NotExist, "é".repeat(2000));
  assert.ok(reply.length <= TDP_HEADER_BYTES + 1024);
  const header = readHeader(reply, 0, true, 4096);
  assert.equal(codeOf(header.status), ErrorCode.NotExist);
  // Cut on a character boundary: still UTF-8.
  new TextDecoder("utf-8", { fatal: true }).decode(reply.subarray(TDP_HEADER_BYTES));
});

/** Raw frames to a server on a socket: what a hostile or broken client can send. */
async function withServer(
  fn: (port: number, store: MemoryBlockStore) => Promise<void>,
  frameTimeoutMs?: number,
): Promise<void> {
  const store = new MemoryBlockStore({ blockSizeBytes: 4096, totalBlocks: 4 });
  const identity = { clusterId: "raw", blockSizeBytes: 4096, nodeName: "server" };
  const protocol = new TdpProtocol(undefined, undefined, frameTimeoutMs);
  const server = await protocol.listen("tdp://127.0.0.1:0", { identity, store });
  try {
    await fn(Number(new URL(server.address).port), store);
  } finally {
    await server.close();
    await store.close();
  }
}

/**
 * Sends `bytes` on a new connection and returns everything the server sent until it closed.
 * With `halfClose`, this end then closes its writing side, so the server sees the end of stream.
 */
async function rawExchange(
  port: number,
  bytes: Uint8Array,
  halfClose = false,
): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(bytes);
    if (halfClose) await conn.closeWrite();
    const chunks: number[] = [];
    const buffer = new Uint8Array(65536);
    const deadline = Date.now() + 5000;
    for (;;) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - Date.now()));
      });
      const n = await Promise.race([conn.read(buffer).catch(() => null), timeout]);
      clearTimeout(timer);
      if (n === "timeout") throw new Error("the server kept the connection open");
      if (n === null) return new Uint8Array(chunks);
      chunks.push(...buffer.subarray(0, n));
    }
  } finally {
    conn.close();
  }
}

function helloFrame(clusterId = "raw"): Uint8Array {
  const [header, body] = encodeHelloRequest(
    { version: TDP_VERSION, blockSizeBytes: 4096, clusterId, nodeName: "raw", instance: "" },
    0,
  );
  const frame = new Uint8Array(header!.length + body!.length);
  frame.set(header!);
  frame.set(body!, header!.length);
  return frame;
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

Deno.test("TDP server: a request before HELLO, or a refused HELLO, ends the connection", async () => {
  await withServer(async (port, store) => {
    const before = await rawExchange(
      port,
      frameOf({ op: Op.Put, ref, fence: 0, ring: 0, ifAbsent: false, data: new Uint8Array(1) }),
    );
    assert.equal(before.length, 0);
    const refused = await rawExchange(
      port,
      concat(
        helloFrame("other"),
        frameOf({ op: Op.Put, ref, fence: 0, ring: 0, ifAbsent: false, data: new Uint8Array(1) }),
      ),
    );
    const header = readHeader(refused, 0, true, 4096);
    assert.equal(codeOf(header.status), ErrorCode.Invalid);
    assert.match(new TextDecoder().decode(refused.subarray(TDP_HEADER_BYTES)), /cluster "other"/);
    assert.equal(refused.length, TDP_HEADER_BYTES + header.bodyBytes, "nothing after the refusal");
    assert.equal(store.usedBlocks(), 0);
  });
});

/** Whether `answer` is exactly the server's ok HELLO reply (and nothing after it). */
function onlyHelloReply(answer: Uint8Array): boolean {
  const hello = readHeader(answer, 0, true, 4096);
  return hello.status === 0 && answer.length === TDP_HEADER_BYTES + hello.bodyBytes;
}

Deno.test("TDP server: a frame cut short by the end of the stream stores nothing", async () => {
  await withServer(async (port, store) => {
    const put = frameOf({
      op: Op.Put,
      ref,
      fence: 0,
      ring: 0,
      ifAbsent: false,
      data: new Uint8Array(10),
    });
    for (const cut of [3, 10, put.length - 1]) {
      const answer = await rawExchange(port, concat(helloFrame(), put.subarray(0, cut)), true);
      assert.ok(onlyHelloReply(answer), `cut at ${cut}`);
    }
    assert.equal(store.usedBlocks(), 0);
  });
});

Deno.test("TDP server: a frame that stops arriving halfway closes the connection", async () => {
  await withServer(async (port, store) => {
    const put = frameOf({
      op: Op.Put,
      ref,
      fence: 0,
      ring: 0,
      ifAbsent: false,
      data: new Uint8Array(10),
    });
    const started = Date.now();
    const answer = await rawExchange(port, concat(helloFrame(), put.subarray(0, put.length - 3)));
    assert.ok(onlyHelloReply(answer));
    assert.ok(Date.now() - started < 4_000);
    assert.equal(store.usedBlocks(), 0);
  }, 200);
});

Deno.test("TDP server: a connection that never says HELLO is closed after the frame timeout", async () => {
  await withServer(async (port) => {
    // What an NBD client pointed at the TDP port does: wait for a greeting, send nothing.
    const started = Date.now();
    assert.equal((await rawExchange(port, new Uint8Array(0))).length, 0);
    assert.ok(Date.now() - started < 4_000);
    // A HELLO that starts but never ends is closed the same way.
    assert.equal((await rawExchange(port, helloFrame().subarray(0, 5))).length, 0);
  }, 200);
});

Deno.test("TDP server: an oversized frame or a bad body closes the connection", async () => {
  await withServer(async (port, store) => {
    const oversized = frameOf({ op: Op.Flush });
    new DataView(oversized.buffer).setUint32(8, tdpBodyMaxBytes(4096) + 1, true);
    const shortBody = frameOf({ op: Op.ReadAt, ref, offsetBytes: 0, lengthBytes: 1 });
    new DataView(shortBody.buffer).setUint32(8, 10, true);
    const unknownOp = frameOf({ op: Op.Flush });
    unknownOp[2] = 77;
    for (const bad of [oversized, shortBody.subarray(0, 26), unknownOp, helloFrame()]) {
      // Only the HELLO reply comes back; the bad frame is answered by closing.
      assert.ok(onlyHelloReply(await rawExchange(port, concat(helloFrame(), bad))));
    }
    assert.equal(store.usedBlocks(), 0);
  });
});

Deno.test("TDP server: a read longer than a block gets an invalid reply and the connection stays", async () => {
  await withServer(async (port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      const long = frameOf({ op: Op.ReadAt, ref, offsetBytes: 0, lengthBytes: 0xffffffff }, 5);
      await conn.write(concat(helloFrame(), long, frameOf({ op: Op.Ping }, 6)));
      const replies: { id: number; status: number }[] = [];
      const buffer = new Uint8Array(65536);
      let have: Uint8Array = new Uint8Array(0);
      while (replies.length < 3) {
        const n = await conn.read(buffer);
        assert.ok(n !== null, "the server closed the connection");
        have = concat(have, buffer.subarray(0, n));
        while (have.length >= TDP_HEADER_BYTES) {
          const header = readHeader(have, 0, true, 1 << 20);
          if (have.length < TDP_HEADER_BYTES + header.bodyBytes) break;
          replies.push({ id: header.requestId, status: header.status });
          have = have.slice(TDP_HEADER_BYTES + header.bodyBytes);
        }
      }
      assert.deepEqual(replies.slice(1).sort((a, b) => a.id - b.id), [
        { id: 5, status: statusOf(ErrorCode.Invalid) },
        { id: 6, status: 0 },
      ]);
    } finally {
      conn.close();
    }
  });
});

Deno.test("TDP client: errors of the remote store keep their codes", async () => {
  await withServer(async (port) => {
    const identity = { clusterId: "raw", blockSizeBytes: 4096, nodeName: "client" };
    const client = new TdpProtocol().dial(`tdp://127.0.0.1:${port}`, {
      identity,
      callTimeoutMs: 2000,
    });
    try {
      const error = await client.getBlock(ref).then(() => null, (e: unknown) => e);
      assert.ok(isTorusError(error, ErrorCode.NotExist), String(error));
      assert.match((error as Error).message, /127\.0\.0\.1/);
    } finally {
      await client.close();
    }
  });
});
