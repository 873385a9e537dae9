/**
 * Metadata: the KvStore boundary (kv.ts) and its two drivers, etcd (etcd.ts) for clusters and
 * embedded SQLite (embedded.ts) for one machine, plus small recipes over any store (kv_ops.ts).
 * This is the only module that talks to etcd or opens the metadata database.
 * @module
 */

export * from "./kv.ts";
export { atomicModify, type AtomicModifyResult, getWithRevision } from "./kv_ops.ts";
export { type EtcdKvOptions, openEtcdKv } from "./etcd.ts";
export { type EmbeddedKv, type EmbeddedKvOptions, openEmbeddedKv } from "./embedded.ts";
