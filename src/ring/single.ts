/**
 * The single ring: exactly one member, which holds every block. It is the ring of a one-node
 * cluster and cannot be changed (a mod or ketama ring replaces it when a second peer joins).
 * @module
 */

import { type BlockRef, invalid } from "../core/mod.ts";
import type { PeerInfo } from "../models/mod.ts";
import { MemberRing, permutation } from "./peers.ts";
import { type PeerPermutation, RingType } from "./ring.ts";

/** A ring with one member. */
export class SingleRing extends MemberRing {
  readonly type = RingType.Single;
  readonly #permutation: PeerPermutation;

  constructor(options: { version: number; replication: number; peers: readonly PeerInfo[] }) {
    if (options.peers.length !== 1) {
      throw invalid(`a single ring needs exactly 1 peer, got ${options.peers.length}`);
    }
    super(options);
    this.#permutation = permutation([...this.memberUuids()], this.effectiveReplication());
  }

  getPeers(_ref: BlockRef): PeerPermutation {
    return this.#permutation;
  }
}
