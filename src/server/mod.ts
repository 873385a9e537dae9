/**
 * The node and client composition layer: what a `torus serve` or a client process holds beside
 * its storage and metadata (the lease its locks live under; in the cluster, the heartbeat, the
 * distributor and the peer protocols).
 * @module
 */

export * from "./lease_keeper.ts";
export * from "./cluster_member.ts";
export * from "./fenced_store.ts";
