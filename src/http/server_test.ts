import assert from "node:assert/strict";
import { FakeReporter, liveReport } from "./report_fixture.ts";
import { HttpStatusServer } from "./server.ts";

function get(server: HttpStatusServer, path: string, method = "GET"): Promise<Response> {
  return server.handle(new Request(`http://node.example${path}`, { method }));
}

function quietServer(reporter: FakeReporter, metadataTimeoutMs = 5_000): HttpStatusServer {
  const log = {
    error: () => {},
    warn: () => {},
    notice: () => {},
    info: () => {},
    debug: () => {},
    trace: () => {},
    enabled: () => false,
  };
  return new HttpStatusServer({ reporter, metadataTimeoutMs, log });
}

Deno.test("http: /healthz is ok while the store works and the metadata service answers", async () => {
  const server = quietServer(new FakeReporter());
  const response = await get(server, "/healthz");
  assert.equal(response.status, 200);
  assert.equal(await response.text(), "ok\n");
  assert.equal(response.headers.get("cache-control"), "no-store");
});

Deno.test("http: /healthz is 503 with one line when the store failed or metadata does not answer", async () => {
  const reporter = new FakeReporter();
  const server = quietServer(reporter, 50);
  reporter.liveNow = () =>
    liveReport({
      store: {
        ...liveReport().store!,
        failure: "block store current failed: flush failed: input/output error",
      },
    });
  let response = await get(server, "/healthz");
  assert.equal(response.status, 503);
  assert.equal(
    await response.text(),
    "block store current failed: flush failed: input/output error\n",
  );

  reporter.liveNow = () => liveReport();
  reporter.metadataNow = () => Promise.reject(new Error("connection refused\nby 10.0.0.1"));
  response = await get(server, "/healthz");
  assert.equal(response.status, 503);
  assert.equal(
    await response.text(),
    "metadata service unusable: connection refused by 10.0.0.1\n",
  );

  // A metadata service that never answers: the probe still answers, after the deadline.
  reporter.metadataNow = () => new Promise(() => {});
  response = await get(server, "/healthz");
  assert.equal(response.status, 503);
  assert.match(await response.text(), /^metadata service unusable: no answer .* within 50 ms\n$/);
});

Deno.test("http: /status is JSON, and says when the volume list could not be read", async () => {
  const reporter = new FakeReporter();
  const server = quietServer(reporter, 50);
  let response = await get(server, "/status");
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "application/json; charset=utf-8");
  let status = await response.json();
  assert.equal(status.metadata.usable, true);
  assert.deepEqual(status.volumes.map((v: { name: string }) => v.name), ["db", "db3", "free"]);

  reporter.volumesNow = () => new Promise(() => {});
  response = await get(server, "/status");
  assert.equal(response.status, 200);
  status = await response.json();
  assert.equal(status.volumes, null);
  assert.equal(status.metadata.usable, false);
  assert.match(status.metadata.error, /within 50 ms/);
  assert.equal(status.store.usedBlocks, 3);
});

Deno.test("http: /metrics is the text exposition", async () => {
  const response = await get(quietServer(new FakeReporter()), "/metrics");
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  assert.match(await response.text(), /^torus_storage_blocks\{storage="current"\} 3$/m);
});

Deno.test("http: unknown paths are 404, other methods 405 with Allow, HEAD works", async () => {
  const server = quietServer(new FakeReporter());
  for (const path of ["/", "/status/", "/metrics.txt", "/debug/pprof/", "/%ff"]) {
    const response = await get(server, path);
    assert.equal(response.status, 404, path);
    assert.match(await response.text(), /^not found: .* \(try \/status, \/metrics, \/healthz\)\n$/);
  }
  for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
    const response = await get(server, "/status", method);
    assert.equal(response.status, 405, method);
    assert.equal(response.headers.get("allow"), "GET, HEAD");
    await response.body?.cancel();
  }
  const head = await get(server, "/healthz", "HEAD");
  assert.equal(head.status, 200);
  await head.body?.cancel();
  // A query string does not change the route.
  assert.equal((await get(server, "/healthz?verbose=1")).status, 200);
});

Deno.test("http: a reporter that throws is a 500 of one line, and the next request is answered", async () => {
  const reporter = new FakeReporter();
  const server = quietServer(reporter);
  reporter.liveNow = () => {
    throw new Error("broken\nreport");
  };
  for (const path of ["/status", "/metrics", "/healthz"]) {
    const response = await get(server, path);
    assert.equal(response.status, 500, path);
    assert.equal(await response.text(), "internal error: broken report\n");
  }
  reporter.liveNow = () => liveReport();
  assert.equal((await get(server, "/healthz")).status, 200);
});

Deno.test("http: listens on a free port, answers over TCP, and stops on close", async () => {
  const server = quietServer(new FakeReporter());
  const address = server.listen({ hostname: "127.0.0.1", port: 0 });
  assert.ok(address.port > 0);
  const response = await fetch(`http://127.0.0.1:${address.port}/healthz`);
  assert.equal(await response.text(), "ok\n");
  assert.throws(() => server.listen({ hostname: "127.0.0.1", port: 0 }), /listens already/);
  await server.close();
  await server.close();
  await assert.rejects(fetch(`http://127.0.0.1:${address.port}/healthz`));
});
