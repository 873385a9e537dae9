/**
 * The NBD server's transmission phase: read-only exports, out-of-order replies, DISC draining,
 * the in-flight and memory bounds, clients that vanish, many connections, the multi-conn flush
 * claim, errno mapping and server shutdown. Devices are wrapped to hold, record or fail calls,
 * so nothing here depends on timing.
 */

import assert from "node:assert/strict";
import {
  blockUnavailable,
  closed,
  ErrorCode,
  invalid,
  ManualClock,
  NBD_CLOSE_GRACE_MS,
  TorusError,
} from "../../src/core/mod.ts";
import { type Device, MemoryDevice } from "../../src/block/mod.ts";
import { assertBytes, patternBytes, rejectsWithCode } from "../../src/block/device_contract.ts";
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_TRIM,
} from "../../src/block/nbd/protocol.ts";
import { eventually, NbdFixture, RawNbd, requestBytes } from "../support/nbd_fixture.ts";
import { FaultDevice, GatedDevice, opensAtExit, RecordingDevice } from "../support/test_devices.ts";

const MiB = 1024 * 1024;

/** A fixture whose export "vol" is `wrap` around a fresh MemoryDevice. */
function fixtureWith<T extends Device>(
  wrap: (inner: MemoryDevice) => T,
  options: Parameters<typeof NbdFixture.start>[0] = {},
): Promise<NbdFixture> {
  return NbdFixture.start({
    ...options,
    exports: { vol: 16 * MiB },
    deviceFactory: (_name, sizeBytes) => Promise.resolve(wrap(new MemoryDevice({ sizeBytes }))),
  });
}

Deno.test("nbd transmission: a read-only export refuses writes with EPERM", async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: MiB } });
  const source = nbd.device("vol");
  await source.writeAt(0, new Uint8Array(512).fill(3));
  nbd.addExport("vol@snap", (source as MemoryDevice).snapshot());
  using raw = await RawNbd.open(nbd, "vol@snap");
  const refused = [
    { type: NBD_CMD_WRITE, payload: new Uint8Array(512) },
    { type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_FUA, payload: new Uint8Array(4096) },
    { type: NBD_CMD_TRIM, lengthBytes: 4096 },
    { type: NBD_CMD_WRITE_ZEROES, lengthBytes: 4096 },
  ];
  for (const [i, request] of refused.entries()) {
    await raw.send({ ...request, handle: i });
    assert.deepEqual(await raw.reply(), { error: NBD_EPERM, handle: i });
  }
  await raw.send({ type: NBD_CMD_FLUSH, handle: 10 });
  assert.deepEqual(await raw.reply(), { error: 0, handle: 10 });
  await raw.send({ type: NBD_CMD_READ, handle: 11, lengthBytes: 512 });
  assert.deepEqual(await raw.reply(), { error: 0, handle: 11 });
  assert.ok((await raw.data(512)).every((b) => b === 3));
  raw.close();
});

Deno.test("nbd transmission: a read-only server makes writable exports read-only", async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: MiB }, server: { readOnly: true } });
  const client = await nbd.client("vol");
  assert.ok(client.has(NBD_FLAG_READ_ONLY));
  assert.ok(!client.has(NBD_FLAG_SEND_TRIM));
  await client.close();
  using raw = await RawNbd.open(nbd, "vol");
  await raw.send({ type: NBD_CMD_WRITE, handle: 1, payload: new Uint8Array(512).fill(1) });
  assert.deepEqual(await raw.reply(), { error: NBD_EPERM, handle: 1 });
  raw.close();
  const back = new Uint8Array(512);
  await nbd.device("vol").readAt(0, back);
  assert.ok(back.every((b) => b === 0));
});

Deno.test("nbd transmission: replies come back out of order", async () => {
  let gated!: GatedDevice;
  await using nbd = await fixtureWith((inner) =>
    gated = new GatedDevice(inner, (call) => call.kind === "read" && call.offsetBytes === 0)
  );
  using _gate = opensAtExit(gated);
  using raw = await RawNbd.open(nbd, "vol");
  await raw.send({ type: NBD_CMD_READ, handle: 1, offsetBytes: 0, lengthBytes: 4096 });
  await raw.send({ type: NBD_CMD_READ, handle: 2, offsetBytes: 4096, lengthBytes: 4096 });
  assert.deepEqual(await raw.reply(), { error: 0, handle: 2 }, "the later request first");
  await raw.data(4096);
  gated.open();
  assert.deepEqual(await raw.reply(), { error: 0, handle: 1 });
  await raw.data(4096);
  raw.close();
});

Deno.test("nbd transmission: DISC answers every request in flight before closing", async () => {
  let gated!: GatedDevice;
  await using nbd = await fixtureWith((inner) =>
    gated = new GatedDevice(inner, (call) => call.kind === "write")
  );
  using _gate = opensAtExit(gated);
  using raw = await RawNbd.open(nbd, "vol");
  const data = patternBytes(8192, 1);
  const bytes = [1, 2, 3].map((handle) =>
    requestBytes({ type: NBD_CMD_WRITE, handle, offsetBytes: handle * 8192, payload: data })
  );
  await raw.write(new Uint8Array([...bytes.flatMap((b) => [...b])]));
  await raw.write(requestBytes({ type: NBD_CMD_DISC }));
  await gated.whenHeld(3);
  gated.open();
  const handles = [
    (await raw.reply()).handle,
    (await raw.reply()).handle,
    (await raw.reply()).handle,
  ];
  assert.deepEqual(handles.sort(), [1, 2, 3]);
  assert.ok(await raw.closedByServer());
  raw.close();
  const back = new Uint8Array(8192);
  await nbd.device("vol").readAt(3 * 8192, back);
  assertBytes(back, data);
});

Deno.test("nbd transmission: requests in flight per connection are bounded", async () => {
  let gated!: GatedDevice;
  const max = 8;
  await using nbd = await fixtureWith((inner) => gated = new GatedDevice(inner), {
    server: { requestsInFlightMax: max },
  });
  using _gate = opensAtExit(gated);
  using raw = await RawNbd.open(nbd, "vol");
  const count = 40;
  const all = new Uint8Array(
    Array.from(
      { length: count },
      (
        _,
        i,
      ) => [
        ...requestBytes({ type: NBD_CMD_READ, handle: i, offsetBytes: i * 512, lengthBytes: 512 }),
      ],
    )
      .flat(),
  );
  await raw.write(all);
  await gated.whenHeld(max);
  // Give a server that ignored the bound every chance to dispatch more before checking.
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(gated.held, max);
  gated.open();
  const seen = new Set<number>();
  for (let i = 0; i < count; i++) {
    const reply = await raw.reply();
    await raw.data(512);
    seen.add(reply.handle);
  }
  assert.equal(seen.size, count);
  assert.ok(gated.inFlightPeak <= max, `peak ${gated.inFlightPeak}`);
  assert.ok(nbd.server.stats.requestsInFlightPeak <= max);
  raw.close();
});

Deno.test("nbd transmission: a client that does not read its replies holds bounded memory", async () => {
  const bufferedBytesMax = 4 * MiB;
  await using nbd = await NbdFixture.start({
    exports: { vol: 64 * MiB },
    server: { bufferedBytesMax },
  });
  using raw = await RawNbd.open(nbd, "vol");
  const count = 64;
  const requests = Array.from(
    { length: count },
    (_, i) =>
      requestBytes({ type: NBD_CMD_READ, handle: i, offsetBytes: i * MiB, lengthBytes: MiB }),
  );
  await raw.write(new Uint8Array(requests.flatMap((r) => [...r])));
  // The server answers until its replies fill the socket, then stalls at its bound.
  await eventually(() => nbd.server.stats.requests >= 4, "the server has started answering");
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setTimeout(resolve, 0));
  assert.ok(
    nbd.server.stats.bufferedBytesPeak <= bufferedBytesMax,
    `held ${nbd.server.stats.bufferedBytesPeak} bytes`,
  );
  for (let i = 0; i < count; i++) {
    assert.equal((await raw.reply()).error, 0);
    await raw.data(MiB);
  }
  assert.ok(nbd.server.stats.bufferedBytesPeak <= bufferedBytesMax);
  raw.close();
});

Deno.test("nbd transmission: a client that leaves mid-write crashes nothing", async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: MiB } });
  using raw = await RawNbd.open(nbd, "vol");
  const bytes = requestBytes({ type: NBD_CMD_WRITE, payload: new Uint8Array(65536).fill(9) });
  await raw.write(bytes.subarray(0, 28 + 1000));
  raw.close();
  await eventually(() => nbd.server.stats.connectionsOpen === 0, "the connection is gone");
  const back = new Uint8Array(65536);
  await nbd.device("vol").readAt(0, back);
  assert.ok(back.every((b) => b === 0), "a write that never fully arrived is not applied");
  const client = await nbd.client("vol");
  await client.writeAt(0, new Uint8Array(10).fill(1));
  await client.close();
});

Deno.test("nbd transmission: a client that leaves with requests in flight aborts them", async () => {
  let gated!: GatedDevice;
  await using nbd = await fixtureWith((inner) =>
    gated = new GatedDevice(inner, (call) => call.kind === "read")
  );
  using _gate = opensAtExit(gated);
  using raw = await RawNbd.open(nbd, "vol");
  for (let handle = 0; handle < 5; handle++) {
    await raw.send({ type: NBD_CMD_READ, handle, offsetBytes: handle * 4096, lengthBytes: 4096 });
  }
  await gated.whenHeld(5);
  raw.close();
  await eventually(() => nbd.server.stats.connectionsOpen === 0, "the connection is gone");
  assert.equal(gated.aborted, 5, "the device was told to abandon the calls");
  assert.equal(nbd.exports.openDevices, 0);
});

Deno.test("nbd transmission: many connections with many requests in flight", async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: 32 * MiB } });
  const clients = await Promise.all(Array.from({ length: 8 }, () => nbd.client("vol")));
  assert.equal(nbd.exports.openDevices, 1, "one device shared by every connection");
  await Promise.all(clients.map((client, c) =>
    Promise.all(Array.from({ length: 64 }, (_, i) => {
      const block = c * 64 + i;
      return client.writeAt(block * 4096 + c, patternBytes(4000, block));
    }))
  ));
  // Every connection reads what the others wrote.
  await Promise.all(
    clients.map((client, c) =>
      Promise.all(Array.from({ length: 8 * 64 }, async (_, block) => {
        const back = new Uint8Array(4000);
        await client.readAt(block * 4096 + Math.floor(block / 64), back);
        assertBytes(back, patternBytes(4000, block), `connection ${c} block ${block}`);
      }))
    ),
  );
  await Promise.all(clients.map((client) => client.close()));
  await eventually(() => nbd.exports.openDevices === 0, "the last connection closes the device");
});

Deno.test("nbd transmission: a FLUSH on one connection covers writes acknowledged on another", async () => {
  let recording!: RecordingDevice;
  await using nbd = await fixtureWith((inner) => recording = new RecordingDevice(inner));
  const a = await nbd.client("vol");
  const b = await nbd.client("vol");
  await a.writeAt(0, patternBytes(4096, 1));
  await a.writeAt(65536, patternBytes(4096, 2));
  assert.ok(!recording.writesAt(0)[0]!.durable, "not durable before any flush");
  await b.flush();
  assert.ok(recording.writesAt(0)[0]!.durable, "A's first write is covered by B's flush");
  assert.ok(recording.writesAt(65536)[0]!.durable, "A's second write is covered by B's flush");
  await b.writeAt(8192, patternBytes(4096, 3), { fua: true });
  assert.ok(recording.writesAt(8192)[0]!.durable, "a FUA write is durable when acknowledged");
  await a.close();
  await b.close();
});

Deno.test("nbd transmission: device errors map to NBD error values", async () => {
  const errors: [unknown, number][] = [
    [invalid("bad range"), NBD_EINVAL],
    [new TorusError(ErrorCode.OutOfSpace, "full"), NBD_ENOSPC],
    [new TorusError(ErrorCode.ReadOnly, "snapshot"), NBD_EPERM],
    [blockUnavailable("lost"), NBD_EIO],
    [new TorusError(ErrorCode.Unavailable, "peer down"), NBD_EIO],
    [new TorusError(ErrorCode.Locked, "lock lost"), NBD_EIO],
    [closed("closed"), NBD_ESHUTDOWN],
    [new Error("not a TorusError"), NBD_EIO],
  ];
  let next = 0;
  await using nbd = await fixtureWith((inner) =>
    new FaultDevice(inner, (call) => call.offsetBytes === 4096 ? errors[next]![0] : null)
  );
  using raw = await RawNbd.open(nbd, "vol");
  for (const [i, [, errno]] of errors.entries()) {
    next = i;
    await raw.send({ type: NBD_CMD_READ, handle: i, offsetBytes: 4096, lengthBytes: 512 });
    assert.deepEqual(await raw.reply(), { error: errno, handle: i });
    await raw.send({
      type: NBD_CMD_WRITE,
      handle: 100 + i,
      offsetBytes: 4096,
      payload: new Uint8Array(8),
    });
    assert.deepEqual(await raw.reply(), { error: errno, handle: 100 + i });
  }
  assert.equal(nbd.server.stats.errorReplies, 2 * errors.length);
  raw.close();
  const client = await nbd.client("vol");
  next = 1;
  await rejectsWithCode(client.writeAt(4096, new Uint8Array(1)), ErrorCode.OutOfSpace);
  await client.close();
});

Deno.test("nbd transmission: TRIM, WRITE_ZEROES with and without NO_HOLE, FUA", async () => {
  let recording!: RecordingDevice;
  await using nbd = await fixtureWith((inner) => recording = new RecordingDevice(inner));
  const memory = recording.inner as MemoryDevice;
  using raw = await RawNbd.open(nbd, "vol");
  await raw.send({ type: NBD_CMD_WRITE, handle: 1, payload: patternBytes(65536, 5) });
  assert.equal((await raw.reply()).error, 0);
  assert.equal(memory.allocatedBytes, 65536);
  await raw.send({ type: NBD_CMD_TRIM, handle: 2, offsetBytes: 0, lengthBytes: 16384 });
  assert.equal((await raw.reply()).error, 0);
  assert.equal(memory.allocatedBytes, 65536 - 16384);
  await raw.send({ type: NBD_CMD_WRITE_ZEROES, handle: 3, offsetBytes: 16384, lengthBytes: 16384 });
  assert.equal((await raw.reply()).error, 0);
  assert.equal(memory.allocatedBytes, 65536 - 32768, "without NO_HOLE the space is freed");
  await raw.send({
    type: NBD_CMD_WRITE_ZEROES,
    flags: NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA,
    handle: 4,
    offsetBytes: MiB,
    lengthBytes: 8192,
  });
  assert.equal((await raw.reply()).error, 0);
  assert.equal(memory.allocatedBytes, 65536 - 32768 + 8192, "NO_HOLE keeps it allocated");
  assert.ok(recording.writesAt(MiB)[0]!.durable, "FUA reached the device");
  await raw.send({ type: NBD_CMD_READ, handle: 5, offsetBytes: 0, lengthBytes: 65536 });
  assert.equal((await raw.reply()).error, 0);
  const expected = patternBytes(65536, 5).fill(0, 0, 32768);
  assertBytes(await raw.data(65536), expected);
  raw.close();
});

Deno.test("nbd transmission: server close answers requests in flight, then closes", async () => {
  let gated!: GatedDevice;
  await using nbd = await fixtureWith((inner) =>
    gated = new GatedDevice(inner, (call) => call.kind === "read")
  );
  using _gate = opensAtExit(gated);
  using raw = await RawNbd.open(nbd, "vol");
  await raw.send({ type: NBD_CMD_READ, handle: 1, lengthBytes: 4096 });
  await gated.whenHeld(1);
  const closing = nbd.server.close();
  await raw.send({ type: NBD_CMD_WRITE, handle: 2, payload: new Uint8Array(512) });
  assert.deepEqual(await raw.reply(), { error: NBD_ESHUTDOWN, handle: 2 });
  gated.open();
  assert.deepEqual(await raw.reply(), { error: 0, handle: 1 });
  await raw.data(4096);
  await closing;
  assert.ok(await raw.closedByServer());
  raw.close();
  assert.equal(nbd.exports.openDevices, 0, "the device was closed");
  await assert.rejects(nbd.connect());
});

Deno.test("nbd transmission: the server listens on a Unix socket too", async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: MiB }, unixSocket: true });
  const conn = await Deno.connect({ transport: "unix", path: nbd.unixPath! });
  const { NbdClient } = await import("../../src/block/mod.ts");
  const client = await NbdClient.connect(conn, { exportName: "vol" });
  await client.writeAt(100, patternBytes(1000, 1));
  const back = new Uint8Array(1000);
  await client.readAt(100, back);
  assertBytes(back, patternBytes(1000, 1));
  await client.close();
});

Deno.test("nbd transmission: server close does not wait forever for a client that stopped reading", async () => {
  const clock = new ManualClock();
  await using nbd = await NbdFixture.start({
    exports: { vol: 64 * MiB },
    server: { clock, bufferedBytesMax: 4 * MiB },
  });
  using raw = await RawNbd.open(nbd, "vol");
  const requests = Array.from(
    { length: 64 },
    (_, i) =>
      requestBytes({ type: NBD_CMD_READ, handle: i, offsetBytes: i * MiB, lengthBytes: MiB }),
  );
  await raw.write(new Uint8Array(requests.flatMap((r) => [...r])));
  await eventually(() => nbd.server.stats.requests >= 4, "the server has started answering");
  const closing = nbd.server.close();
  let closed = false;
  void closing.then(() => closed = true);
  while (clock.pendingSleepers === 0) await new Promise((resolve) => setTimeout(resolve, 1));
  assert.ok(!closed, "close waits while replies are owed");
  await clock.advance(NBD_CLOSE_GRACE_MS);
  await closing;
  assert.equal(nbd.server.stats.connectionsOpen, 0);
  assert.equal(nbd.exports.openDevices, 0);
});
