/**
 * Our NBD client: the Device contract suite run through client → our server → MemoryDevice, and
 * through the client against third-party servers (nbdkit memory/file and qemu-nbd on a file,
 * over Unix sockets), including a server that only does the old NBD_OPT_EXPORT_NAME; LIST,
 * INFO and errors.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../src/core/mod.ts";
import { connStream } from "../../src/block/nbd/stream.ts";
import { silentListener, withinMs } from "../support/deadlines.ts";
import { type Device, MemoryDevice, NbdClient, NbdNegotiation } from "../../src/block/mod.ts";
import {
  assertBytes,
  deviceContract,
  type DeviceContractFactory,
  patternBytes,
  rejectsWithCode,
} from "../../src/block/device_contract.ts";
import { nbdHandshake } from "../../src/block/nbd/client_handshake.ts";
import { NBD_FLAG_CAN_MULTI_CONN } from "../../src/block/nbd/protocol.ts";
import { hasCommand } from "../support/packages.ts";
import { NbdFixture, sameBytes } from "../support/nbd_fixture.ts";

const MiB = 1024 * 1024;

deviceContract("NbdClient over NbdServer", {
  writable: async (sizeBytes) => {
    const nbd = await NbdFixture.start({ exports: { vol: sizeBytes } });
    return {
      device: await nbd.client("vol"),
      reopen: () => nbd.client("vol"),
      cleanup: () => nbd[Symbol.asyncDispose](),
    };
  },
  readOnly: async (contents) => {
    const nbd = await NbdFixture.start();
    const source = new MemoryDevice({ sizeBytes: contents.length });
    await source.writeAt(0, contents);
    nbd.addExport("vol@snap", source.snapshot());
    return { device: await nbd.client("vol@snap"), cleanup: () => nbd[Symbol.asyncDispose]() };
  },
  // Through NBD_CMD_BLOCK_STATUS: the client reports what the memory device knows.
  knowsZeros: true,
});

Deno.test("nbd client: LIST, INFO and a handshake for kernel attach", async () => {
  await using nbd = await NbdFixture.start({ exports: { a: MiB, b: 2 * MiB } });
  const negotiation = await NbdNegotiation.start(await nbd.connect());
  assert.deepEqual((await negotiation.list()).map((e) => e.name).sort(), ["a", "b"]);
  const info = await negotiation.info("b");
  assert.equal(info.sizeBytes, 2 * MiB);
  await negotiation.abort();
  const conn = await nbd.connect();
  const attached = await nbdHandshake(conn, "a");
  assert.equal(attached.sizeBytes, MiB);
  assert.ok((attached.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN) !== 0);
  conn.close();
});

Deno.test("nbd client: discard sends NBD_CMD_TRIM and the server frees the space", async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: MiB } });
  const client = await nbd.client("vol");
  await client.writeAt(0, patternBytes(65536, 1));
  const memory = nbd.device("vol") as MemoryDevice;
  assert.equal(memory.allocatedBytes, 65536);
  await client.discard(0, 32768);
  assert.equal(memory.allocatedBytes, 32768);
  await client.trim(32768, 4096);
  assert.equal(memory.allocatedBytes, 28672);
  const back = new Uint8Array(4096);
  await client.readAt(32768, back);
  assert.ok(back.every((b) => b === 0), "trim reads as zeros");
  await client.close();
});

Deno.test("nbd client: refusals become TorusErrors with the server's message", async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: MiB } });
  await assert.rejects(nbd.client("missing"), (error: Error) => {
    assert.match(error.message, /no export named "missing"/);
    return true;
  });
  const client = await nbd.client("vol");
  await rejectsWithCode(client.readAt(MiB - 1, new Uint8Array(2)), ErrorCode.Invalid);
  await client.close();
});

Deno.test("nbd client: a lost connection fails calls in flight with unavailable", async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: MiB } });
  const client = await nbd.client("vol");
  await nbd.server.close();
  await rejectsWithCode(client.readAt(0, new Uint8Array(512)), ErrorCode.Unavailable);
  await client.close();
});

Deno.test("nbd client: a server that never greets fails the handshake at its deadline", async () => {
  await using silent = silentListener();
  const handshake = { timeoutMs: 200 };
  const connect = async () =>
    connStream(await Deno.connect({ hostname: "127.0.0.1", port: silent.port }));
  const hung = () => "the handshake did not end";
  const started = Date.now();
  await assert.rejects(
    withinMs(NbdClient.connect(await connect(), { exportName: "vol", handshake }), 5_000, hung),
    (error: Error) => {
      assert.ok(isTorusError(error, ErrorCode.Unavailable), String(error));
      assert.match(error.message, /did not finish the NBD handshake within 0\.2 s/);
      return true;
    },
  );
  await assert.rejects(
    withinMs(nbdHandshake(await connect(), "vol", handshake), 5_000, hung),
    /did not finish the NBD handshake/,
  );
  assert.ok(Date.now() - started < 5_000);
});

// ---------------------------------------------------------------------------------------------
// Third-party servers.

interface External {
  socket: string;
  exportName: string;
  stop(): Promise<void>;
}

async function startExternal(
  command: string,
  args: (socket: string) => string[],
): Promise<External> {
  const dir = await Deno.makeTempDir({ prefix: "torus-nbd-client-" });
  const socket = `${dir}/nbd.sock`;
  const child = new Deno.Command(command, { args: args(socket), stdout: "null", stderr: "piped" })
    .spawn();
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // Already exited.
    }
    // nbdkit waits for its clients on SIGTERM: a test that failed with a client still connected
    // must not hang here.
    const killer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited meanwhile.
      }
    }, 10_000);
    await child.status;
    clearTimeout(killer);
    await child.stderr.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  // Wait until it accepts connections (the bound only turns a hang into a failure).
  for (let attempt = 0;; attempt++) {
    try {
      (await Deno.connect({ transport: "unix", path: socket })).close();
      break;
    } catch (error) {
      if (attempt > 3000) {
        await stop();
        throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
  return { socket, exportName: "", stop };
}

async function connectExternal(server: External): Promise<NbdClient> {
  const conn = await Deno.connect({ transport: "unix", path: server.socket });
  return await NbdClient.connect(conn, { exportName: server.exportName });
}

/** The contract suite against a third-party server; each device is a fresh server process. */
function externalContract(
  name: string,
  tool: string,
  startWritable: (sizeBytes: number) => Promise<External>,
  startReadOnly: (file: string) => Promise<External>,
  knowsZeros = false,
): void {
  if (!hasCommand(tool)) {
    Deno.test({ name: `${name} [skipped: ${tool} not installed]`, ignore: true, fn() {} });
    return;
  }
  const wrap = async (server: External) => {
    const device: Device = await connectExternal(server);
    return { device, reopen: () => connectExternal(server), cleanup: () => server.stop() };
  };
  const factory: DeviceContractFactory = {
    knowsZeros,
    writable: async (sizeBytes) => wrap(await startWritable(sizeBytes)),
    readOnly: async (contents) => {
      const file = await Deno.makeTempFile({ prefix: "torus-nbd-ro-" });
      await Deno.writeFile(file, contents);
      const server = await startReadOnly(file);
      const fixture = await wrap(server);
      return {
        ...fixture,
        cleanup: async () => {
          await server.stop();
          await Deno.remove(file);
        },
      };
    },
  };
  deviceContract(name, factory);
}

externalContract(
  "NbdClient against nbdkit memory",
  "nbdkit",
  (size) =>
    startExternal("nbdkit", (s) => ["-f", "--exit-with-parent", "-U", s, "memory", `${size}`]),
  (file) =>
    startExternal("nbdkit", (s) => ["-f", "--exit-with-parent", "-r", "-U", s, "file", file]),
  // nbdkit's sparse memory answers NBD_CMD_BLOCK_STATUS: our client's side of it, interop.
  true,
);

externalContract(
  "NbdClient against nbdkit without fixed newstyle (NBD_OPT_EXPORT_NAME)",
  "nbdkit",
  (size) =>
    startExternal("nbdkit", (s) => [
      "-f",
      "--exit-with-parent",
      "--mask-handshake=0",
      "-U",
      s,
      "memory",
      `${size}`,
    ]),
  (file) =>
    startExternal("nbdkit", (s) => [
      "-f",
      "--exit-with-parent",
      "--mask-handshake=0",
      "-r",
      "-U",
      s,
      "file",
      file,
    ]),
);

externalContract(
  "NbdClient against qemu-nbd on a file",
  "qemu-nbd",
  async (size) => {
    const file = await Deno.makeTempFile({ prefix: "torus-qemu-nbd-" });
    await Deno.truncate(file, size);
    const server = await startExternal("qemu-nbd", (s) => ["-f", "raw", "-t", "-k", s, file]);
    return { ...server, stop: () => server.stop().then(() => Deno.remove(file)) };
  },
  (file) => startExternal("qemu-nbd", (s) => ["-f", "raw", "-t", "-r", "-k", s, file]),
);

Deno.test({
  name: hasCommand("nbdkit")
    ? "nbd client: many requests in flight against nbdkit"
    : "nbd client: many requests in flight against nbdkit [skipped: nbdkit not installed]",
  ignore: !hasCommand("nbdkit"),
  fn: async () => {
    const server = await startExternal(
      "nbdkit",
      (s) => ["-f", "--exit-with-parent", "-U", s, "memory", `${64 * MiB}`],
    );
    const client = await connectExternal(server);
    try {
      const writes = Array.from(
        { length: 256 },
        (_, i) => client.writeAt(i * 65536 + 3, patternBytes(60_000, i)),
      );
      await Promise.all(writes);
      await client.flush();
      await Promise.all(Array.from({ length: 256 }, async (_, i) => {
        const back = new Uint8Array(60_000);
        await client.readAt(i * 65536 + 3, back);
        assertBytes(back, patternBytes(60_000, i));
      }));
      const big = patternBytes(40 * MiB, 9);
      await client.writeAt(MiB, big);
      const back = new Uint8Array(40 * MiB);
      await client.readAt(MiB, back);
      assert.ok(sameBytes(back, big), "a request over 32 MiB is split");
    } finally {
      await client.close().catch(() => {});
      await server.stop();
    }
  },
});

Deno.test({
  name: hasCommand("nbdkit")
    ? "nbd client: keeps to a server's minimum block size"
    : "nbd client: keeps to a server's minimum block size [skipped: nbdkit not installed]",
  ignore: !hasCommand("nbdkit"),
  fn: async () => {
    const server = await startExternal("nbdkit", (s) => [
      "-f",
      "--exit-with-parent",
      "--filter=blocksize-policy",
      "-U",
      s,
      "memory",
      `${MiB}`,
      "blocksize-minimum=512",
      // nbdkit would let unaligned requests through: only our client refuses them.
      "blocksize-error-policy=allow",
    ]);
    const client = await connectExternal(server);
    try {
      assert.equal(client.info.blockSize?.minimumBytes, 512);
      await rejectsWithCode(client.writeAt(1, new Uint8Array(512)), ErrorCode.Invalid);
      await rejectsWithCode(client.readAt(0, new Uint8Array(100)), ErrorCode.Invalid);
      await client.writeAt(512, patternBytes(1024, 1));
      const back = new Uint8Array(1024);
      await client.readAt(512, back);
      assertBytes(back, patternBytes(1024, 1));
    } finally {
      await client.close().catch(() => {});
      await server.stop();
    }
  },
});
