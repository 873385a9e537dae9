/**
 * Placement rings: pure functions from a BlockRef to an ordered permutation of peers.
 *
 * Invariants every ring keeps (checked by ring_contract.ts for each type): a lookup returns every
 * member exactly once with replication = min(configured, members); the same ring contents give
 * the same placements in any process; rings are immutable and each change returns a new ring one
 * version higher; `ringFromMessage(ring.toMessage())` rebuilds the same ring. This module does no
 * I/O and reads no clock.
 * @module
 */

export * from "./ring.ts";
export {
  createMeasurementKetamaRing,
  createModifiableRing,
  createRing,
  type CreateRingOptions,
  createUnionRing,
  ringFromMessage,
  ringTypeFromName,
} from "./create.ts";
export { KETAMA_POINTS_PER_PEER_MAX, ketamaPointCounts } from "./ketama.ts";
export { RING_VERSION_MAX } from "./peers.ts";
export { checkRingReplication, replicationProblem, replicationRange } from "./replication.ts";
