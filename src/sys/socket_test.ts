/** TCP sockets through libc: connect, stream bytes both ways, deadlines, close while waiting. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { close } from "./libc.ts";
import { connectTcp, resolveTcp } from "./socket.ts";

function listen(): { listener: Deno.TcpListener; port: number } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return { listener, port: (listener.addr as Deno.NetAddr).port };
}

async function readAll(socket: { read(into: Uint8Array): Promise<number | null> }, n: number) {
  const out = new Uint8Array(n);
  let done = 0;
  while (done < n) {
    const got = await socket.read(out.subarray(done));
    if (got === null) throw new Error(`EOF after ${done} bytes`);
    done += got;
  }
  return out;
}

Deno.test("socket: resolves names and literals through getaddrinfo", async () => {
  const v4 = await resolveTcp("127.0.0.1", 10809);
  assert.equal(v4.length, 1);
  assert.equal(v4[0]!.text, "127.0.0.1");
  // sockaddr_in: family 2, port big-endian at offset 2.
  assert.deepEqual([...v4[0]!.sockaddr.subarray(0, 4)], [2, 0, 0x2a, 0x39]);
  const local = await resolveTcp("localhost", 1);
  assert.ok(local.some((a) => a.text === "127.0.0.1" || a.text === "0:0:0:0:0:0:0:1"));
});

Deno.test("socket: moves megabytes both ways through a Deno peer and sees its close", async () => {
  const { listener, port } = listen();
  const payload = new Uint8Array(4 * 1024 * 1024).map((_, i) => (i * 31) & 0xff);
  const peer = (async () => {
    const conn = await listener.accept();
    const got = await readAll(conn, payload.length);
    // Echo slowly in pieces, so the client's reads wait for readiness many times.
    for (let at = 0; at < got.length; at += 1 << 20) {
      await conn.write(got.subarray(at, at + (1 << 20)));
      await new Promise((r) => setTimeout(r, 5));
    }
    conn.close();
  })();
  const socket = await connectTcp("127.0.0.1", port, { ioTimeoutMs: 10_000 });
  try {
    // A 4 MiB write does not fit the socket buffers: write() returns short counts and waits.
    let written = 0;
    while (written < payload.length) written += await socket.write(payload.subarray(written));
    assert.deepEqual(await readAll(socket, payload.length), payload);
    assert.equal(await socket.read(new Uint8Array(16)), null);
    await peer;
  } finally {
    socket.close();
    listener.close();
  }
});

Deno.test("socket: a refused connection names the address and errno", async () => {
  const { listener, port } = listen();
  listener.close();
  await assert.rejects(
    () => connectTcp("127.0.0.1", port, { ioTimeoutMs: 5_000 }),
    (error) =>
      isTorusError(error, ErrorCode.Unavailable) &&
      /cannot connect to 127\.0\.0\.1 port \d+: .*ECONNREFUSED/.test(error.message),
  );
});

Deno.test("socket: a silent peer fails a read after the I/O timeout", async () => {
  const { listener, port } = listen();
  const accepted = listener.accept();
  const socket = await connectTcp("127.0.0.1", port, { ioTimeoutMs: 200 });
  try {
    await assert.rejects(
      () => socket.read(new Uint8Array(8)),
      (error) => isTorusError(error, ErrorCode.Unavailable) && /within 200 ms/.test(error.message),
    );
  } finally {
    socket.close();
    (await accepted).close();
    listener.close();
  }
});

Deno.test("socket: close() wakes a read that waits without a deadline", async () => {
  const { listener, port } = listen();
  const accepted = listener.accept();
  const socket = await connectTcp("127.0.0.1", port, { ioTimeoutMs: 0 });
  const pending = socket.read(new Uint8Array(8));
  await new Promise((r) => setTimeout(r, 50));
  socket.close();
  await assert.rejects(pending, (error) => isTorusError(error, ErrorCode.Closed));
  (await accepted).close();
  listener.close();
});

Deno.test("socket: release() hands over a blocking descriptor and stops using it", async () => {
  const { listener, port } = listen();
  const accepted = listener.accept();
  const socket = await connectTcp("127.0.0.1", port, { ioTimeoutMs: 1_000 });
  const fd = socket.release();
  assert.ok(fd > 2);
  await assert.rejects(() => socket.read(new Uint8Array(1)), /closed/);
  socket.close(); // a no-op after release: the new owner closes the descriptor
  // /proc/self/fdinfo shows the open file's flags in octal: O_NONBLOCK (04000) is cleared.
  const info = await Deno.readTextFile(`/proc/self/fdinfo/${fd}`);
  const flags = parseInt(/^flags:\s*([0-7]+)/m.exec(info)![1]!, 8);
  assert.equal(flags & 0o4000, 0);
  close(fd);
  (await accepted).close();
  listener.close();
});
