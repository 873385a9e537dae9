/**
 * Placement rings: pure functions from a BlockRef to an ordered permutation of peers.
 * @module
 */

export * from "./ring.ts";
