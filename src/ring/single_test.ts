import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { createRing, RingType } from "./mod.ts";
import { testPeers, testRefs, testRingContract } from "./ring_contract.ts";

testRingContract("single ring", {
  memberCounts: [1],
  modifiable: false,
  create: (options) => createRing(RingType.Single, options),
});

Deno.test("single ring: places every block on its one peer with replication 1", () => {
  const [peer] = testPeers(1, 3);
  const ring = createRing(RingType.Single, { version: 1, replication: 3, peers: [peer!] });
  for (const ref of testRefs(50, 3)) {
    assert.deepEqual(ring.getPeers(ref), { peers: [peer!.uuid], replication: 1 });
  }
});

Deno.test("single ring: needs exactly one peer and replication >= 1", () => {
  for (const count of [0, 2]) {
    assert.throws(
      () => createRing(RingType.Single, { version: 1, replication: 1, peers: testPeers(count, 3) }),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
    );
  }
  assert.throws(
    () => createRing(RingType.Single, { version: 1, replication: 0, peers: testPeers(1, 3) }),
    (error: unknown) => isTorusError(error, ErrorCode.Invalid),
  );
});
