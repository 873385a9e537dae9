import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { type PeerInfo, RingCodec } from "../models/mod.ts";
import {
  createModifiableRing,
  createRing,
  createUnionRing,
  replicationRange,
  ringFromMessage,
  RingType,
} from "./mod.ts";
import { testPeers, testRefs, testRingContract } from "./ring_contract.ts";

/** The union of a ketama ring of all `peers` but the one with the largest UUID and one of all. */
function transition(options: { version: number; replication: number; peers: readonly PeerInfo[] }) {
  const largest = [...options.peers].sort((a, b) => (a.uuid < b.uuid ? 1 : -1))[0]!;
  const oldPeers = options.peers.filter((peer) => peer !== largest);
  const oldRing = createRing(RingType.Ketama, {
    version: Math.max(0, options.version - 1),
    replication: options.replication,
    peers: oldPeers,
  });
  return createUnionRing(oldRing, createRing(RingType.Ketama, options));
}

testRingContract("union ring", {
  memberCounts: [1, 2, 5],
  modifiable: false,
  // The old ring of a transition has one member less, and must obey the rule too.
  replicationRange: (count) => replicationRange(RingType.Ketama, count - 1),
  create: transition,
});

function isInvalid(error: unknown): boolean {
  return isTorusError(error, ErrorCode.Invalid);
}

const peers = testPeers(6, 31);
const oldRing = createModifiableRing(RingType.Ketama, {
  version: 4,
  replication: 2,
  peers: peers.slice(0, 4),
});
const newRing = oldRing.removePeers([peers[0]!.uuid]).addPeers(peers.slice(4)).changeReplication(3);

Deno.test("union ring: new holders first, then old holders, then the rest", () => {
  const union = createUnionRing(oldRing, newRing);
  for (const ref of testRefs(300, 31)) {
    const fresh = newRing.getPeers(ref);
    const old = oldRing.getPeers(ref);
    const placement = union.getPeers(ref);
    const holders = fresh.peers.slice(0, 3);
    const oldHolders = old.peers.slice(0, 2).filter((uuid) => !holders.includes(uuid));
    assert.deepEqual(placement.peers.slice(0, 3), holders);
    assert.deepEqual(placement.peers.slice(3, 3 + oldHolders.length), oldHolders);
    assert.deepEqual([...placement.peers].sort(), peers.map((p) => p.uuid).sort());
    assert.equal(placement.replication, 3);
  }
});

Deno.test("union ring: takes version and replication from the new ring, members from both", () => {
  const union = createUnionRing(oldRing, newRing);
  assert.equal(union.version, newRing.version);
  assert.equal(union.replication, 3);
  assert.deepEqual(union.memberUuids(), [...newRing.memberUuids(), peers[0]!.uuid]);
  assert.match(union.describe(), /^Ring: union\nVersion: 7\nReplication: 3\nOld:\n\tRing: ketama/);
});

Deno.test("union ring: stores both rings marshaled in attrs old and new", () => {
  const message = createUnionRing(oldRing, newRing).toMessage();
  assert.deepEqual(Object.keys(message.attrs).sort(), ["new", "old"]);
  assert.deepEqual(message.peers, []);
  assert.deepEqual(RingCodec.decode(message.attrs.old!), oldRing.toMessage());
  assert.deepEqual(RingCodec.decode(message.attrs.new!), newRing.toMessage());
});

Deno.test("union ring: reads the original's form, with replication 0", () => {
  const message = createUnionRing(oldRing, newRing).toMessage();
  const ring = ringFromMessage({ ...message, replicationFactor: 0 });
  assert.equal(ring.replication, 3);
  assert.deepEqual(ring.toMessage(), message);
});

Deno.test("union ring: from an empty ring to a first one", () => {
  const empty = createRing(RingType.Empty, { version: 1, replication: 0, peers: [] });
  const union = createUnionRing(empty, newRing);
  for (const ref of testRefs(20, 32)) assert.deepEqual(union.getPeers(ref), newRing.getPeers(ref));
  const back = ringFromMessage(RingCodec.decode(RingCodec.encode(union.toMessage())));
  assert.deepEqual(back.toMessage(), union.toMessage());
});

Deno.test("union ring: refuses nesting and a new ring without peers", () => {
  const union = createUnionRing(oldRing, newRing);
  const empty = createRing(RingType.Empty, { version: 9, replication: 0, peers: [] });
  assert.throws(() => createUnionRing(union, newRing), isInvalid);
  assert.throws(() => createUnionRing(oldRing, union), isInvalid);
  assert.throws(() => createUnionRing(oldRing, empty), isInvalid);
  assert.throws(() => createRing(RingType.Union, { version: 1, replication: 1, peers }), isInvalid);
});

Deno.test("union ring: rejects malformed protos with invalid", () => {
  const good = createUnionRing(oldRing, newRing).toMessage();
  const nested = createUnionRing(oldRing, newRing).toMessage();
  const bad = [
    { ...good, attrs: { old: good.attrs.old! } },
    { ...good, attrs: { new: good.attrs.new! } },
    { ...good, attrs: { ...good.attrs, extra: new Uint8Array([1]) } },
    { ...good, attrs: { ...good.attrs, new: good.attrs.new!.subarray(0, 7) } },
    { ...good, attrs: { ...good.attrs, old: new Uint8Array([0xff, 0xff, 0xff]) } },
    { ...good, attrs: { ...good.attrs, new: RingCodec.encode(nested) } },
    { ...good, peers: [peers[0]!] },
    { ...good, version: good.version + 1 },
    { ...good, replicationFactor: 5 },
  ];
  for (const message of bad) assert.throws(() => ringFromMessage(message), isInvalid);
});
