/**
 * The NBD server's handshake against our client and raw bytes: GO/INFO/LIST/ABORT, unknown
 * exports and options, snapshots read-only, and garbage that must close only its own connection.
 */

import assert from "node:assert/strict";
import { ErrorCode, ManualClock, NBD_HANDSHAKE_TIMEOUT_MS } from "../../src/core/mod.ts";
import { MemoryDevice, NbdNegotiation } from "../../src/block/mod.ts";
import { rejectsWithCode } from "../../src/block/device_contract.ts";
import {
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  encodeString,
  NBD_CMD_READ,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_GREETING_BYTES,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPTION_REPLY_HEADER_BYTES,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNSUP,
} from "../../src/block/nbd/protocol.ts";
import { eventually, NbdFixture, RawNbd } from "../support/nbd_fixture.ts";

const MiB = 1024 * 1024;

async function fixture(): Promise<NbdFixture> {
  const nbd = await NbdFixture.start({ exports: { vol: 16 * MiB, other: 4 * MiB } });
  const source = nbd.device("vol") as MemoryDevice;
  await source.writeAt(0, new Uint8Array(4096).fill(7));
  nbd.addExport("vol@snap", source.snapshot());
  return nbd;
}

/** A raw connection past the greeting, with the client flags sent. */
async function rawAfterFlags(nbd: NbdFixture, flags?: number): Promise<RawNbd> {
  const raw = new RawNbd(await nbd.connect());
  await raw.reader.readExact(NBD_GREETING_BYTES);
  await raw.write(encodeClientFlags(flags ?? (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)));
  return raw;
}

async function optionReply(raw: RawNbd): Promise<{ replyType: number; data: Uint8Array }> {
  const header = decodeOptionReplyHeader(await raw.reader.readExact(NBD_OPTION_REPLY_HEADER_BYTES));
  return { replyType: header.replyType, data: await raw.data(header.lengthBytes) };
}

/** A read through a healthy connection: the server still serves. */
async function assertServing(nbd: NbdFixture): Promise<void> {
  const client = await nbd.client("vol");
  try {
    const back = new Uint8Array(4096);
    await client.readAt(0, back);
    assert.equal(back[0], 7);
  } finally {
    await client.close();
  }
}

Deno.test("nbd handshake: GO reports size and flags, multi-conn included", async () => {
  await using nbd = await fixture();
  const negotiation = await NbdNegotiation.start(await nbd.connect());
  const info = await negotiation.go("vol");
  assert.equal(info.sizeBytes, 16 * MiB);
  assert.equal(info.readOnly, false);
  for (
    const flag of [
      NBD_FLAG_SEND_FLUSH,
      NBD_FLAG_SEND_FUA,
      NBD_FLAG_SEND_TRIM,
      NBD_FLAG_SEND_WRITE_ZEROES,
      NBD_FLAG_CAN_MULTI_CONN,
    ]
  ) {
    assert.ok((info.transmissionFlags & flag) !== 0, `flag ${flag}`);
  }
  assert.deepEqual(info.blockSize, {
    minimumBytes: 1,
    preferredBytes: 4096,
    maximumBytes: 32 * MiB,
  });
  negotiation.stream.close();
});

Deno.test("nbd handshake: an unknown export gets an error reply, not a dropped socket", async () => {
  await using nbd = await fixture();
  const negotiation = await NbdNegotiation.start(await nbd.connect());
  await assert.rejects(negotiation.go("nope"), (error: Error) => {
    assert.match(error.message, /no export named "nope"/);
    return true;
  });
  await rejectsWithCode(negotiation.info("nope"), ErrorCode.NotExist);
  const info = await negotiation.go("other");
  assert.equal(info.sizeBytes, 4 * MiB);
  negotiation.stream.close();
});

Deno.test("nbd handshake: INFO gives block sizes and stays in negotiation", async () => {
  await using nbd = await fixture();
  const negotiation = await NbdNegotiation.start(await nbd.connect());
  const info = await negotiation.info("vol");
  assert.equal(info.sizeBytes, 16 * MiB);
  assert.equal(info.blockSize?.minimumBytes, 1);
  assert.equal(info.blockSize?.preferredBytes, 4096);
  assert.equal(info.name, "vol", "NBD_INFO_NAME answered");
  await eventually(() => nbd.exports.openDevices === 0, "INFO closes the device it opened");
  assert.equal((await negotiation.go("vol")).sizeBytes, 16 * MiB);
  assert.equal(nbd.exports.openDevices, 1);
  negotiation.stream.close();
});

Deno.test("nbd handshake: LIST names the exports, not the snapshots", async () => {
  await using nbd = await fixture();
  const negotiation = await NbdNegotiation.start(await nbd.connect());
  const names = (await negotiation.list()).map((e) => e.name).sort();
  assert.deepEqual(names, ["other", "vol"]);
  await negotiation.abort();
});

Deno.test("nbd handshake: a snapshot VOLUME@SNAP is exported read-only", async () => {
  await using nbd = await fixture();
  const client = await nbd.client("vol@snap");
  assert.ok(client.readOnly);
  assert.ok(client.has(NBD_FLAG_READ_ONLY));
  const back = new Uint8Array(4096);
  await client.readAt(0, back);
  assert.equal(back[4095], 7);
  await client.close();
});

Deno.test("nbd handshake: ABORT is acknowledged and the session ends", async () => {
  await using nbd = await fixture();
  using raw = await rawAfterFlags(nbd);
  await raw.write(encodeOption(NBD_OPT_ABORT));
  assert.equal((await optionReply(raw)).replyType, NBD_REP_ACK);
  assert.ok(await raw.closedByServer());
  raw.close();
  await assertServing(nbd);
});

Deno.test("nbd handshake: unsupported and unknown options get ERR_UNSUP", async () => {
  await using nbd = await fixture();
  using raw = await rawAfterFlags(nbd);
  // STRUCTURED_REPLY and the meta context options are supported: nbd_structured_test.ts.
  const options = [
    NBD_OPT_STARTTLS,
    4,
    99,
    0xffffffff,
  ];
  for (const option of options) {
    await raw.write(encodeOption(option, new Uint8Array(option === 99 ? 10 : 0)));
    assert.equal((await optionReply(raw)).replyType, NBD_REP_ERR_UNSUP, `option ${option}`);
  }
  await raw.write(encodeOption(NBD_OPT_LIST, new Uint8Array(1)));
  assert.equal((await optionReply(raw)).replyType, NBD_REP_ERR_INVALID, "LIST with data");
  await raw.write(encodeOption(NBD_OPT_GO, new Uint8Array([0, 0, 0, 9, 1])));
  assert.equal((await optionReply(raw)).replyType, NBD_REP_ERR_INVALID, "GO with bad data");
  await raw.write(encodeOption(99, new Uint8Array(5000)));
  assert.equal((await optionReply(raw)).replyType, NBD_REP_ERR_TOO_BIG, "over 4096 bytes");
  // Still in step: GO works on the same connection.
  await raw.write(encodeOption(NBD_OPT_GO, encodeInfoRequest({ name: "vol", infoTypes: [] })));
  let reply = await optionReply(raw);
  while (reply.replyType !== NBD_REP_ACK) reply = await optionReply(raw);
  raw.close();
});

Deno.test("nbd handshake: EXPORT_NAME of an unknown export closes only that connection", async () => {
  await using nbd = await fixture();
  using raw = await rawAfterFlags(nbd);
  await raw.write(encodeOption(NBD_OPT_EXPORT_NAME, encodeString("nope")));
  assert.ok(await raw.closedByServer());
  raw.close();
  await assertServing(nbd);
});

Deno.test("nbd handshake: EXPORT_NAME without NO_ZEROES gets the 124 zero bytes", async () => {
  await using nbd = await fixture();
  using raw = await rawAfterFlags(nbd, NBD_FLAG_C_FIXED_NEWSTYLE);
  await raw.write(encodeOption(NBD_OPT_EXPORT_NAME, encodeString("vol")));
  const reply = await raw.data(10 + 124);
  assert.equal(new DataView(reply.buffer).getBigUint64(0), BigInt(16 * MiB));
  assert.ok(reply.subarray(10).every((b) => b === 0));
  await raw.send({ type: NBD_CMD_READ, handle: 5, offsetBytes: 0, lengthBytes: 1 });
  assert.deepEqual(await raw.reply(), { error: 0, handle: 5 });
  assert.deepEqual(await raw.data(1), new Uint8Array([7]));
  raw.close();
});

Deno.test("nbd handshake: garbage closes only its own connection", async (t) => {
  await using nbd = await fixture();
  const healthy = await nbd.client("vol");
  const cases: [string, (raw: RawNbd) => Promise<void>][] = [
    ["unknown client flags", (raw) => raw.write(encodeClientFlags(0x80))],
    ["a bad option magic", async (raw) => {
      await raw.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE));
      const option = encodeOption(NBD_OPT_LIST);
      option[0] = 0x42;
      await raw.write(option);
    }],
    ["an export name over 4096 bytes", async (raw) => {
      await raw.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE));
      await raw.write(encodeOption(NBD_OPT_EXPORT_NAME, new Uint8Array(5000).fill(0x61)));
    }],
    ["an export name that is not UTF-8", async (raw) => {
      await raw.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE));
      await raw.write(encodeOption(NBD_OPT_EXPORT_NAME, new Uint8Array([0xff, 0xfe])));
    }],
    ["random bytes", (raw) => raw.write(crypto.getRandomValues(new Uint8Array(300)))],
  ];
  for (const [name, send] of cases) {
    await t.step(name, async () => {
      using raw = new RawNbd(await nbd.connect());
      await raw.reader.readExact(NBD_GREETING_BYTES);
      await send(raw);
      assert.ok(await raw.closedByServer(), "the server closed the connection");
      raw.close();
      const back = new Uint8Array(1);
      await healthy.readAt(0, back);
      assert.equal(back[0], 7, "the other connection still works");
    });
  }
  await t.step("a client that sends half a message and leaves", async () => {
    using raw = new RawNbd(await nbd.connect());
    await raw.reader.readExact(NBD_GREETING_BYTES);
    await raw.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE));
    await raw.write(encodeOption(NBD_OPT_GO).subarray(0, 9));
    raw.close();
    await assertServing(nbd);
  });
  await healthy.close();
  assert.ok(nbd.server.stats.protocolErrors >= cases.length);
});

Deno.test("nbd handshake: a client that does not finish in time is disconnected", async () => {
  const clock = new ManualClock();
  await using nbd = await NbdFixture.start({ exports: { vol: MiB }, server: { clock } });
  using raw = new RawNbd(await nbd.connect());
  await raw.reader.readExact(NBD_GREETING_BYTES);
  while (clock.pendingSleepers === 0) await new Promise((r) => setTimeout(r, 1));
  await clock.advance(NBD_HANDSHAKE_TIMEOUT_MS);
  assert.ok(await raw.closedByServer());
  raw.close();
});
