import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { createRing, replicationRange, RingType } from "./mod.ts";
import { testPeers, testRefs, testRingContract } from "./ring_contract.ts";

testRingContract("empty ring", {
  memberCounts: [0],
  modifiable: false,
  replicationRange: (count) => replicationRange(RingType.Empty, count),
  create: (options) => createRing(RingType.Empty, options),
});

Deno.test("empty ring: lookups fail with invalid 'no peers available'", () => {
  const ring = createRing(RingType.Empty, { version: 1, replication: 0, peers: [] });
  assert.throws(
    () => ring.getPeers(testRefs(1, 1)[0]!),
    (error: unknown) =>
      isTorusError(error, ErrorCode.Invalid) && /no peers available/.test(error.message),
  );
  assert.equal(ring.replication, 0);
});

Deno.test("empty ring: refuses peers", () => {
  assert.throws(
    () => createRing(RingType.Empty, { version: 1, replication: 0, peers: testPeers(1, 1) }),
    (error: unknown) => isTorusError(error, ErrorCode.Invalid),
  );
});
