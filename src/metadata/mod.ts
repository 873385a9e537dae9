/**
 * Metadata: the KvStore boundary (kv.ts) and its two drivers, etcd (etcd.ts) for clusters and
 * embedded SQLite (embedded.ts) for one machine, plus small recipes over any store (kv_ops.ts).
 * This is the only module that talks to etcd or opens the metadata database.
 *
 * On top of it, the metadata service: cluster settings, the ring, peers, leases, volumes, volume
 * locks, snapshots and stale marks (stale_marks.ts), written once over KvStore, so etcd, the embedded store and (in unit tests)
 * the in-memory store (kv_memory.ts) run the same code. Role interfaces are in metadata.ts
 * (ClusterMetadata, LeaseMetadata, PeerMetadata, VolumeMetadata, BlockVolumeMetadata,
 * SnapshotMetadata, StaleMarkMetadata) and `createMetadataService` (service.ts) composes them. The key layout and
 * value encodings (the original's, under a configurable prefix) are in keys.ts.
 * @module
 */

import type { KvStore } from "./kv.ts";
import type { EtcdKvOptions } from "./etcd.ts";

export * from "./kv.ts";
export { atomicModify, type AtomicModifyResult, getWithRevision } from "./kv_ops.ts";
export type { EtcdKvOptions } from "./etcd.ts";
export { type EmbeddedKv, type EmbeddedKvOptions, openEmbeddedKv } from "./embedded.ts";
export {
  bootClock,
  type LeaseClock,
  leaseClockOf,
  type LeaseTime,
  monotonicClock,
} from "./lease_clock.ts";
export * from "./kv_memory.ts";
export * from "./keys.ts";
export * from "./metadata.ts";
export * from "./service.ts";
export { CAS_ATTEMPTS_MAX, notInitialised } from "./context.ts";
export { checkInitOptions, checkRingSuccessor } from "./cluster.ts";
export { BLOCK_VOLUME_TYPE, checkVolumeSize } from "./volumes.ts";
export {
  compareBlockRefs,
  decodeStaleMarks,
  encodeStaleMarks,
  STALE_REFS_MAX,
  type StaleMarks,
} from "./stale_marks.ts";

/**
 * Opens the etcd driver (etcd.ts). npm:etcd3 and gRPC load on first use only: they cost about
 * 0.3 s of start-up, which every command on the embedded store would otherwise pay.
 */
export async function openEtcdKv(options: EtcdKvOptions): Promise<KvStore> {
  const etcd = await import("./etcd.ts");
  return await etcd.openEtcdKv(options);
}
