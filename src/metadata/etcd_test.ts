/**
 * Unit tests of the etcd driver's input handling, which need no server: endpoint parsing
 * (garbage, truncated and oversized input), TLS option checks and the error table.
 * @module
 */

import assert from "node:assert/strict";
import { EtcdLeaseInvalidError, GRPCDeadlineExceededError, GRPCUnavailableError } from "etcd3";
import { isTorusError } from "../core/mod.ts";
import { openEtcdKv, parseEndpoints } from "./etcd.ts";
import { etcdError } from "./etcd_errors.ts";

const invalid = (e: unknown) => isTorusError(e, "invalid");

Deno.test("parseEndpoints accepts host:port lists, commas and http(s) prefixes", () => {
  assert.deepEqual(parseEndpoints(["127.0.0.1:2379"]), {
    hosts: ["127.0.0.1:2379"],
    secure: false,
  });
  assert.deepEqual(parseEndpoints(["http://a:1, b:2", "c.example:3/"]), {
    hosts: ["a:1", "b:2", "c.example:3"],
    secure: false,
  });
  assert.deepEqual(parseEndpoints(["https://[::1]:2379"]), { hosts: ["[::1]:2379"], secure: true });
});

Deno.test("parseEndpoints refuses garbage, truncated and oversized endpoints with invalid", () => {
  for (
    const bad of [
      [],
      [""],
      [" , "],
      ["localhost"],
      ["host:"],
      [":2379"],
      ["host:0"],
      ["host:65536"],
      ["host:123456"],
      ["ftp://host:1"],
      ["http://host:1/path"],
      ["ho st:1"],
      ["\u0000:1x"],
      [`${"a".repeat(100_000)}:1:2:x`],
    ]
  ) {
    assert.throws(() => parseEndpoints(bad), invalid, JSON.stringify(bad).slice(0, 40));
  }
  assert.throws(() => parseEndpoints(["http://a:1", "https://b:2"]), invalid);
});

Deno.test("openEtcdKv refuses incomplete or unreadable TLS options with invalid", async () => {
  const endpoints = ["127.0.0.1:1"];
  await assert.rejects(openEtcdKv({ endpoints, certFile: "/x.crt" }), invalid);
  await assert.rejects(openEtcdKv({ endpoints, certFile: "/x.crt", keyFile: "/x.key" }), invalid);
  await assert.rejects(
    openEtcdKv({ endpoints, caFile: "/nonexistent/ca.pem" }),
    (e) => invalid(e) && /ca\.pem/.test((e as Error).message),
  );
  await assert.rejects(openEtcdKv({ endpoints: ["nonsense"] }), invalid);
});

Deno.test("etcd errors map to stable codes with one-line messages", () => {
  const cases: [Error, string][] = [
    [new GRPCUnavailableError("14 UNAVAILABLE: No connection established"), "unavailable"],
    [new GRPCDeadlineExceededError("4 DEADLINE_EXCEEDED: Deadline exceeded"), "unavailable"],
    [new EtcdLeaseInvalidError("123"), "not_exist"],
    [new Error("etcdserver: duplicate key given in txn request"), "invalid"],
    [new Error("etcdserver: mvcc: required revision has been compacted"), "not_exist"],
    [new Error("something\nodd"), "unavailable"],
  ];
  for (const [error, code] of cases) {
    const mapped = etcdError(error, "etcd put");
    assert.equal(mapped.code, code, error.message);
    assert.ok(mapped.message.startsWith("etcd put: "));
    assert.ok(!mapped.message.includes("\n"));
    assert.equal(mapped.cause, error);
  }
});
