/**
 * Unit tests of the etcd driver's input handling, which need no server: endpoint parsing
 * (garbage, truncated and oversized input), TLS option checks and the error table.
 * @module
 */

import assert from "node:assert/strict";
import {
  EtcdLeaseInvalidError,
  GRPCDeadlineExceededError,
  GRPCInternalError,
  GRPCUnavailableError,
} from "etcd3";
import { isTorusError } from "../core/mod.ts";
import { openEtcdKv, parseEndpoints } from "./etcd.ts";
import { etcdError, outcomeUnknown } from "./etcd_errors.ts";

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

/** Words of gRPC and Node that must never reach a one-line error. */
const internals =
  /[A-Z]{2,}_[A-Z]+|LB pick|name resolution|remote_addr|RST_STREAM|Resolution note|Last error|\d+ [A-Z]+:|EPIPE|ECONN|grpc/;

Deno.test("etcd failures are described in our words, without gRPC's internals", () => {
  const cases: [Error, string, RegExp][] = [
    [
      new GRPCDeadlineExceededError(
        "4 DEADLINE_EXCEEDED: Deadline exceeded after 0.999s,name resolution: 0.005s,Waiting " +
          "for LB pick",
      ),
      "unavailable",
      /^etcd get: no answer before the deadline$/,
    ],
    [
      new GRPCDeadlineExceededError(
        "4 DEADLINE_EXCEEDED: Deadline exceeded after 5.001s,LB pick: 0s,remote_addr=10.1.1.1:2379",
      ),
      "unavailable",
      /^etcd get: no answer before the deadline$/,
    ],
    [
      new GRPCInternalError(
        "13 INTERNAL: Received RST_STREAM with code 2 triggered by internal client error: write " +
          "EPIPE",
      ),
      "unavailable",
      /^etcd get: connection lost$/,
    ],
    [
      new GRPCUnavailableError(
        "14 UNAVAILABLE: No connection established. Last error: Error: connect ECONNREFUSED " +
          "127.0.0.1:2379. Resolution note: ",
      ),
      "unavailable",
      /^etcd get: connection refused$/,
    ],
    [
      new GRPCUnavailableError(
        "14 UNAVAILABLE: No connection established. Last error: Error: self-signed certificate " +
          "in certificate chain. Resolution note: ",
      ),
      "unavailable",
      /^etcd get: TLS: self-signed certificate in certificate chain$/,
    ],
    [new GRPCUnavailableError("14 UNAVAILABLE: Connection dropped"), "unavailable", /lost$/],
    [new Error("etcdserver: request timed out"), "unavailable", /^etcd get: request timed out$/],
    [
      new Error("etcdserver: mvcc: required revision has been compacted"),
      "not_exist",
      /^etcd get: required revision has been compacted$/,
    ],
  ];
  for (const [error, code, pattern] of cases) {
    const mapped = etcdError(error, "etcd get");
    assert.equal(mapped.code, code, error.message);
    assert.match(mapped.message, pattern);
    assert.doesNotMatch(mapped.message, internals);
    const unknown = outcomeUnknown(error, "etcd put");
    assert.equal(unknown.code, "outcome_unknown");
    assert.match(unknown.message, /^etcd put: outcome unknown \(.*\): the change may or may not/);
    assert.doesNotMatch(unknown.message, internals);
  }
});
