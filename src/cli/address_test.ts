import assert from "node:assert/strict";
import { formatHostPort, parseHost, parseHostPort, parsePort } from "./address.ts";

Deno.test("addresses: HOST:PORT, [IPV6]:PORT and a bare PORT", () => {
  assert.deepEqual(parseHostPort("10809", "--nbd"), { hostname: "127.0.0.1", port: 10809 });
  assert.deepEqual(parseHostPort("0.0.0.0:1", "--nbd"), { hostname: "0.0.0.0", port: 1 });
  assert.deepEqual(parseHostPort("node-1.example:65535", "--nbd"), {
    hostname: "node-1.example",
    port: 65535,
  });
  assert.deepEqual(parseHostPort("[::1]:10809", "--nbd"), { hostname: "::1", port: 10809 });
  assert.equal(formatHostPort({ hostname: "::1", port: 7 }), "[::1]:7");
  assert.equal(formatHostPort({ hostname: "127.0.0.1", port: 7 }), "127.0.0.1:7");
});

Deno.test("addresses: garbage is a usage error naming the flag", () => {
  for (
    const bad of ["", ":", "host:", "host:0", "host:65536", "::1:80", "a b:1", "x:1e3", "h:-1"]
  ) {
    assert.throws(() => parseHostPort(bad, "--nbd"), /invalid --nbd/, bad);
  }
  assert.throws(
    () => parseHostPort("h:\x1b[2J", "--nbd"),
    (e: Error) => !e.message.includes("\x1b"),
  );
});

Deno.test("addresses: port 0 (any free port) only where this process listens", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:0", "--nbd", { listen: true }), {
    hostname: "127.0.0.1",
    port: 0,
  });
  assert.throws(() => parseHostPort("127.0.0.1:0", "--nbd"), /the port must be 1\.\.65535/);
  assert.throws(() => parseHostPort("h:65536", "--nbd", { listen: true }), /0\.\.65535/);
});

Deno.test("addresses: --host and --port as separate flags", () => {
  for (const good of ["127.0.0.1", "0.0.0.0", "localhost", "node-1.example"]) {
    assert.equal(parseHost(good, "--host"), good);
  }
  assert.equal(parseHost("::1", "--host"), "::1");
  assert.equal(parseHost("[::1]", "--host"), "::1");
  assert.equal(parseHost("[fe80::1:2]", "--host"), "fe80::1:2");
  for (const bad of ["", "a b", "host:80", ":", ":::::", "[host]", "[::1", "h\x1b[2J", "1::2::3"]) {
    assert.throws(
      () => parseHost(bad, "--host"),
      (e: Error) =>
        /^invalid --host ".*": not a host name/.test(e.message) && !e.message.includes("\x1b"),
      bad,
    );
  }
  assert.equal(parsePort("4321", "--port"), 4321);
  assert.equal(parsePort("0", "--port", { listen: true }), 0);
  assert.throws(() => parsePort("0", "--port"), /invalid --port "0": the port must be 1\.\.65535/);
  for (const bad of ["", "x", "-1", "65536", "1e3", "123456", " 80"]) {
    assert.throws(
      () => parsePort(bad, "--port", { listen: true }),
      /^UsageError|invalid --port/,
      bad,
    );
  }
});
