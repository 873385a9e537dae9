/**
 * Lookup and construction speed of the rings (`deno bench -A src/ring/ketama_bench.ts`).
 * getPeers and getHolders run for every block read and write, so their cost is on the data path;
 * the mod ring (one native CRC-32 and a rotation) is the reference in each lookup group, and the
 * whole permutation in the 4096-peer group. Construction runs whenever membership changes and must
 * stay well under 100 ms for 50 peers. The refs are pre-built so the figures are the ring's own
 * cost.
 * @module
 */

import { createHash } from "node:crypto";
import { BlockRef, randomUuid, SeededRandom } from "../core/mod.ts";
import { emptyPeerInfo, type PeerInfo } from "../models/mod.ts";
import { md5FirstWord } from "./md5.ts";
import { createMeasurementKetamaRing, createRing, RingType } from "./mod.ts";

function peers(count: number, seed: number): PeerInfo[] {
  const random = new SeededRandom(seed);
  return Array.from({ length: count }, () => ({
    ...emptyPeerInfo(randomUuid(random)),
    totalBlocks: 1n << 30n,
  }));
}

const refs = Array.from(
  { length: 4096 },
  (_, i) => new BlockRef({ volume: 7, inode: 2 + (i >> 8), index: i & 255 }),
);
let next = 0;
function nextRef(): BlockRef {
  next = (next + 1) & 4095;
  return refs[next]!;
}

for (const count of [3, 10, 50, 200]) {
  const members = peers(count, count);
  const ketama = createRing(RingType.Ketama, { version: 1, replication: 2, peers: members });
  const mod = createRing(RingType.Mod, { version: 1, replication: 2, peers: members });
  // Warm the permutation caches so the figures show steady state.
  for (const ref of refs) {
    ketama.getPeers(ref);
    mod.getPeers(ref);
  }
  Deno.bench(`ketama getPeers, ${count} peers`, { group: `lookup ${count}` }, () => {
    ketama.getPeers(nextRef());
  });
  Deno.bench(`mod getPeers, ${count} peers`, { group: `lookup ${count}`, baseline: true }, () => {
    mod.getPeers(nextRef());
  });
  Deno.bench(`ketama build, ${count} peers`, { group: "build" }, () => {
    createRing(RingType.Ketama, { version: 1, replication: 2, peers: members });
  });
}

const fifty = peers(50, 50);
for (const pointsPerPeer of [160, 512, 1024, 2048]) {
  Deno.bench(`ketama build, 50 peers, ${pointsPerPeer} points each`, { group: "points" }, () => {
    createMeasurementKetamaRing({ version: 1, replication: 2, peers: fifty, pointsPerPeer });
  });
}

// Lookups on a fresh ring miss the permutation cache: each walks the ring.
const coldPeers = peers(50, 51);
for (const type of [RingType.Ketama, RingType.Mod]) {
  const name = type === RingType.Ketama ? "ketama" : "mod";
  Deno.bench(`${name}: 1000 getPeers on a fresh 50-peer ring`, { group: "cold" }, (b) => {
    const ring = createRing(type, { version: 1, replication: 2, peers: coldPeers });
    b.start();
    for (let i = 0; i < 1000; i++) ring.getPeers(refs[i]!);
    b.end();
  });
}

const scratch = new Uint8Array(24);
Deno.bench("md5 (this module) of a 24-byte ref", { group: "hash" }, () => {
  md5FirstWord(scratch);
});
Deno.bench("md5 (node:crypto) of a 24-byte ref", { group: "hash", baseline: true }, () => {
  createHash("md5").update(scratch).digest();
});

// The largest ring (4096 peers, 4 Mi points), as `torus ringtool --nodes 4096` builds it: the
// whole permutation walks the ring until it met every member; the holders take a few points.
const largest = peers(4096, 4096);
const largeKetama = createRing(RingType.Ketama, { version: 1, replication: 2, peers: largest });
const largeMod = createRing(RingType.Mod, { version: 1, replication: 2, peers: largest });
Deno.bench("ketama getPeers, 4096 peers", { group: "4096 peers", baseline: true }, () => {
  largeKetama.getPeers(nextRef());
});
Deno.bench("ketama getHolders, 4096 peers", { group: "4096 peers" }, () => {
  largeKetama.getHolders(nextRef());
});
Deno.bench("mod getPeers, 4096 peers", { group: "4096 peers" }, () => {
  largeMod.getPeers(nextRef());
});
Deno.bench("mod getHolders, 4096 peers", { group: "4096 peers" }, () => {
  largeMod.getHolders(nextRef());
});
Deno.bench("ketama build, 4096 peers", { group: "build 4096", n: 3, warmup: 1 }, () => {
  createRing(RingType.Ketama, { version: 1, replication: 2, peers: largest });
});
