import assert from "node:assert/strict";
import { crc32 } from "../core/mod.ts";
import { createRing, isModifiable, replicationRange, RingType } from "./mod.ts";
import {
  fileRefs,
  movedPrimaries,
  primaryShares,
  testPeers,
  testRefs,
  testRingContract,
} from "./ring_contract.ts";

testRingContract("mod ring", {
  memberCounts: [1, 2, 3, 8],
  modifiable: true,
  replicationRange: (count) => replicationRange(RingType.Mod, count),
  create: (options) => createRing(RingType.Mod, options),
});

Deno.test("mod ring: starts at CRC-32(ref) mod n in the sorted UUIDs and rotates", () => {
  const peers = testPeers(5, 11);
  const ring = createRing(RingType.Mod, { version: 1, replication: 2, peers });
  const sorted = peers.map((peer) => peer.uuid).sort();
  for (const ref of testRefs(200, 11)) {
    const start = crc32(ref.toBytes()) % sorted.length;
    const expected = [...sorted.slice(start), ...sorted.slice(0, start)];
    assert.deepEqual(ring.getPeers(ref).peers, expected);
  }
});

// Sampling noise alone is ±2.2% (one sigma) per peer at 50 peers and 100k refs.
Deno.test("mod ring: 3..50 equal peers each get their share of primaries ±12%", () => {
  const refs = fileRefs(100_000);
  for (let count = 3; count <= 50; count++) {
    const ring = createRing(RingType.Mod, {
      version: 1,
      replication: 1,
      peers: testPeers(count, count),
    });
    for (const [uuid, share] of primaryShares(ring, refs)) {
      assert.ok(Math.abs(share - 1) <= 0.12, `${count} peers: ${uuid} has ${share} of the mean`);
    }
  }
});

Deno.test("mod ring: adding a sixth peer moves most primaries (known, ringtool shows it)", () => {
  const ring = createRing(RingType.Mod, { version: 1, replication: 2, peers: testPeers(5, 5) });
  assert.ok(isModifiable(ring));
  const grown = ring.addPeers(testPeers(1, 6));
  const moved = movedPrimaries(ring, grown, fileRefs(20_000));
  // n/(n+1) = 5/6 of the primaries change owner, against 1/6 at best.
  assert.ok(moved > 0.75 && moved < 0.9, `moved ${moved}`);
});
