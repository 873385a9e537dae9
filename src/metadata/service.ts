/**
 * The factory that composes the metadata roles over one KvStore, a key prefix and injected clock
 * and randomness. This is the only place the role implementations are named; consumers see the
 * interfaces of metadata.ts.
 * @module
 */

import { type Clock, CryptoRandom, logger, type Random, systemClock } from "../core/mod.ts";
import type { KvStore } from "./kv.ts";
import { DEFAULT_METADATA_PREFIX, MetadataKeys } from "./keys.ts";
import type { MetadataContext } from "./context.ts";
import { ClusterMetadataImpl, LeaseMetadataImpl, PeerMetadataImpl } from "./cluster.ts";
import { BlockVolumeMetadataImpl, SnapshotMetadataImpl, VolumeMetadataImpl } from "./volumes.ts";
import { VolumeRequestMetadataImpl } from "./requests.ts";
import { StaleMarkMetadataImpl } from "./stale_marks.ts";
import type { MetadataService } from "./metadata.ts";

/** Options of {@link createMetadataService}. */
export interface MetadataServiceOptions {
  /** Key prefix; must start and end with `/`. Default `/github.com/coreos/torus/`. */
  readonly prefix?: string;
  /** Time source for peer timestamps, snapshot times and staleness. Default: the system clock. */
  readonly clock?: Clock;
  /** Randomness for UUIDs and retry jitter. Default: crypto randomness. */
  readonly random?: Random;
  /** Whether `close()` closes the store too. Default true. */
  readonly ownsStore?: boolean;
}

/**
 * Builds the metadata service over `kv`.
 * @example
 * ```ts
 * import { createMetadataService, MemoryKvStore } from "./mod.ts";
 * await using mds = createMetadataService(new MemoryKvStore(), { prefix: "/doc/" });
 * console.log(await mds.cluster.isInitialised()); // false
 * ```
 */
export function createMetadataService(
  kv: KvStore,
  options: MetadataServiceOptions = {},
): MetadataService {
  const context: MetadataContext = {
    kv,
    keys: new MetadataKeys(options.prefix ?? DEFAULT_METADATA_PREFIX),
    clock: options.clock ?? systemClock,
    random: options.random ?? new CryptoRandom(),
    log: logger("metadata"),
  };
  const ownsStore = options.ownsStore ?? true;
  let closing: Promise<void> | null = null;
  const close = () => {
    closing ??= ownsStore ? kv.close() : Promise.resolve();
    return closing;
  };
  return {
    cluster: new ClusterMetadataImpl(context),
    leases: new LeaseMetadataImpl(context),
    peers: new PeerMetadataImpl(context),
    volumes: new VolumeMetadataImpl(context),
    blockVolumes: new BlockVolumeMetadataImpl(context),
    snapshots: new SnapshotMetadataImpl(context),
    requests: new VolumeRequestMetadataImpl(context),
    staleMarks: new StaleMarkMetadataImpl(context),
    keys: context.keys,
    kv,
    close,
    [Symbol.asyncDispose]: close,
  };
}
