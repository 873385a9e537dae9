/**
 * Metadata: the KvStore boundary (kv.ts) and its drivers, etcd (etcd.ts) and embedded SQLite
 * (embedded.ts). This is the only module that talks to etcd.
 * @module
 */

export * from "./kv.ts";
export { openEtcdKv } from "./etcd.ts";
export type { EtcdKvOptions } from "./etcd.ts";
