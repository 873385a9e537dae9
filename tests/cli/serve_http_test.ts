/**
 * `torus serve --host H --port P` as a real process: the HTTP status server's `/healthz`, `/status`
 * and `/metrics` follow what happens on the node (a volume created, opened and written over NBD),
 * every line of `/metrics` is valid exposition format, bad requests (unknown paths, other
 * methods, a huge header, garbage bytes, a client that never finishes its request) leave it
 * answering, and bad address flags are usage errors.
 */

import assert from "node:assert/strict";
import { parseExposition, sampleValue } from "../support/prometheus_text.ts";
import { ctlOk, type ServeProcess, startServe } from "../support/torus_process.ts";

const HTTP_ARGS = ["--host", "127.0.0.1", "--port", "0"];

function baseUrl(serve: ServeProcess): string {
  assert.ok(serve.http, `no HTTP line in serve's output: ${serve.output()}`);
  return `http://${serve.http.hostname}:${serve.http.port}`;
}

async function getJson(url: string) {
  const response = await fetch(url);
  assert.equal(response.status, 200, url);
  return await response.json();
}

async function getMetrics(base: string) {
  const response = await fetch(`${base}/metrics`);
  assert.equal(response.status, 200);
  return parseExposition(await response.text());
}

/** Polls `check` until it holds (the node reacts to a disconnect in its own time). */
async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

Deno.test("serve --host: /healthz, /status and /metrics follow a volume written over NBD", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-serve-http-" });
  const serve = await startServe(dataDir, { size: "64MiB", args: HTTP_ARGS });
  try {
    assert.match(
      serve.output(),
      /^ {2}HTTP: +http:\/\/127\.0\.0\.1:\d+ \(\/status, \/metrics, \/healthz\)$/m,
    );
    const base = baseUrl(serve);
    const uuid = (await Deno.readTextFile(`${dataDir}/metadata/uuid`)).trim();
    const health = await fetch(`${base}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(await health.text(), "ok\n");

    const before = await getJson(`${base}/status`);
    assert.equal(before.node.uuid, uuid);
    assert.equal(before.node.dataDir, dataDir);
    assert.equal(before.store.totalBlocks, 127);
    assert.equal(before.store.failed, false);
    assert.equal(before.metadata.kind, "embedded");
    assert.equal(before.metadata.usable, true);
    assert.equal(before.nbd.address, `${serve.nbd.hostname}:${serve.nbd.port}`);
    assert.equal(before.nbd.connections, 0);
    assert.deepEqual(before.nbd.openVolumes, []);
    assert.deepEqual(before.volumes, []);
    const metricsBefore = await getMetrics(base);
    const counter = (m: typeof metricsBefore, series: string) => sampleValue(m, series);

    await ctlOk(dataDir, ["volume", "create-block", "v1", "8MiB"]);
    const client = await serve.connect("v1");
    let writtenBytes = 0;
    try {
      const data = new Uint8Array(4096).fill(0xab);
      for (let i = 0; i < 16; i++) {
        await client.writeAt(i * 65536 + 512, data);
        writtenBytes += data.length;
      }
      await client.writeAt(1024 * 1024, new Uint8Array(65536).fill(7));
      writtenBytes += 65536;
      await client.flush();
      const back = new Uint8Array(4096);
      await client.readAt(512, back);
      assert.ok(back.every((b) => b === 0xab));

      const during = await getJson(`${base}/status`);
      assert.deepEqual(during.volumes, [{
        name: "v1",
        id: during.volumes[0].id,
        type: "block",
        sizeBytes: 8 * 1024 * 1024,
        cloneOf: null,
        lockHolder: uuid,
        open: true,
        locked: true,
      }]);
      assert.equal(during.nbd.connections, 1);
      assert.equal(during.nbd.connectionsAccepted, 1);
      assert.equal(during.nbd.openVolumes.length, 1);
      const open = during.nbd.openVolumes[0];
      assert.equal(open.name, "v1");
      assert.equal(open.handles, 1);
      assert.equal(open.state, "open");
      assert.equal(open.failure, null);
      assert.equal(open.writtenBytes, writtenBytes);
      assert.match(open.fencingToken, /^\d+$/);
      assert.ok(during.store.usedBlocks > 0, JSON.stringify(during.store));
      assert.ok(during.node.uptimeSeconds >= before.node.uptimeSeconds);

      const after = await getMetrics(base);
      assert.equal(counter(after, 'torus_nbd_requests_total{command="write"}'), 17);
      assert.ok(counter(after, 'torus_nbd_requests_total{command="flush"}') >= 1);
      assert.ok(counter(after, 'torus_nbd_requests_total{command="read"}') >= 1);
      assert.equal(counter(after, "torus_nbd_written_bytes_total"), writtenBytes);
      assert.ok(counter(after, "torus_nbd_read_bytes_total") >= 4096);
      assert.equal(counter(after, "torus_nbd_connections"), 1);
      assert.equal(counter(after, 'torus_server_open_files{volume="v1"}'), 1);
      assert.equal(counter(after, 'torus_server_file_written_bytes{volume="v1"}'), writtenBytes);
      for (
        const grown of [
          'torus_storage_written_blocks{storage="current"}',
          'torus_storage_written_bytes_total{storage="current"}',
          'torus_storage_flushes{storage="current"}',
          'torus_storage_blocks{storage="current"}',
        ]
      ) {
        assert.ok(counter(after, grown) > counter(metricsBefore, grown), grown);
      }
      assert.ok(
        counter(after, 'torus_storage_read_blocks{storage="current"}') >=
          counter(metricsBefore, 'torus_storage_read_blocks{storage="current"}'),
      );
      assert.equal(counter(after, 'torus_storage_failed_blocks{storage="current"}'), 0);
      assert.equal(counter(after, 'torus_storage_block_bytes{storage="current"}'), 512 * 1024);
      assert.equal(counter(after, 'torus_storage_blocks_total{storage="current"}'), 127);
    } finally {
      await client.close();
    }

    // The last connection gone, the volume closes (flush, unlock) and leaves the reports.
    await eventually("the volume closes after its NBD client left", async () => {
      const status = await getJson(`${base}/status`);
      return status.nbd.openVolumes.length === 0 && status.volumes[0].locked === false;
    });
    const closed = await getMetrics(base);
    assert.equal(closed.get("torus_server_open_files")?.samples.size, 0);
    assert.equal(counter(closed, "torus_nbd_connections"), 0);
    assert.equal(counter(closed, 'torus_nbd_requests_total{command="disc"}'), 1);
    assert.equal(await serve.stop(), 0);
  } finally {
    await serve.kill();
    await Deno.remove(dataDir, { recursive: true });
  }
});

/** Sends `bytes` on a fresh TCP connection and returns what comes back until the server closes. */
async function rawExchange(
  address: { hostname: string; port: number },
  bytes: Uint8Array,
): Promise<string> {
  const conn = await Deno.connect(address);
  try {
    // The server may answer and close before it has read everything we send.
    const sent = (async () => {
      for (let at = 0; at < bytes.length; at += 65536) {
        await conn.write(bytes.subarray(at, at + 65536));
      }
    })().catch(() => {});
    const chunks: string[] = [];
    const buffer = new Uint8Array(65536);
    const decoder = new TextDecoder();
    for (;;) {
      const n = await conn.read(buffer).catch(() => null);
      if (n === null) break;
      chunks.push(decoder.decode(buffer.subarray(0, n), { stream: true }));
    }
    await sent;
    return chunks.join("");
  } finally {
    try {
      conn.close();
    } catch {
      // Closed by the server.
    }
  }
}

Deno.test("serve --host: bad requests get an error answer and the server keeps answering", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-serve-http-" });
  const serve = await startServe(dataDir, { size: "16MiB", args: HTTP_ARGS });
  try {
    const base = baseUrl(serve);
    const address = serve.http!;
    const notFound = await fetch(`${base}/debug/pprof/`);
    assert.equal(notFound.status, 404);
    await notFound.body?.cancel();
    const post = await fetch(`${base}/status`, { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    await post.body?.cancel();

    // A header of 4 MiB: refused by the HTTP layer (400 or 431), the connection ends.
    const huge = new TextEncoder().encode(
      `GET /status HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(4 * 1024 * 1024)}\r\n\r\n`,
    );
    const hugeAnswer = await rawExchange(address, huge);
    assert.match(hugeAnswer, /^HTTP\/1\.1 4\d\d /, hugeAnswer.slice(0, 200));

    // Garbage bytes instead of a request.
    const garbage = new Uint8Array(8192);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 151 + 7) % 256;
    const garbageAnswer = await rawExchange(address, garbage);
    assert.match(garbageAnswer, /^HTTP\/1\.1 400 /, garbageAnswer.slice(0, 200));

    // A client that starts a request and never finishes it holds only its own connection.
    const stalled = await Deno.connect(address);
    await stalled.write(new TextEncoder().encode("GET /status HTTP/1.1\r\nHost: x\r\n"));

    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => fetch(`${base}/${["healthz", "metrics"][i % 2]}`)),
    );
    for (const answer of answers) {
      assert.equal(answer.status, 200);
      await answer.body?.cancel();
    }
    const health = await fetch(`${base}/healthz`);
    assert.equal(await health.text(), "ok\n");
    // NBD is untouched by all of it.
    await ctlOk(dataDir, ["volume", "create-block", "v1", "1MiB"]);
    const client = await serve.connect("v1");
    await client.writeAt(0, new Uint8Array(4096).fill(1));
    await client.close();

    // Stopping does not wait on the stalled client forever.
    assert.equal(await serve.stop(), 0);
    stalled.close();
  } finally {
    await serve.kill();
    await Deno.remove(dataDir, { recursive: true });
  }
});

/**
 * `torus serve ARGS` that should exit at once; killed after a minute if it serves instead (a
 * regression must fail the test, not hang it).
 */
async function serveBriefly(dataDir: string, args: string[]) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../../main.ts", import.meta.url).pathname,
      "serve",
      "--data-dir",
      dataDir,
      "--size",
      "16MiB",
      ...args,
    ],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdin: "null",
    signal: AbortSignal.timeout(60_000),
  }).output();
  const decoder = new TextDecoder();
  return { code: output.code, stderr: decoder.decode(output.stderr) };
}

Deno.test("serve --host/--port: bad values are usage errors; a port in use (HTTP or NBD) fails in one line", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-serve-http-" });
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const serveWith = (...args: string[]) => serveBriefly(dataDir, args);
    const [portOnly, emptyHost, spaceHost, colonHost, bigPort, wordPort, emptyPort] = await Promise
      .all([
        serveWith("--port", "4321"),
        serveWith("--host", ""),
        serveWith("--host", "a b"),
        serveWith("--host", "127.0.0.1:80"),
        serveWith("--host", "127.0.0.1", "--port", "65536"),
        serveWith("--host", "127.0.0.1", "--port", "http"),
        serveWith("--host", "127.0.0.1", "--port="),
      ]);
    const usage = (output: { code: number; stderr: string }, pattern: RegExp) => {
      assert.equal(output.code, 2, output.stderr);
      assert.match(output.stderr, pattern);
      assert.match(output.stderr, /Run 'torus serve --help' for usage\.\n$/);
    };
    usage(portOnly, /^torus serve: --port needs --host/);
    usage(emptyHost, /^torus serve: --host needs a value; it was given an empty one/);
    usage(spaceHost, /^torus serve: invalid --host "a b": not a host name or address/);
    usage(colonHost, /^torus serve: invalid --host "127\.0\.0\.1:80": not a host name/);
    usage(bigPort, /^torus serve: invalid --port "65536": the port must be 0\.\.65535/);
    usage(wordPort, /^torus serve: invalid --port "http": the port is not a number/);
    usage(emptyPort, /^torus serve: --port needs a value/);

    // Nothing was created by the usage errors.
    assert.deepEqual([...Deno.readDirSync(dataDir)], []);

    const port = (taken.addr as Deno.NetAddr).port;
    const inUse = await serveWith("--host", "127.0.0.1", "--port", String(port));
    assert.equal(inUse.code, 1, inUse.stderr);
    assert.equal(
      inUse.stderr,
      `torus serve: the HTTP status server cannot listen on 127.0.0.1:${port}: ` +
        `Address already in use (os error 98) (unavailable)\n`,
    );
    const nbdInUse = await serveWith("--nbd", `127.0.0.1:${port}`);
    assert.equal(nbdInUse.code, 1, nbdInUse.stderr);
    assert.equal(
      nbdInUse.stderr,
      `torus serve: the NBD server cannot listen on 127.0.0.1:${port}: ` +
        `Address already in use (os error 98) (unavailable)\n`,
    );
  } finally {
    taken.close();
    await Deno.remove(dataDir, { recursive: true });
  }
});
