/**
 * The empty ring: no members. Every lookup fails with `invalid` ("no peers available"), which the
 * distributor reports for the block. It is the ring of a freshly initialised cluster before any
 * peer joins; it cannot be changed (a new ring of another type replaces it).
 * @module
 */

import type { BlockRef } from "../core/mod.ts";
import { MemberRing, noPeers } from "./peers.ts";
import { type PeerPermutation, RingType } from "./ring.ts";

/** A ring without members. */
export class EmptyRing extends MemberRing {
  readonly type = RingType.Empty;

  constructor(options: { version: number; replication: number }) {
    super({ ...options, peers: [] });
  }

  getPeers(_ref: BlockRef): PeerPermutation {
    throw noPeers();
  }
}
