import assert from "node:assert/strict";
import { acceptEach, tcpNetwork } from "./network.ts";

Deno.test("accept: failures that leave the listener open are retried; closing ends it", async () => {
  const outcomes: (number | Error)[] = [
    1,
    new Error("Too many open files (os error 24)"),
    new Error("Too many open files (os error 24)"),
    new Deno.errors.ConnectionReset("reset before it was taken"),
    2,
  ];
  let calls = 0;
  let closed = false;
  const accept = () => {
    calls++;
    const next = outcomes.shift();
    if (next === undefined) {
      closed = true;
      return Promise.reject(new Deno.errors.BadResource("listener closed"));
    }
    return next instanceof Error ? Promise.reject(next) : Promise.resolve(next);
  };
  const seen: number[] = [];
  for await (const conn of acceptEach(accept, () => closed, (n) => n * 10, 1)) seen.push(conn);
  assert.deepEqual(seen, [10, 20], "both connections, across three failed accepts");
  assert.equal(calls, 6);
  assert.ok(closed);
});

Deno.test("accept: a failure after close ends accepting at once", async () => {
  let closed = false;
  const accept = () => {
    closed = true;
    return Promise.reject(new Error("Too many open files (os error 24)"));
  };
  const seen: number[] = [];
  for await (const conn of acceptEach(accept, () => closed, (n: number) => n, 60_000)) {
    seen.push(conn);
  }
  assert.deepEqual(seen, []);
});

Deno.test("tcp network: a listener accepts, and closing it ends its iteration", async () => {
  const listener = tcpNetwork.listen("127.0.0.1", 0);
  const accepted = (async () => {
    const streams = [];
    for await (const stream of listener) {
      streams.push(stream);
      listener.close();
    }
    return streams;
  })();
  const client = await tcpNetwork.connect("127.0.0.1", listener.port, 2_000);
  const streams = await accepted;
  assert.equal(streams.length, 1);
  streams[0]!.close();
  client.close();
});
