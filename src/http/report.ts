/**
 * The HTTP front end's boundary: what a node tells its status server. The node (src/cmd, the
 * composition root) implements {@link NodeReporter} over its own parts; this folder only renders
 * what it is given (status.ts, metrics.ts) and serves it (server.ts), so it never reaches into a
 * storage engine or the NBD server itself.
 *
 * Two speeds: {@link NodeReporter.live} is synchronous and reads only counters and state held in
 * memory (cheap enough for every scrape and health probe); the volume list and the metadata check
 * are calls to the metadata service, bounded by a deadline by the caller.
 *
 * The cluster adds its sections (peers, ring, rebalance progress) here as further fields of
 * {@link LiveReport}; the renderers add them as further top-level keys of `/status` and further
 * metric families, without changing the ones below.
 * @module
 */

/** Counters of a block store (names as BlockStoreStats). */
export interface StoreCounters {
  readonly readBlocks: number;
  readonly readBytes: number;
  readonly failedBlocks: number;
  readonly writtenBlocks: number;
  readonly writtenBytes: number;
  readonly failedWrittenBlocks: number;
  readonly deletedBlocks: number;
  readonly flushes: number;
}

/** The node's block store. */
export interface StoreReport {
  /** Store name (`current`), the `storage` label of the metrics. */
  readonly name: string;
  /** Engine (`file`). */
  readonly kind: string;
  readonly blockSizeBytes: number;
  /** Capacity in blocks; null once the store failed (it answers nothing any more). */
  readonly totalBlocks: number | null;
  /** Blocks stored; null once the store failed. */
  readonly usedBlocks: number | null;
  /** Why the store failed (it refuses every call until restarted), or null while it works. */
  readonly failure: string | null;
  readonly counters: StoreCounters;
}

/** Where the metadata lives. */
export type MetadataReport =
  | { readonly kind: "embedded"; readonly path: string }
  | { readonly kind: "etcd"; readonly endpoints: readonly string[] };

/** A volume open for write on this node. */
export interface OpenVolumeReport {
  readonly name: string;
  readonly id: number;
  readonly sizeBytes: number;
  readonly generation: number;
  /** Handles on it: each NBD connection to it holds one. */
  readonly handles: number;
  readonly state: "open" | "closing" | "failed";
  readonly failure: string | null;
  readonly writtenBytes: number;
  /** The fencing token of its lock acquisition (a 64-bit number, as text). */
  readonly fencingToken: string;
}

/** The NBD server. */
export interface NbdReport {
  /** `HOST:PORT` it listens on. */
  readonly address: string;
  readonly connectionsOpen: number;
  readonly connectionsAccepted: number;
  /** Requests by command (`read`, `write`, `flush`, …). */
  readonly requestsByCommand: Readonly<Record<string, number>>;
  /** Requests answered with an error. */
  readonly errorReplies: number;
  /** Connections closed for garbage (bad magic, oversized write, bad handshake). */
  readonly protocolErrors: number;
  readonly readBytes: number;
  readonly writtenBytes: number;
}

/** One AoE target (`--aoe`): where it is and its counters (block/aoe/target.ts). */
export interface AoeReport {
  /** `VOLUME` or `VOLUME@SNAPSHOT`. */
  readonly volume: string;
  readonly interface: string;
  /** aa:bb:cc:dd:ee:ff of the interface. */
  readonly mac: string;
  /** `eMAJOR.MINOR` (shelf.slot). */
  readonly address: string;
  readonly readOnly: boolean;
  readonly sectorsPerFrame: number;
  /** The target's counters (AoeTargetStats). */
  readonly counters: Readonly<Record<string, number>>;
}

/** What a node's rebalancer did (src/distributor/rebalancer.ts: RebalanceProgress). */
export interface RebalanceReport {
  /** A ring change has not been fully applied by this node yet. */
  readonly rebalancing: boolean;
  readonly ringVersion: number;
  /** Refs of the current (or last) pass looked at, of the refs it started with. */
  readonly passScannedBlocks: number;
  readonly passTotalBlocks: number;
  readonly passSentBlocks: number;
  readonly lastPassSentBlocks: number;
  /** When the last complete pass ended (epoch ms). */
  readonly lastFinishMs: number | null;
  readonly sentBlocks: number;
  readonly sentBytes: number;
  readonly deletedBlocks: number;
  readonly failedCalls: number;
  readonly passes: number;
}

/** What a node's scrubber did (src/distributor/scrubber.ts: ScrubProgress). */
export interface ScrubReport {
  readonly passes: number;
  readonly scrubbedBlocks: number;
  readonly damagedBlocks: number;
  readonly repairedBlocks: number;
  readonly unrepairedBlocks: number;
  readonly passScannedBlocks: number;
  readonly passTotalBlocks: number;
  readonly lastFinishMs: number | null;
}

/** What a cluster node (or client) knows of the cluster and its distributor's counters. */
export interface ClusterReport {
  /** Where peers reach this node; null for a client. */
  readonly peerAddress: string | null;
  readonly ring: {
    readonly version: number;
    readonly type: string;
    readonly replication: number;
    readonly members: readonly string[];
  };
  /** The registered nodes at the last heartbeat. */
  readonly peers: readonly {
    readonly uuid: string;
    readonly address: string;
    readonly totalBlocks: number;
    readonly usedBlocks: number;
    /** Last heartbeat (epoch ms). */
    readonly lastSeenMs: number;
    /** It has not yet applied the last ring change it saw. */
    readonly rebalancing: boolean;
  }[];
  /** This node's rebalancer (null for a client). */
  readonly rebalance: RebalanceReport | null;
  /** This node's scrubber (null for a client). */
  readonly scrub: ScrubReport | null;
  /** Changes this node's fence refused (null for a client). */
  readonly fence: {
    /** From writers whose volume lock was taken over (an older fencing token). */
    readonly refusedStaleWriters: number;
    /** Placed by a ring older than this node's (the sender reads the ring again). */
    readonly refusedStaleRing: number;
  } | null;
  readonly heartbeats: number;
  readonly distributor: {
    readonly blockRequests: number;
    readonly cachedBlocks: number;
    readonly localBlocks: number;
    readonly localBlockFails: number;
    readonly peerBlocks: Readonly<Record<string, number>>;
    readonly peerBlockFails: Readonly<Record<string, number>>;
    readonly requestFailures: number;
    readonly repairedBlocks: number;
    readonly resyncedBlocks: number;
    /** Blocks some holder still lacks changes of (a flush fails while any are left). */
    readonly staleBlocks: number;
    /** Blocks copied to new holders from where an earlier ring placed them, on a write. */
    readonly pulledBlocks: number;
    /** Changes that counted with fewer holders than R (the others durably marked stale). */
    readonly degradedWrites: number;
    /** Blocks some node is durably marked as lacking changes of, cluster-wide (etcd). */
    readonly markedBlocks: number;
  };
}

export interface LiveReport {
  readonly node: {
    readonly uuid: string;
    readonly version: string;
    /** Null for a cluster client (`torus blk nbdserve`, `torus aoe -C`): it has no data dir. */
    readonly dataDir: string | null;
    readonly pid: number;
    /** When the node started serving (epoch ms). */
    readonly startedAtMs: number;
  };
  /** Null for a cluster client, which has no store of its own. */
  readonly store: StoreReport | null;
  readonly metadata: MetadataReport;
  /** Null when the node serves no NBD (`--nbd` not given). */
  readonly nbd: NbdReport | null;
  /** The AoE targets (empty without `--aoe`). */
  readonly aoe: readonly AoeReport[];
  readonly openVolumes: readonly OpenVolumeReport[];
  /** Null for a single node (no -C and --peer-address). */
  readonly cluster: ClusterReport | null;
}

/** A volume as the metadata service lists it, with its lock. */
export interface VolumeReport {
  readonly name: string;
  readonly id: number;
  readonly type: string;
  readonly sizeBytes: number;
  /** For a clone, `VOLUME@SNAPSHOT` it was made from; null otherwise. */
  readonly cloneOf: string | null;
  /** The UUID of the node holding its writer lock, or null when it is unlocked. */
  readonly lockHolder: string | null;
}

/** What a node gives its status server; see the module doc. */
export interface NodeReporter {
  /** The in-memory state now. Never throws, never waits. */
  live(): LiveReport;
  /** Every volume with its lock, from the metadata service. */
  volumes(): Promise<VolumeReport[]>;
  /** Resolves when the metadata service answers a read; throws why not otherwise. */
  checkMetadata(): Promise<void>;
}
