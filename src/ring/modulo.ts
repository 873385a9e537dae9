/**
 * The modulo ring (`mod`): member UUIDs sorted bytewise; a block starts at index
 * CRC-32-IEEE(24-byte BlockRef) mod n and takes the sorted list rotated to that index. Simple and
 * perfectly balanced, but changing the member count moves almost every block (n/(n+1) of the
 * primaries when one peer joins); `torus ringtool` shows it. Kept for fidelity and small,
 * fixed clusters; ketama is the default for clusters that grow.
 *
 * Invariants: the permutation depends only on the set of member UUIDs (not the order they were
 * listed in) and on the ref; every member appears exactly once.
 * @module
 */

import { type BlockRef, crc32 } from "../core/mod.ts";
import {
  type MemberRingOptions,
  ModifiableMemberRing,
  noPeers,
  permutation,
  PermutationCache,
  refBytes,
} from "./peers.ts";
import { type ModifiableRing, type PeerPermutation, RingType } from "./ring.ts";

/** Compares strings by UTF-16 code units, which orders ASCII UUIDs bytewise as Go's sort did. */
function compareUuids(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A modulo ring. */
export class ModRing extends ModifiableMemberRing {
  readonly type = RingType.Mod;
  readonly #sorted: readonly string[];
  /** One permutation per start index, built on first use. */
  readonly #rotations: PermutationCache;

  constructor(options: MemberRingOptions) {
    super(options);
    this.#sorted = Object.freeze([...this.memberUuids()].sort(compareUuids));
    const n = this.#sorted.length;
    this.#rotations = new PermutationCache(n, n);
  }

  /** The index in the sorted member list where `ref`'s permutation starts. */
  startIndex(ref: BlockRef): number {
    if (this.#sorted.length === 0) throw noPeers();
    return crc32(refBytes(ref)) % this.#sorted.length;
  }

  getPeers(ref: BlockRef): PeerPermutation {
    const start = this.startIndex(ref);
    const cached = this.#rotations.get(start);
    if (cached !== undefined) return cached;
    const sorted = this.#sorted;
    const result = permutation(
      [...sorted.slice(start), ...sorted.slice(0, start)],
      this.effectiveReplication(),
    );
    this.#rotations.set(start, result);
    return result;
  }

  override getHolders(ref: BlockRef): readonly string[] {
    const start = this.startIndex(ref);
    const sorted = this.#sorted;
    const holders = new Array<string>(this.effectiveReplication());
    for (let k = 0; k < holders.length; k++) holders[k] = sorted[(start + k) % sorted.length]!;
    return Object.freeze(holders);
  }

  protected rebuild(options: MemberRingOptions): ModifiableRing {
    return new ModRing(options);
  }
}
