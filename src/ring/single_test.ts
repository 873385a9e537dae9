import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { createRing, replicationRange, RingType } from "./mod.ts";
import { testPeers, testRefs, testRingContract } from "./ring_contract.ts";

testRingContract("single ring", {
  memberCounts: [1],
  modifiable: false,
  replicationRange: (count) => replicationRange(RingType.Single, count),
  create: (options) => createRing(RingType.Single, options),
});

Deno.test("single ring: places every block on its one peer with replication 1", () => {
  const [peer] = testPeers(1, 3);
  const ring = createRing(RingType.Single, { version: 1, replication: 1, peers: [peer!] });
  for (const ref of testRefs(50, 3)) {
    assert.deepEqual(ring.getPeers(ref), { peers: [peer!.uuid], replication: 1 });
  }
});

Deno.test("single ring: needs exactly one peer and replication 1", () => {
  for (const count of [0, 2]) {
    assert.throws(
      () => createRing(RingType.Single, { version: 1, replication: 1, peers: testPeers(count, 3) }),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
    );
  }
  for (const replication of [0, 3]) {
    assert.throws(
      () => createRing(RingType.Single, { version: 1, replication, peers: testPeers(1, 3) }),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
    );
  }
});
