/**
 * Malformed input against a real `torus serve` (its volumes on a FileBlockStore; the in-process
 * server is covered request by request in tests/block/nbd_malformed_test.ts and
 * nbd_handshake_test.ts): garbage in the handshake, a bad request magic, ranges past the end,
 * lengths over 32 MiB, unknown commands, writes to a read-only snapshot, a client that leaves in
 * the middle of a write's payload. Each gets an error reply (and its connection goes on) or a clean
 * disconnect of that connection only. Meanwhile another connection keeps writing and flushing;
 * afterwards serve stops cleanly on SIGTERM and, restarted, holds exactly what that connection
 * wrote: no bad request changed a byte.
 */

import assert from "node:assert/strict";
import { connStream, NbdNegotiation } from "../../src/block/mod.ts";
import { type NbdClient } from "../../src/block/mod.ts";
import {
  encodeClientFlags,
  encodeOption,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_GREETING_BYTES,
  NBD_OPT_GO,
} from "../../src/block/nbd/protocol.ts";
import { RawNbd, type RawRequest, requestBytes } from "../support/nbd_fixture.ts";
import {
  assertEqualBytes,
  closeQuietly,
  E2eNode,
  e2eTest,
  MiB,
  readAll,
  SECTOR,
} from "./e2e_support.ts";

const SIZE = 8 * MiB;
/** The largest request the issue (and the NBD spec's advice) accepts. */
const LENGTH_MAX_BYTES = 32 * MiB;

/** A raw TCP connection to serve, not yet negotiated. */
async function rawConnection(node: E2eNode): Promise<RawNbd> {
  const conn = await Deno.connect(node.serve.nbd);
  conn.setNoDelay(true);
  return new RawNbd(conn);
}

/** A raw connection that has done NBD_OPT_GO on `exportName`. */
async function rawExport(node: E2eNode, exportName: string): Promise<RawNbd> {
  const conn = await Deno.connect(node.serve.nbd);
  conn.setNoDelay(true);
  const negotiation = await NbdNegotiation.start(connStream(conn));
  await negotiation.go(exportName);
  return new RawNbd(conn, negotiation.reader);
}

/** The connection a well-behaved client keeps using while the others misbehave. */
class HealthyWriter {
  readonly model = new Uint8Array(SIZE);
  readonly #client: NbdClient;
  #next = 0;

  constructor(client: NbdClient) {
    this.#client = client;
  }

  /** Writes one more sector (never the last one, where the bad writes aim), flushes, reads it. */
  async step(): Promise<void> {
    const offset = (this.#next++ % (SIZE / SECTOR - 2)) * SECTOR;
    const data = crypto.getRandomValues(new Uint8Array(SECTOR));
    this.model.set(data, offset);
    await this.#client.writeAt(offset, data);
    await this.#client.flush();
    const back = new Uint8Array(SECTOR);
    await this.#client.readAt(offset, back);
    assertEqualBytes(back, data, `healthy connection, sector at ${offset}`);
  }
}

/** Bad requests in transmission that get an error reply; the connection goes on. */
const errorReplies: [string, string, RawRequest, number][] = [
  ["read at an offset past the end", "v", {
    type: NBD_CMD_READ,
    offsetBytes: SIZE,
    lengthBytes: 512,
  }, NBD_EINVAL],
  ["read running past the end", "v", {
    type: NBD_CMD_READ,
    offsetBytes: SIZE - 512,
    lengthBytes: 1024,
  }, NBD_EINVAL],
  ["read over 32 MiB", "v", {
    type: NBD_CMD_READ,
    lengthBytes: LENGTH_MAX_BYTES + 1,
  }, NBD_EINVAL],
  ["write running past the end (its payload is consumed)", "v", {
    type: NBD_CMD_WRITE,
    offsetBytes: SIZE - 100,
    payload: new Uint8Array(200).fill(0xee),
  }, NBD_ENOSPC],
  ["write-zeroes past the end", "v", {
    type: NBD_CMD_WRITE_ZEROES,
    offsetBytes: SIZE - SECTOR,
    lengthBytes: 2 * SECTOR,
  }, NBD_ENOSPC],
  ["trim at an offset past the end", "v", {
    type: NBD_CMD_TRIM,
    offsetBytes: SIZE + SECTOR,
    lengthBytes: SECTOR,
  }, NBD_EINVAL],
  ["an unknown command", "v", { type: 99, lengthBytes: 512 }, NBD_EINVAL],
  ["a flush with an unknown flag", "v", { type: NBD_CMD_FLUSH, flags: 0x40 }, NBD_EINVAL],
  ["a write to a read-only snapshot", "v@s", {
    type: NBD_CMD_WRITE,
    offsetBytes: 0,
    payload: new Uint8Array(SECTOR).fill(0xee),
  }, NBD_EPERM],
  ["a trim of a read-only snapshot", "v@s", {
    type: NBD_CMD_TRIM,
    lengthBytes: SECTOR,
  }, NBD_EPERM],
];

/** Bytes in transmission after which the server must close that connection. */
const disconnects: [string, () => Uint8Array][] = [
  ["a request with a bad magic", () => {
    const bytes = requestBytes({ type: NBD_CMD_WRITE, payload: new Uint8Array(512).fill(0xee) });
    bytes[0] = 0x26;
    return bytes;
  }],
  ["a write over 32 MiB", () => {
    return requestBytes({ type: NBD_CMD_WRITE, lengthBytes: LENGTH_MAX_BYTES + 1 });
  }],
  ["random bytes", () => crypto.getRandomValues(new Uint8Array(4096))],
];

/** Garbage during the handshake (after the greeting), which must close that connection. */
const handshakeGarbage: [string, () => Uint8Array][] = [
  ["unknown client flags", () => encodeClientFlags(0xf0)],
  ["random bytes", () => crypto.getRandomValues(new Uint8Array(300))],
  ["an option with a bad magic", () => {
    const option = encodeOption(NBD_OPT_GO, new Uint8Array(6));
    option[2] = 0x00;
    return new Uint8Array([...encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE), ...option]);
  }],
];

e2eTest(
  "malformed requests get an error reply or close only their own connection",
  {},
  async () => {
    await using node = await E2eNode.start();
    await node.createVolume("v", "8MiB");
    const healthyClient = await node.connect("v");
    const healthy = new HealthyWriter(healthyClient);
    try {
      // The last sector, which bad writes aim at, holds known bytes in the volume and snapshot.
      const last = new Uint8Array(SECTOR).fill(0x5a);
      healthy.model.set(last, SIZE - SECTOR);
      await healthyClient.writeAt(SIZE - SECTOR, last);
      await healthy.step();
      await node.ctl("block", "snapshot", "create", "v@s");

      for (const [name, exportName, request, errno] of errorReplies) {
        using raw = await rawExport(node, exportName);
        await raw.send({ ...request, handle: 4321 });
        assert.deepEqual(await raw.reply(), { error: errno, handle: 4321 }, name);
        // The same connection still answers.
        await raw.send({
          type: NBD_CMD_READ,
          handle: 8,
          offsetBytes: SIZE - SECTOR,
          lengthBytes: 8,
        });
        assert.deepEqual(await raw.reply(), { error: 0, handle: 8 }, `${name}: then a read`);
        assert.deepEqual(await raw.data(8), last.subarray(0, 8), `${name}: nothing was written`);
        await healthy.step();
      }
      for (const [name, bytes] of disconnects) {
        using raw = await rawExport(node, "v");
        await raw.write(bytes());
        assert.ok(await raw.closedByServer(), `${name}: the server closed the connection`);
        await healthy.step();
      }
      for (const [name, bytes] of handshakeGarbage) {
        using raw = await rawConnection(node);
        await raw.reader.readExact(NBD_GREETING_BYTES);
        await raw.write(bytes());
        assert.ok(
          await raw.closedByServer(),
          `handshake ${name}: the server closed the connection`,
        );
        await healthy.step();
      }
      await leaveInTheMiddle(node, healthy);
    } finally {
      await closeQuietly(healthyClient);
    }
    assert.doesNotMatch(node.output(), /Uncaught|panic|unhandled/i);
    await node.restart("SIGTERM");
    const reader = await node.connect("v");
    try {
      assertEqualBytes(await readAll(reader), healthy.model, "the volume after a restart");
    } finally {
      await closeQuietly(reader);
    }
  },
);

/**
 * Clients that vanish: half a greeting answer, an option claiming 4 GiB of data (which serve skips
 * within the handshake deadline, without buffering it), half a request header, half a write's
 * payload. The healthy connection works after each.
 */
async function leaveInTheMiddle(node: E2eNode, healthy: HealthyWriter): Promise<void> {
  {
    using raw = await rawConnection(node);
    await raw.reader.readExact(NBD_GREETING_BYTES);
    await raw.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE).subarray(0, 2));
  }
  await healthy.step();
  {
    using raw = await rawConnection(node);
    await raw.reader.readExact(NBD_GREETING_BYTES);
    const option = encodeOption(NBD_OPT_GO, new Uint8Array(0));
    new DataView(option.buffer).setUint32(12, 0xffffffff);
    await raw.write(new Uint8Array([...encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE), ...option]));
    await raw.write(crypto.getRandomValues(new Uint8Array(65536)));
    await healthy.step();
  }
  await healthy.step();
  {
    using raw = await rawExport(node, "v");
    await raw.write(requestBytes({ type: NBD_CMD_READ, lengthBytes: 512 }).subarray(0, 13));
  }
  await healthy.step();
  {
    // Half of a write's payload, then gone: that write must never land.
    using raw = await rawExport(node, "v");
    const request = requestBytes({
      type: NBD_CMD_WRITE,
      offsetBytes: SIZE - SECTOR,
      payload: new Uint8Array(SECTOR).fill(0xee),
    });
    await raw.write(request.subarray(0, request.length - 1000));
  }
  await healthy.step();
}
