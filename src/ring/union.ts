/**
 * The union ring: the placement during a transition from an `old` ring to a `new` one.
 *
 * A block's permutation is: the new ring's desired holders, then the old ring's desired holders
 * not listed yet, then the rest of the new ring's permutation, then the rest of the old one's.
 * Writes therefore land on the new holders first, and readers find a block that has not moved yet
 * right after them. The original listed the old permutation first and appended new-only peers,
 * which sent writes made during a transition to the old holders, so every transition had to move
 * them again; see docs/adr/0002-ketama-placement.md.
 *
 * Invariants: version and configured replication are the new ring's; members are the new ring's
 * followed by old-only members; unions do not nest, and the new ring has members.
 * @module
 */

import { type BlockRef, invalid } from "../core/mod.ts";
import { type PeerInfo, type Ring as RingMessage, RingCodec } from "../models/mod.ts";
import { holdersOf, noPeers, permutation } from "./peers.ts";
import { type PeerPermutation, type Ring, RingType } from "./ring.ts";

const noPermutation: PeerPermutation = Object.freeze({ peers: Object.freeze([]), replication: 0 });

function permutationOf(ring: Ring, ref: BlockRef): PeerPermutation {
  return ring.memberUuids().length === 0 ? noPermutation : ring.getPeers(ref);
}

function holdersIn(ring: Ring, ref: BlockRef): readonly string[] {
  return ring.memberUuids().length === 0 ? [] : ring.getHolders(ref);
}

function indent(text: string): string {
  return text.split("\n").map((line) => `\t${line}`).join("\n");
}

/** A union of two rings. */
export class UnionRing implements Ring {
  readonly type = RingType.Union;
  readonly version: number;
  readonly replication: number;
  readonly oldRing: Ring;
  readonly newRing: Ring;
  readonly #members: readonly PeerInfo[];
  readonly #uuids: readonly string[];

  constructor(oldRing: Ring, newRing: Ring) {
    if (oldRing.type === RingType.Union || newRing.type === RingType.Union) {
      throw invalid("union rings do not nest");
    }
    if (newRing.memberUuids().length === 0) {
      throw invalid("a union ring needs a new ring with peers");
    }
    this.oldRing = oldRing;
    this.newRing = newRing;
    this.version = newRing.version;
    this.replication = newRing.replication;
    const fresh = new Set(newRing.memberUuids());
    const oldOnly = oldRing.members().filter((peer) => !fresh.has(peer.uuid));
    this.#members = Object.freeze([...newRing.members(), ...oldOnly]);
    this.#uuids = Object.freeze(this.#members.map((peer) => peer.uuid));
  }

  members(): readonly PeerInfo[] {
    return this.#members;
  }

  memberUuids(): readonly string[] {
    return this.#uuids;
  }

  getPeers(ref: BlockRef): PeerPermutation {
    const fresh = permutationOf(this.newRing, ref);
    const old = permutationOf(this.oldRing, ref);
    if (fresh.peers.length === 0 && old.peers.length === 0) throw noPeers();
    const ordered = new Set(fresh.peers.slice(0, fresh.replication));
    for (const uuid of old.peers.slice(0, old.replication)) ordered.add(uuid);
    for (const uuid of fresh.peers) ordered.add(uuid);
    for (const uuid of old.peers) ordered.add(uuid);
    return permutation([...ordered], Math.min(this.replication, ordered.size));
  }

  getHolders(ref: BlockRef): readonly string[] {
    // The permutation starts with the new holders, then the old ones not listed yet; when those
    // are enough, the rest of it is not needed.
    const first = new Set(holdersIn(this.newRing, ref));
    for (const uuid of holdersIn(this.oldRing, ref)) first.add(uuid);
    if (first.size >= this.replication) return Object.freeze([...first].slice(0, this.replication));
    return holdersOf(this.getPeers(ref));
  }

  describe(): string {
    return [
      "Ring: union",
      `Version: ${this.version}`,
      `Replication: ${this.replication}`,
      "Old:",
      indent(this.oldRing.describe()),
      "New:",
      indent(this.newRing.describe()),
    ].join("\n");
  }

  /** The proto: no peers of its own; `attrs` hold the marshaled old and new rings. */
  toMessage(): RingMessage {
    return {
      type: this.type,
      version: this.version,
      replicationFactor: this.replication,
      peers: [],
      attrs: {
        old: RingCodec.encode(this.oldRing.toMessage()),
        new: RingCodec.encode(this.newRing.toMessage()),
      },
    };
  }
}
