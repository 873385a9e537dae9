/**
 * The Ring contract: what every ring type promises, as Deno tests registered for a factory.
 * Each implementation's test file calls {@link testRingContract} once.
 *
 * Promises checked: lookups are deterministic across fresh instances and independent of the
 * order peers are listed in; every lookup is a full permutation of the members with
 * replication = min(configured, members) and never panics when replication exceeds the members
 * (#427); `getHolders` is exactly the first `replication` peers of the permutation;
 * replication outside the one rule (replication.ts) is refused when building, changing
 * and decoding; rings and what they hand out are immutable; every change returns a new ring one
 * version higher and leaves the old one as it was; the proto round trip rebuilds the same ring.
 * @module
 */

import assert from "node:assert/strict";
import {
  BlockRef,
  BlockType,
  ErrorCode,
  isTorusError,
  randomUuid,
  SeededRandom,
} from "../core/mod.ts";
import { emptyPeerInfo, type PeerInfo, RingCodec } from "../models/mod.ts";
import {
  isModifiable,
  type ModifiableRing,
  type PeerPermutation,
  type Ring,
  ringFromMessage,
  ringTypeNames,
} from "./mod.ts";

/** Builds a ring of the type under test. */
export interface RingContractFactory {
  /** Member counts this type can hold (empty: [0], single: [1], others: several). */
  readonly memberCounts: readonly number[];
  /** Whether the type supports addPeers/removePeers/changeReplication. */
  readonly modifiable: boolean;
  /** The replications a ring of `count` members may be built with (replicationRange). */
  replicationRange(count: number): { readonly min: number; readonly max: number };
  create(options: { version: number; replication: number; peers: readonly PeerInfo[] }): Ring;
}

/** `count` peers with replayable UUIDs, distinct addresses and equal capacity. */
export function testPeers(count: number, seed: number): PeerInfo[] {
  const random = new SeededRandom(seed);
  return Array.from({ length: count }, (_, i) => ({
    ...emptyPeerInfo(randomUuid(random)),
    address: `10.0.0.${i + 1}:40000`,
    totalBlocks: 1_000_000n,
    usedBlocks: BigInt(i),
    rebalanceInfo: {
      lastRebalanceFinish: 5n,
      lastRebalanceBlocks: 6n,
      rebalancing: false,
      ringVersion: 7n,
    },
    protocolVersion: 1n,
  }));
}

/** Refs across volumes, block types and the whole 64-bit range of INode ids and indexes. */
export function testRefs(count: number, seed: number): BlockRef[] {
  const random = new SeededRandom(seed);
  const u64 = () => (BigInt(random.nextU32()) << 32n) | BigInt(random.nextU32());
  return Array.from({ length: count }, (_, i) =>
    new BlockRef({
      type: i % 7 === 0 ? BlockType.INode : BlockType.Data,
      volume: 1 + random.int(2 ** 40 - 1),
      inode: i % 3 === 0 ? BigInt(2 + (i >> 4)) : u64(),
      index: i % 3 === 0 ? BigInt(i & 15) : u64(),
    }));
}

/** Asserts `ring` places each of `refs` with a full permutation and capped replication. */
export function assertFullPermutations(ring: Ring, refs: readonly BlockRef[]): void {
  const members = [...ring.memberUuids()].sort();
  for (const ref of refs) {
    const placement = ring.getPeers(ref);
    assert.deepEqual([...placement.peers].sort(), members, `full permutation for ${ref}`);
    assert.equal(placement.replication, Math.min(ring.replication, members.length));
    assertHolders(ring, ref, placement);
  }
}

/** Asserts `getHolders(ref)` is the frozen head of the permutation, whatever was asked first. */
function assertHolders(ring: Ring, ref: BlockRef, placement: PeerPermutation): void {
  const holders = ring.getHolders(ref);
  assert.deepEqual(holders, placement.peers.slice(0, placement.replication), `holders of ${ref}`);
  assert.ok(Object.isFrozen(holders));
}

function assertSamePlacements(a: Ring, b: Ring, refs: readonly BlockRef[]): void {
  for (const ref of refs) assert.deepEqual(b.getPeers(ref), a.getPeers(ref), `same for ${ref}`);
}

function assertTorusError(fn: () => unknown, code: ErrorCode): void {
  assert.throws(fn, (error: unknown) => isTorusError(error, code));
}

/** Registers the Ring contract tests for `name`. */
export function testRingContract(name: string, factory: RingContractFactory): void {
  const refs = testRefs(400, 7);
  testShape(name, factory, refs);
  testImmutability(name, factory, refs);
  testRoundTrip(name, factory, refs);
  if (Math.max(...factory.memberCounts) > 0) testDeterminism(name, factory, refs);
  if (factory.modifiable) testChanges(name, factory, refs);
  else {
    Deno.test(`${name}: cannot be changed`, () => {
      for (const count of factory.memberCounts) assert.ok(!isModifiable(make(factory, count)));
    });
  }
}

/** `wanted` moved into the replications a ring of `count` members of the factory's type allows. */
function fit(factory: RingContractFactory, count: number, wanted: number): number {
  const { min, max } = factory.replicationRange(count);
  return Math.min(max, Math.max(min, wanted));
}

function make(factory: RingContractFactory, count: number, replication = 2, version = 3): Ring {
  const peers = testPeers(count, 100 + count);
  return factory.create({ version, replication: fit(factory, count, replication), peers });
}

function testShape(name: string, factory: RingContractFactory, refs: BlockRef[]): void {
  Deno.test(`${name}: reports the type, version, replication and members it was built with`, () => {
    for (const count of factory.memberCounts) {
      const peers = testPeers(count, 100 + count);
      const replication = fit(factory, count, 2);
      const ring = factory.create({ version: 3, replication, peers });
      assert.equal(ring.version, 3);
      assert.equal(ring.replication, replication);
      assert.deepEqual([...ring.memberUuids()].sort(), peers.map((p) => p.uuid).sort());
      assert.deepEqual(ring.members().map((p) => p.uuid), ring.memberUuids());
      assert.ok(ring.describe().includes(ringTypeNames[ring.type]));
      for (const peer of peers) assert.ok(ring.describe().includes(peer.uuid), "describe lists");
    }
  });

  Deno.test(`${name}: lookups are full permutations with replication capped (#427)`, () => {
    for (const count of factory.memberCounts) {
      for (const replication of [1, 2, 3, count + 5]) {
        const ring = make(factory, count, replication);
        if (count === 0) {
          assertTorusError(() => ring.getPeers(refs[0]!), ErrorCode.Invalid);
          assertTorusError(() => ring.getHolders(refs[0]!), ErrorCode.Invalid);
        } else {
          // Holders first, on a fresh ring: a cached permutation must not be what makes them right.
          const fresh = make(factory, count, replication);
          const holders = refs.map((ref) => fresh.getHolders(ref));
          assertFullPermutations(ring, refs);
          refs.forEach((ref, i) => assert.deepEqual(holders[i], ring.getHolders(ref)));
        }
      }
    }
  });

  Deno.test(`${name}: refuses a replication outside the one rule, built or decoded`, () => {
    for (const count of factory.memberCounts) {
      const { min, max } = factory.replicationRange(count);
      const peers = testPeers(count, 100 + count);
      const bad = [max + 1, 1000, 2 ** 32, 1.5, Number.NaN, ...(min > 0 ? [min - 1] : [])];
      for (const replication of bad) {
        assertTorusError(
          () => factory.create({ version: 3, replication, peers }),
          ErrorCode.Invalid,
        );
      }
      const message = make(factory, count).toMessage();
      const decoded = () => ringFromMessage({ ...message, replicationFactor: max + 1 });
      // An empty ring's stored replication is ignored (read as 0), as the original did.
      if (max === 0) assert.equal(decoded().replication, 0);
      else assertTorusError(decoded, ErrorCode.Invalid);
    }
  });
}

function testDeterminism(name: string, factory: RingContractFactory, refs: BlockRef[]): void {
  const largest = Math.max(...factory.memberCounts);
  Deno.test(`${name}: lookups are deterministic across fresh instances and peer orders`, () => {
    const peers = testPeers(largest, 100 + largest);
    const replication = fit(factory, largest, 2);
    const a = factory.create({ version: 3, replication, peers });
    const fresh = testPeers(largest, 100 + largest);
    const b = factory.create({ version: 3, replication, peers: fresh });
    const reversed = factory.create({ version: 3, replication, peers: [...peers].reverse() });
    assertSamePlacements(a, b, refs);
    assertSamePlacements(a, reversed, refs);
  });
}

function testImmutability(name: string, factory: RingContractFactory, refs: BlockRef[]): void {
  const largest = Math.max(...factory.memberCounts);
  Deno.test(`${name}: is immutable, and keeps no link to the PeerInfos it was given`, () => {
    const peers = testPeers(largest, 100 + largest);
    const ring = factory.create({ version: 3, replication: fit(factory, largest, 2), peers });
    const before = ring.toMessage();
    const placements = largest === 0 ? [] : refs.slice(0, 20).map((ref) => ring.getPeers(ref));
    for (const peer of peers) peer.address = "changed";
    peers.pop();
    assert.deepEqual(ring.toMessage(), before);
    assert.ok(Object.isFrozen(ring.members()) && Object.isFrozen(ring.memberUuids()));
    for (const member of ring.members()) {
      assert.ok(Object.isFrozen(member));
      assert.throws(() => ((member as { address: string }).address = "x"), TypeError);
    }
    for (const placement of placements) {
      assert.ok(Object.isFrozen(placement) && Object.isFrozen(placement.peers));
    }
    const message = ring.toMessage();
    message.peers.forEach((peer) => (peer.address = "mutated"));
    assert.deepEqual(ring.toMessage(), before, "toMessage hands out copies");
  });
}

function testRoundTrip(name: string, factory: RingContractFactory, refs: BlockRef[]): void {
  Deno.test(`${name}: survives the proto round trip exactly`, () => {
    for (const count of factory.memberCounts) {
      for (const wanted of [1, 3]) {
        const ring = make(factory, count, wanted, 41);
        const message = ring.toMessage();
        const back = ringFromMessage(RingCodec.decode(RingCodec.encode(message)));
        assert.equal(back.type, ring.type);
        assert.equal(back.version, 41);
        assert.equal(back.replication, fit(factory, count, wanted));
        assert.deepEqual(back.members(), ring.members());
        assert.deepEqual(back.toMessage(), message);
        assert.deepEqual(RingCodec.encode(back.toMessage()), RingCodec.encode(message));
        if (count > 0) assertSamePlacements(ring, back, refs);
      }
    }
  });
}

function count(ring: Ring): number {
  return ring.memberUuids().length;
}

function modifiableRing(factory: RingContractFactory, version: number): ModifiableRing {
  const ring = make(factory, Math.max(...factory.memberCounts), 2, version);
  assert.ok(isModifiable(ring), "the factory said its rings are modifiable");
  return ring;
}

function testChanges(name: string, factory: RingContractFactory, refs: BlockRef[]): void {
  Deno.test(`${name}: each change returns a new ring one version higher, old one untouched`, () => {
    const ring = modifiableRing(factory, 9);
    const count = ring.memberUuids().length;
    const before = ring.toMessage();
    const before0 = ring.getPeers(refs[0]!);
    const added = ring.addPeers(testPeers(2, 999));
    const removed = ring.removePeers([ring.memberUuids()[0]!]);
    const replicated = ring.changeReplication(3);
    for (const next of [added, removed, replicated]) {
      assert.equal(next.version, 10);
      assert.equal(next.type, ring.type);
      assertFullPermutations(next, refs.slice(0, 50));
    }
    assert.equal(added.memberUuids().length, count + 2);
    assert.equal(removed.memberUuids().length, count - 1);
    assert.equal(replicated.replication, 3);
    assert.deepEqual(replicated.memberUuids(), ring.memberUuids());
    assert.equal(added.addPeers([testPeers(1, 1000)[0]!]).version, 11);
    assert.deepEqual(ring.toMessage(), before, "the old ring did not change");
    assert.deepEqual(ring.getPeers(refs[0]!), before0);
  });

  Deno.test(`${name}: refuses changes that change nothing or make no sense`, () => {
    const ring = modifiableRing(factory, 9);
    assertTorusError(() => ring.addPeers(ring.members()), ErrorCode.Exists);
    assertTorusError(() => ring.addPeers([]), ErrorCode.Exists);
    assertTorusError(() => ring.removePeers(["not-a-member"]), ErrorCode.NotExist);
    assertTorusError(() => ring.removePeers([]), ErrorCode.NotExist);
    assertTorusError(() => ring.addPeers([emptyPeerInfo("")]), ErrorCode.Invalid);
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      assertTorusError(() => ring.changeReplication(bad), ErrorCode.Invalid);
    }
    const last = modifiableRing(factory, 2 ** 32 - 1);
    assertTorusError(() => last.changeReplication(1), ErrorCode.Invalid);
    assertTorusError(() => ring.changeReplication(count(ring) + 1), ErrorCode.Invalid);
  });

  Deno.test(`${name}: removing members below the replication is refused with advice`, () => {
    const full = modifiableRing(factory, 9).changeReplication(count(modifiableRing(factory, 9)));
    assert.throws(
      () => full.removePeers([full.memberUuids()[0]!]),
      (error: unknown) =>
        isTorusError(error, ErrorCode.Invalid) && /lower it first/.test(error.message),
    );
    const lowered = full.changeReplication(count(full) - 1).removePeers([full.memberUuids()[0]!]);
    assert.equal(lowered.memberUuids().length, count(full) - 1);
  });

  Deno.test(`${name}: adding a peer twice in one call adds it once, as first given`, () => {
    const ring = modifiableRing(factory, 1);
    const [peer] = testPeers(1, 4242);
    const added = ring.addPeers([peer!, { ...peer!, address: "other" }]);
    assert.equal(added.memberUuids().filter((uuid) => uuid === peer!.uuid).length, 1);
    assert.equal(added.members().find((p) => p.uuid === peer!.uuid)!.address, peer!.address);
  });

  Deno.test(`${name}: removing every member leaves a ring whose lookups fail with invalid`, () => {
    const ring = modifiableRing(factory, 1);
    const none = ring.removePeers(ring.memberUuids());
    assert.equal(none.memberUuids().length, 0);
    assertTorusError(() => none.getPeers(refs[0]!), ErrorCode.Invalid);
  });
}

/**
 * Refs laid out as the data of files: `count` refs of volume 1 in files of 1000 blocks, the way
 * block volumes produce them (the placement tests use these; ringtool adds rewrites).
 */
export function fileRefs(count: number): BlockRef[] {
  return Array.from(
    { length: count },
    (_, i) => new BlockRef({ volume: 1, inode: 2 + Math.floor(i / 1000), index: i % 1000 }),
  );
}

/** How many of `refs` each member holds as primary, divided by the mean (1 = fair share). */
export function primaryShares(ring: Ring, refs: readonly BlockRef[]): Map<string, number> {
  const counts = new Map<string, number>(ring.memberUuids().map((uuid) => [uuid, 0]));
  for (const ref of refs) {
    const primary = ring.getPeers(ref).peers[0]!;
    counts.set(primary, counts.get(primary)! + 1);
  }
  const mean = refs.length / counts.size;
  return new Map([...counts].map(([uuid, count]) => [uuid, count / mean]));
}

/** The fraction of `refs` whose primary differs between rings `a` and `b`. */
export function movedPrimaries(a: Ring, b: Ring, refs: readonly BlockRef[]): number {
  let moved = 0;
  for (const ref of refs) if (a.getPeers(ref).peers[0] !== b.getPeers(ref).peers[0]) moved++;
  return moved / refs.length;
}
