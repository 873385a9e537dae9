/**
 * Pieces shared by the ring implementations: checking and freezing member lists, versions and
 * replication factors, the permutation cache budget, and the base class of rings that hold a
 * plain member list (single, mod, ketama).
 *
 * Invariants: a ring's member PeerInfos are deep copies frozen at construction, so nothing a
 * caller later does to the PeerInfos it passed in (or receives from `members()`) changes a ring.
 * `toMessage()` returns fresh, mutable copies.
 * @module
 */

import {
  BLOCK_REF_BYTES,
  type BlockRef,
  escapeText,
  exists,
  invalid,
  notExist,
  RING_MEMBERS_MAX,
  RING_PERMUTATION_CACHE_ENTRIES_MAX,
} from "../core/mod.ts";
import type { PeerInfo, Ring as RingMessage } from "../models/mod.ts";
import { checkRingReplication, replicationProblem } from "./replication.ts";
import {
  type ModifiableRing,
  type PeerPermutation,
  type Ring,
  type RingType,
  ringTypeNames,
} from "./ring.ts";

/** Largest version a ring proto can carry (uint32). */
export const RING_VERSION_MAX = 2 ** 32 - 1;

/** Checks a ring version: an integer in 0 ..= 2^32-1. */
export function checkVersion(version: number): number {
  if (!Number.isSafeInteger(version) || version < 0 || version > RING_VERSION_MAX) {
    throw invalid(`ring version must be an integer in 0..${RING_VERSION_MAX}, got ${version}`);
  }
  return version;
}

/** The version after `version`; a ring at the largest version cannot change any more. */
export function nextVersion(version: number): number {
  if (version >= RING_VERSION_MAX) throw invalid(`ring version ${version} cannot be raised`);
  return version + 1;
}

/** A deep, frozen copy of `peer`. */
export function freezePeer(peer: PeerInfo): PeerInfo {
  const rebalanceInfo = peer.rebalanceInfo === null
    ? null
    : Object.freeze({ ...peer.rebalanceInfo });
  return Object.freeze({ ...peer, rebalanceInfo });
}

/** A fresh, mutable deep copy of `peer` (for messages handed out). */
export function copyPeer(peer: PeerInfo): PeerInfo {
  const rebalanceInfo = peer.rebalanceInfo === null ? null : { ...peer.rebalanceInfo };
  return { ...peer, rebalanceInfo };
}

/**
 * Checks that there are at most RING_MEMBERS_MAX peers, every peer has a UUID and no UUID appears
 * twice; returns frozen copies.
 */
export function freezePeers(peers: readonly PeerInfo[]): readonly PeerInfo[] {
  if (peers.length > RING_MEMBERS_MAX) {
    throw invalid(`a ring may have at most ${RING_MEMBERS_MAX} peers, got ${peers.length}`);
  }
  const seen = new Set<string>();
  for (const peer of peers) {
    if (typeof peer.uuid !== "string" || peer.uuid === "") {
      throw invalid("ring peer without a UUID");
    }
    if (seen.has(peer.uuid)) throw invalid(`ring peer ${peer.uuid} listed twice`);
    seen.add(peer.uuid);
  }
  return Object.freeze(peers.map(freezePeer));
}

/** The error of a lookup on a ring without members. */
export function noPeers(): Error {
  return invalid("no peers available: the ring has no members");
}

/** The desired holders of a placement, frozen. */
export function holdersOf(placement: PeerPermutation): readonly string[] {
  return Object.freeze(placement.peers.slice(0, placement.replication));
}

/** A frozen permutation. */
export function permutation(peers: readonly string[], replication: number): PeerPermutation {
  return Object.freeze({ peers: Object.freeze(peers), replication });
}

/**
 * Memoizes the permutation of each distinct lookup outcome (a ketama point, a mod start index).
 * It stops adding once the permutations it holds reach RING_PERMUTATION_CACHE_ENTRIES_MAX member
 * slots in total, so its memory is bounded for any ring; outcomes past that are computed on each
 * lookup. Results are identical either way: the cache only saves work.
 */
export class PermutationCache {
  readonly #outcomes: number;
  /** Allocated on first use: a ring asked only for holders never needs it. */
  #slots: (PeerPermutation | undefined)[] | null = null;
  #remaining: number;

  constructor(outcomes: number, memberCount: number) {
    this.#outcomes = outcomes;
    this.#remaining = Math.floor(RING_PERMUTATION_CACHE_ENTRIES_MAX / Math.max(1, memberCount));
  }

  get(outcome: number): PeerPermutation | undefined {
    return this.#slots?.[outcome];
  }

  set(outcome: number, value: PeerPermutation): void {
    if (this.#remaining === 0) return;
    this.#slots ??= new Array<PeerPermutation | undefined>(this.#outcomes);
    this.#slots[outcome] = value;
    this.#remaining--;
  }
}

// One scratch buffer for the 24-byte form of the ref being looked up. Lookups are synchronous,
// so no two of them can interleave; the bytes never leave this module's callers.
const refScratch = new Uint8Array(BLOCK_REF_BYTES);
const refView = new DataView(refScratch.buffer);

/**
 * The 24-byte form of `ref` (BlockRef.toBytes) in a shared scratch buffer, valid until the next
 * call. Written here rather than by BlockRef.writeTo, which builds a DataView and two bigints per
 * call: this runs on every lookup.
 */
export function refBytes(ref: BlockRef): Uint8Array {
  // The volume field: bits 0-39 the volume id, bits 40-63 the block type.
  refView.setUint32(0, ref.volume >>> 0, true);
  refView.setUint32(4, (Math.floor(ref.volume / 2 ** 32) | (ref.type << 8)) >>> 0, true);
  refView.setBigUint64(8, ref.inode, true);
  refView.setBigUint64(16, ref.index, true);
  return refScratch;
}

/** One member line of `describe()`; stored text is escaped, as it may be shown on a terminal. */
export function describePeer(peer: PeerInfo): string {
  const address = peer.address === "" ? "-" : escapeText(peer.address);
  return `${escapeText(peer.uuid)}  address=${address}  totalBlocks=${peer.totalBlocks}`;
}

/** `describe()` of a ring with a member list. */
export function describeMembers(ring: Ring): string {
  const lines = [
    `Ring: ${ringTypeNames[ring.type]}`,
    `Version: ${ring.version}`,
    `Replication: ${ring.replication}`,
    `Peers:${ring.members().length === 0 ? " (none)" : ""}`,
    ...ring.members().map((peer) => `\t${describePeer(peer)}`),
  ];
  return lines.join("\n");
}

/** Options every member-list ring is built from. */
export interface MemberRingOptions {
  readonly version: number;
  readonly replication: number;
  readonly peers: readonly PeerInfo[];
}

/**
 * Base of rings that are a member list plus a placement function. Subclasses implement
 * `getPeers`; members, UUIDs, the message and the description live here.
 */
export abstract class MemberRing implements Ring {
  abstract readonly type: RingType;
  readonly version: number;
  readonly replication: number;
  readonly #members: readonly PeerInfo[];
  readonly #uuids: readonly string[];

  constructor(options: MemberRingOptions) {
    this.version = checkVersion(options.version);
    this.replication = options.replication;
    this.#members = freezePeers(options.peers);
    this.#uuids = Object.freeze(this.#members.map((peer) => peer.uuid));
  }

  members(): readonly PeerInfo[] {
    return this.#members;
  }

  memberUuids(): readonly string[] {
    return this.#uuids;
  }

  /** The replication of every permutation: min(configured, members). */
  protected effectiveReplication(): number {
    return Math.min(this.replication, this.#members.length);
  }

  abstract getPeers(ref: BlockRef): PeerPermutation;

  /** The first `replication` peers of `getPeers`; types that can find them faster override it. */
  getHolders(ref: BlockRef): readonly string[] {
    return holdersOf(this.getPeers(ref));
  }

  describe(): string {
    return describeMembers(this);
  }

  toMessage(): RingMessage {
    return {
      type: this.type,
      version: this.version,
      replicationFactor: this.replication,
      peers: this.#members.map(copyPeer),
      attrs: {},
    };
  }
}

/**
 * Base of the changeable rings (mod, ketama): each change builds a new ring one version higher
 * through `rebuild`. `samePeers` tells the subclass the member list did not change, so it may
 * share its (immutable) placement tables with the new ring.
 */
export abstract class ModifiableMemberRing extends MemberRing implements ModifiableRing {
  protected abstract rebuild(options: MemberRingOptions, samePeers: boolean): ModifiableRing;

  changeReplication(replication: number): ModifiableRing {
    checkRingReplication(this.type, this.members().length, replication);
    const options = { version: nextVersion(this.version), replication, peers: this.members() };
    return this.rebuild(options, true);
  }

  addPeers(peers: readonly PeerInfo[]): ModifiableRing {
    const known = new Set(this.memberUuids());
    const added: PeerInfo[] = [];
    for (const peer of peers) {
      if (typeof peer.uuid !== "string" || peer.uuid === "") throw invalid("peer without a UUID");
      if (known.has(peer.uuid)) continue;
      known.add(peer.uuid);
      added.push(peer);
    }
    if (added.length === 0) throw exists("every peer to add is already a member of the ring");
    const version = nextVersion(this.version);
    const options = {
      version,
      replication: this.replication,
      peers: [...this.members(), ...added],
    };
    return this.rebuild(options, false);
  }

  removePeers(uuids: readonly string[]): ModifiableRing {
    const removed = new Set(uuids);
    const peers = this.members().filter((peer) => !removed.has(peer.uuid));
    if (peers.length === this.members().length) {
      throw notExist("none of the peers to remove is a member of the ring");
    }
    if (replicationProblem(this.type, peers.length, this.replication) !== null) {
      throw invalid(
        `removing ${this.members().length - peers.length} peer(s) leaves ${peers.length} ` +
          `member(s), too few for replication ${this.replication}; lower it first ` +
          `(torus ctl ring set-replication ${Math.max(1, peers.length)})`,
      );
    }
    const options = { version: nextVersion(this.version), replication: this.replication, peers };
    return this.rebuild(options, false);
  }
}
