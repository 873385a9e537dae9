/**
 * The Ring boundary: a pure, immutable function from a BlockRef to an ordered permutation of
 * peers. The first `replication` peers of the permutation are the block's desired holders; the
 * rest are the order in which readers fall back and writers spill over while a holder is down.
 * Rings do no I/O and keep no clock. Every change (add/remove peers, replication) returns a new
 * ring whose version is one higher.
 *
 * Implementations: empty.ts, single.ts, modulo.ts (`mod`), ketama.ts, union.ts. The contract
 * suite (ring_contract.ts) runs against each.
 * @module
 */

import type { BlockRef } from "../core/mod.ts";
import type { PeerInfo, Ring as RingMessage } from "../models/mod.ts";

/** Ring type ids as serialized in the Ring proto (`type`). */
export const RingType = {
  Empty: 0,
  Single: 1,
  Mod: 2,
  Union: 3,
  Ketama: 4,
} as const;
export type RingType = typeof RingType[keyof typeof RingType];

/** Ring type names, as typed on the command line (`--type ketama`). */
export const ringTypeNames: Readonly<Record<RingType, string>> = {
  [RingType.Empty]: "empty",
  [RingType.Single]: "single",
  [RingType.Mod]: "mod",
  [RingType.Union]: "union",
  [RingType.Ketama]: "ketama",
};

/** The placement of one block. */
export interface PeerPermutation {
  /** Every member of the ring exactly once, most preferred first. */
  readonly peers: readonly string[];
  /** How many of the first `peers` should hold the block: min(replication, members). */
  readonly replication: number;
}

/** A placement ring. */
export interface Ring {
  readonly type: RingType;
  readonly version: number;
  /** The configured replication factor (a permutation caps it at the member count). */
  readonly replication: number;
  /** The members with the PeerInfo recorded when they joined, in ring order. */
  members(): readonly PeerInfo[];
  /** Member UUIDs. */
  memberUuids(): readonly string[];
  /** The placement of `ref`. Throws `invalid` when the ring has no members. */
  getPeers(ref: BlockRef): PeerPermutation;
  /**
   * The desired holders of `ref`: the first `replication` peers of `getPeers(ref)`, found
   * without building the rest of the permutation where the type can (a ketama lookup then walks
   * a few points instead of the whole ring). Throws `invalid` when the ring has no members.
   */
  getHolders(ref: BlockRef): readonly string[];
  /** Human-readable description, as `torus ctl ring get` prints it. */
  describe(): string;
  /** The Ring proto of this ring. */
  toMessage(): RingMessage;
}

/** A ring that can be changed (mod, ketama). Each change returns a new ring, version + 1. */
export interface ModifiableRing extends Ring {
  /** Same peers, replication `replication` (>= 1). */
  changeReplication(replication: number): ModifiableRing;
  /** Adds peers (by UUID); `exists` if none of them is new. */
  addPeers(peers: readonly PeerInfo[]): ModifiableRing;
  /** Removes peers by UUID; `not_exist` if none of them is a member. */
  removePeers(uuids: readonly string[]): ModifiableRing;
}

/** Whether `ring` supports changes. */
export function isModifiable(ring: Ring): ring is ModifiableRing {
  const candidate = ring as Partial<ModifiableRing>;
  return typeof candidate.addPeers === "function" &&
    typeof candidate.removePeers === "function" &&
    typeof candidate.changeReplication === "function";
}
