/**
 * Every malformed request over a raw TCP socket: each gets an error reply (and the connection
 * goes on) or a clean disconnect of that connection only, while another connection keeps working.
 */

import assert from "node:assert/strict";
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
} from "../../src/block/nbd/protocol.ts";
import { type NbdClient } from "../../src/block/mod.ts";
import { assertBytes } from "../../src/block/device_contract.ts";
import { NbdFixture, RawNbd, type RawRequest, requestBytes } from "../support/nbd_fixture.ts";

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

/** Checks the healthy connection still reads what was written before. */
async function assertOtherConnectionWorks(healthy: NbdClient): Promise<void> {
  const back = new Uint8Array(4096);
  await healthy.readAt(SIZE - 4096, back);
  assert.ok(back.every((b) => b === 0x5a));
}

/** After an error reply, the same connection still serves a read. */
async function assertStillServing(raw: RawNbd): Promise<void> {
  await raw.send({ type: NBD_CMD_READ, handle: 77, offsetBytes: SIZE - 4096, lengthBytes: 4096 });
  assert.deepEqual(await raw.reply(), { error: 0, handle: 77 });
  assert.ok((await raw.data(4096)).every((b) => b === 0x5a));
}

async function withServer(
  body: (nbd: NbdFixture, healthy: NbdClient) => Promise<void>,
): Promise<void> {
  await using nbd = await NbdFixture.start({ exports: { vol: SIZE } });
  await nbd.device("vol").writeAt(SIZE - 4096, new Uint8Array(4096).fill(0x5a));
  const healthy = await nbd.client("vol");
  try {
    await body(nbd, healthy);
    await assertOtherConnectionWorks(healthy);
  } finally {
    await healthy.close();
  }
}

const errorReplies: [string, RawRequest, number][] = [
  ["read at an offset beyond the export", {
    type: NBD_CMD_READ,
    offsetBytes: SIZE,
    lengthBytes: 512,
  }, NBD_EINVAL],
  ["read whose length runs past the end", {
    type: NBD_CMD_READ,
    offsetBytes: SIZE - 512,
    lengthBytes: 1024,
  }, NBD_EINVAL],
  ["read at an offset beyond 2^53", {
    type: NBD_CMD_READ,
    offsetBytes: Number.MAX_SAFE_INTEGER,
    lengthBytes: 512,
  }, NBD_EINVAL],
  ["read longer than 32 MiB", {
    type: NBD_CMD_READ,
    offsetBytes: 0,
    lengthBytes: 32 * MiB + 1,
  }, NBD_EINVAL],
  ["write past the end (its payload is still consumed)", {
    type: NBD_CMD_WRITE,
    offsetBytes: SIZE - 100,
    payload: new Uint8Array(200).fill(1),
  }, NBD_ENOSPC],
  ["trim past the end", {
    type: NBD_CMD_TRIM,
    offsetBytes: SIZE,
    lengthBytes: 4096,
  }, NBD_EINVAL],
  ["write-zeroes past the end", {
    type: NBD_CMD_WRITE_ZEROES,
    offsetBytes: SIZE - 1,
    lengthBytes: 2,
  }, NBD_ENOSPC],
  ["an unknown command", { type: 99, offsetBytes: 0, lengthBytes: 512 }, NBD_EINVAL],
  ["NBD_CMD_CACHE (not offered)", { type: NBD_CMD_CACHE, lengthBytes: 512 }, NBD_EINVAL],
  ["NBD_CMD_BLOCK_STATUS (no meta context)", {
    type: NBD_CMD_BLOCK_STATUS,
    lengthBytes: 512,
  }, NBD_EINVAL],
  ["a read with the DF flag (not offered)", {
    type: NBD_CMD_READ,
    flags: NBD_CMD_FLAG_DF,
    lengthBytes: 512,
  }, NBD_EINVAL],
  ["a write with the NO_HOLE flag", {
    type: NBD_CMD_WRITE,
    flags: NBD_CMD_FLAG_NO_HOLE,
    payload: new Uint8Array(512),
  }, NBD_EINVAL],
  ["write-zeroes with FAST_ZERO (not offered)", {
    type: NBD_CMD_WRITE_ZEROES,
    flags: NBD_CMD_FLAG_FAST_ZERO,
    lengthBytes: 512,
  }, NBD_EINVAL],
  ["an unknown flag bit", { type: NBD_CMD_READ, flags: 0x8000, lengthBytes: 512 }, NBD_EINVAL],
];

for (const [name, request, errno] of errorReplies) {
  Deno.test(`nbd malformed: ${name} gets error ${errno}, the connection goes on`, async () => {
    await withServer(async (nbd, healthy) => {
      using raw = await RawNbd.open(nbd, "vol");
      await raw.send({ ...request, handle: 1234 });
      assert.deepEqual(await raw.reply(), { error: errno, handle: 1234 });
      await assertStillServing(raw);
      raw.close();
      await assertOtherConnectionWorks(healthy);
      const last = new Uint8Array(4096);
      await nbd.device("vol").readAt(SIZE - 4096, last);
      assert.ok(last.every((b) => b === 0x5a), "nothing was written by the bad request");
    });
  });
}

const disconnects: [string, () => Uint8Array][] = [
  ["a request with a bad magic", () => {
    const bytes = requestBytes({ type: NBD_CMD_READ, lengthBytes: 512 });
    bytes[3] = 0x14;
    return bytes;
  }],
  ["a write longer than 32 MiB", () => {
    return requestBytes({ type: NBD_CMD_WRITE, lengthBytes: 32 * MiB + 1 });
  }],
  ["garbage after a valid request", () => {
    const valid = requestBytes({ type: NBD_CMD_READ, handle: 9, lengthBytes: 16 });
    const bytes = new Uint8Array(valid.length + 64);
    bytes.set(valid);
    bytes.fill(0xab, valid.length);
    return bytes;
  }],
];

for (const [name, bytes] of disconnects) {
  Deno.test(`nbd malformed: ${name} closes only that connection`, async () => {
    await withServer(async (nbd, healthy) => {
      using raw = await RawNbd.open(nbd, "vol");
      await raw.write(bytes());
      if (name.startsWith("garbage")) {
        // The valid request before the garbage is still answered.
        assert.deepEqual(await raw.reply(), { error: 0, handle: 9 });
        await raw.data(16);
      }
      assert.ok(await raw.closedByServer(), "the server closed the connection");
      raw.close();
      await assertOtherConnectionWorks(healthy);
      assert.ok(nbd.server.stats.protocolErrors >= 1);
    });
  });
}

Deno.test("nbd malformed: zero-length requests succeed", async () => {
  await withServer(async (nbd) => {
    using raw = await RawNbd.open(nbd, "vol");
    for (const type of [NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES]) {
      await raw.send({ type, handle: type + 1, offsetBytes: SIZE, lengthBytes: 0 });
      assert.deepEqual(await raw.reply(), { error: 0, handle: type + 1 });
    }
    raw.close();
  });
});

Deno.test("nbd malformed: requests split into single bytes are reassembled", async () => {
  await withServer(async (nbd) => {
    using raw = await RawNbd.open(nbd, "vol");
    const payload = new Uint8Array(1000).map((_, i) => i & 0xff);
    const bytes = new Uint8Array([
      ...requestBytes({ type: NBD_CMD_WRITE, handle: 1, offsetBytes: 4097, payload }),
      ...requestBytes({ type: NBD_CMD_READ, handle: 2, offsetBytes: 4097, lengthBytes: 1000 }),
    ]);
    for (let i = 0; i < bytes.length; i++) await raw.write(bytes.subarray(i, i + 1));
    assert.deepEqual(await raw.reply(), { error: 0, handle: 1 });
    assert.deepEqual(await raw.reply(), { error: 0, handle: 2 });
    assertBytes(await raw.data(1000), payload);
    raw.close();
  });
});
