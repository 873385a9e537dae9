/**
 * The one rule for a ring's replication factor R, used by every path that makes a ring: `init`,
 * `ring set-replication`, `ring manual-change`, `peer add|remove` and the ring codec. Before it,
 * each command had its own check and they disagreed (`manual-change -r 1000` on a ring without
 * members and `--type single -r 3` were accepted while `set-replication 1` was refused).
 *
 * - An empty ring places nothing: R is 0.
 * - A single ring keeps every block on its one member: R is 1.
 * - A mod or ketama ring: 1 <= R <= max(members, REPLICATION_DEFAULT). R may not name more copies
 *   than there are members, except that any ring may keep the default of 2 copies while it has
 *   fewer members, so a cluster can be set up before its nodes join (`init` writes a ketama ring
 *   with R = 2 and no members) and grow one node at a time. Lookups use min(R, members).
 * - A union ring (during a rebalance) has the R of its new ring, which obeys these rules.
 *
 * Removing members is a change like any other: removing the third member of a ring with R = 3
 * is refused with advice to lower R first, so a ring never claims more copies than it can keep.
 * @module
 */

import { invalid, REPLICATION_DEFAULT } from "../core/mod.ts";
import { type RingType, RingType as Types, ringTypeNames } from "./ring.ts";

/** The smallest and largest replication a ring of `type` with `memberCount` members may have. */
export function replicationRange(
  type: RingType,
  memberCount: number,
): { readonly min: number; readonly max: number } {
  switch (type) {
    case Types.Empty:
      return { min: 0, max: 0 };
    case Types.Single:
      return { min: 1, max: 1 };
    default:
      return { min: 1, max: Math.max(memberCount, REPLICATION_DEFAULT) };
  }
}

/** Why `replication` is not valid for a ring of `type` with `memberCount` members; null if it is. */
export function replicationProblem(
  type: RingType,
  memberCount: number,
  replication: number,
): string | null {
  const { min, max } = replicationRange(type, memberCount);
  if (Number.isSafeInteger(replication) && replication >= min && replication <= max) return null;
  if (type === Types.Empty) {
    return `an empty ring places nothing: its replication is 0, got ${replication}`;
  }
  if (type === Types.Single) {
    return `a single ring keeps each block on its one member: its replication is 1, got ${replication}`;
  }
  if (!Number.isSafeInteger(replication) || replication < min) {
    return `replication must be a whole number of at least 1, got ${replication}`;
  }
  const name = ringTypeNames[type];
  const beyondDefault = memberCount < REPLICATION_DEFAULT
    ? ` (up to ${REPLICATION_DEFAULT} is allowed before the nodes join)`
    : "";
  return `replication ${replication} exceeds the ${memberCount} member(s) of the ${name} ring` +
    beyondDefault;
}

/** Checks `replication` for a ring of `type` with `memberCount` members; `invalid` if it breaks the rule. */
export function checkRingReplication(
  type: RingType,
  memberCount: number,
  replication: number,
): number {
  const problem = replicationProblem(type, memberCount, replication);
  if (problem !== null) throw invalid(problem);
  return replication;
}
