/**
 * The KvStore drivers a command can open, behind one small interface so the command functions can
 * be unit-tested over the in-memory store and so this is the one place that names the real ones.
 * @module
 */

import { type KvStore, openEmbeddedKv, openEtcdKv } from "../metadata/mod.ts";

/** Options of the etcd driver (see src/metadata/etcd.ts). */
export interface EtcdDriverOptions {
  readonly endpoints: readonly string[];
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly caFile?: string;
  readonly callTimeoutMs?: number;
  readonly connectTimeoutMs?: number;
}

/**
 * Options of the embedded driver (see src/metadata/embedded.ts). Its leases follow the machine's
 * boot-time clock, not an injected wall clock, so a clock step cannot expire them.
 */
export interface EmbeddedDriverOptions {
  readonly path: string;
}

/** Constructors of the two production drivers. */
export interface KvDrivers {
  openEtcd(options: EtcdDriverOptions): Promise<KvStore>;
  openEmbedded(options: EmbeddedDriverOptions): Promise<KvStore>;
}

/** The production drivers. */
export const defaultDrivers: KvDrivers = {
  openEtcd: (options) => openEtcdKv(options),
  openEmbedded: (options) => openEmbeddedKv(options),
};
