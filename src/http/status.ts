/**
 * `/status`: the node's state as one JSON document (schema in docs/http.md). Pure: it renders
 * what the reporter gave, with the time passed in.
 *
 * Every field is always present; a field is null only where the schema says when (NBD off, a
 * failed store's counts, the volume list while the metadata service does not answer). Sizes are
 * bytes and counts are numbers; 64-bit values (fencing tokens) are text.
 * @module
 */

import type {
  AoeReport,
  ClusterReport,
  LiveReport,
  OpenVolumeReport,
  StoreReport,
  VolumeReport,
} from "./report.ts";

/** What {@link nodeStatus} renders. */
export interface StatusInput {
  readonly live: LiveReport;
  /** The volume list, or null when the metadata service did not give it. */
  readonly volumes: readonly VolumeReport[] | null;
  /** Why the metadata service is not usable, or null when it answered. */
  readonly metadataError: string | null;
  readonly nowMs: number;
}

/** The `/status` document (docs/http.md). */
export interface NodeStatus {
  readonly node: {
    readonly uuid: string;
    readonly version: string;
    /** Null for a cluster client. */
    readonly dataDir: string | null;
    readonly pid: number;
    readonly startedAt: string;
    readonly uptimeSeconds: number;
  };
  /** Null for a cluster client (no store of its own). */
  readonly store: {
    readonly name: string;
    readonly kind: string;
    readonly blockSizeBytes: number;
    readonly totalBlocks: number | null;
    readonly usedBlocks: number | null;
    readonly totalBytes: number | null;
    readonly usedBytes: number | null;
    readonly failed: boolean;
    readonly failure: string | null;
  } | null;

  readonly metadata:
    & ({ readonly kind: "embedded"; readonly path: string } | {
      readonly kind: "etcd";
      readonly endpoints: readonly string[];
    })
    & { readonly usable: boolean; readonly error: string | null };
  readonly nbd: {
    readonly address: string;
    readonly connections: number;
    readonly connectionsAccepted: number;
    readonly openVolumes: readonly OpenVolumeReport[];
  } | null;
  /** The AoE targets this node serves (`--aoe`), with their counters. */
  readonly aoe: readonly AoeReport[];
  readonly volumes: readonly VolumeStatus[] | null;
  /** The ring, the registered peers and the distributor's counters; null for a single node. */
  readonly cluster: ClusterReport | null;
}

/** One volume in `/status`. */
export interface VolumeStatus extends VolumeReport {
  /** Open for write on this node. */
  readonly open: boolean;
  /** Its writer lock is held (by this node or another). */
  readonly locked: boolean;
}

function storeStatus(store: StoreReport): NonNullable<NodeStatus["store"]> {
  const blocksToBytes = (blocks: number | null) =>
    blocks === null ? null : blocks * store.blockSizeBytes;
  return {
    name: store.name,
    kind: store.kind,
    blockSizeBytes: store.blockSizeBytes,
    totalBlocks: store.totalBlocks,
    usedBlocks: store.usedBlocks,
    totalBytes: blocksToBytes(store.totalBlocks),
    usedBytes: blocksToBytes(store.usedBlocks),
    failed: store.failure !== null,
    failure: store.failure,
  };
}

/** Renders the `/status` document. */
export function nodeStatus(input: StatusInput): NodeStatus {
  const { live } = input;
  const openIds = new Set(live.openVolumes.map((volume) => volume.id));
  return {
    node: {
      uuid: live.node.uuid,
      version: live.node.version,
      dataDir: live.node.dataDir,
      pid: live.node.pid,
      startedAt: new Date(live.node.startedAtMs).toISOString(),
      uptimeSeconds: Math.max(0, Math.round(input.nowMs - live.node.startedAtMs) / 1000),
    },
    store: live.store === null ? null : storeStatus(live.store),
    metadata: {
      ...live.metadata,
      usable: input.metadataError === null,
      error: input.metadataError,
    },
    nbd: live.nbd === null ? null : {
      address: live.nbd.address,
      connections: live.nbd.connectionsOpen,
      connectionsAccepted: live.nbd.connectionsAccepted,
      openVolumes: live.openVolumes,
    },
    aoe: live.aoe,
    volumes: input.volumes === null ? null : input.volumes.map((volume) => ({
      ...volume,
      open: openIds.has(volume.id),
      locked: volume.lockHolder !== null,
    })),
    cluster: live.cluster,
  };
}

/** The document as the response body: indented, one trailing newline. */
export function renderStatus(input: StatusInput): string {
  return JSON.stringify(nodeStatus(input), null, 2) + "\n";
}
