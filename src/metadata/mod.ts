/**
 * The metadata service: cluster settings, the ring, peers, leases, volumes, volume locks and
 * snapshots, written once over the KvStore contract (kv.ts) and run on etcd, the embedded store,
 * or (in unit tests) the in-memory store.
 *
 * Role interfaces are in metadata.ts (ClusterMetadata, LeaseMetadata, PeerMetadata,
 * VolumeMetadata, BlockVolumeMetadata, SnapshotMetadata) and `createMetadataService` composes
 * them. Key layout and value encodings (the original's, under a configurable prefix) are in
 * keys.ts.
 * @module
 */

export * from "./kv.ts";
export * from "./kv_memory.ts";
export * from "./keys.ts";
export * from "./metadata.ts";
export * from "./service.ts";
export { CAS_ATTEMPTS_MAX, notInitialised } from "./context.ts";
export { checkInitOptions, checkRingSuccessor } from "./cluster.ts";
export { BLOCK_VOLUME_TYPE, checkVolumeSize } from "./volumes.ts";
