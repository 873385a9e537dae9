/**
 * What a running `torus serve` tells its HTTP status server (src/http/report.ts): its identity,
 * its block store's counters and state, its NBD server's counters, the volumes open here, and,
 * through the metadata service, every volume with its lock. Reading the in-memory part never
 * waits and never throws (a failed store reports its failure instead of its counts).
 * @module
 */

import { NBD_COMMAND_LABELS, type NbdServer, type VolumeService } from "../block/mod.ts";
import { formatHostPort, type HostPort } from "../cli/mod.ts";
import { VERSION } from "../core/mod.ts";
import type {
  AoeReport,
  ClusterReport,
  LiveReport,
  MetadataReport,
  NbdReport,
  NodeReporter,
  StoreReport,
  VolumeReport,
} from "../http/mod.ts";
import type { MetadataService } from "../metadata/mod.ts";
import type { MonitoredBlockStore } from "../storage/mod.ts";
import type { ClusterMember } from "../server/mod.ts";
import { ringTypeNames } from "../ring/mod.ts";
import type { AoeExport } from "./aoe_export.ts";

/** The parts of a node that {@link ServeReporter} reads. */
export interface ServeReporterParts {
  readonly uuid: string;
  /** Null for a cluster client (`torus blk nbdserve`, `torus aoe -C`). */
  readonly dataDir: string | null;
  readonly startedAtMs: number;
  /** Null for a cluster client: it has no store of its own. */
  readonly store: MonitoredBlockStore | null;
  readonly metadata: MetadataService;
  readonly metadataWhere: MetadataReport;
  readonly volumes: VolumeService;
  readonly nbd: { readonly server: NbdServer; readonly address: HostPort } | null;
  /** The AoE targets (read at each report: they are started after the reporter is made). */
  readonly aoe: readonly AoeExport[];
  /** The node's place in the cluster; null for a single node. */
  readonly member: ClusterMember | null;
}

/** The cluster part of the report. */
export function clusterReport(member: ClusterMember): ClusterReport {
  const ring = member.ring();
  const stats = member.distributor.stats;
  return {
    peerAddress: member.server?.address ?? null,
    ring: {
      version: ring.version,
      type: ringTypeNames[ring.type],
      replication: ring.replication,
      members: [...ring.memberUuids()],
    },
    peers: member.peers().map((peer) => ({
      uuid: peer.uuid,
      address: peer.address,
      totalBlocks: Number(peer.totalBlocks),
      usedBlocks: Number(peer.usedBlocks),
      lastSeenMs: Number(peer.lastSeen / 1_000_000n),
      rebalancing: peer.rebalanceInfo?.rebalancing ?? false,
    })),
    rebalance: member.rebalancer?.progress() ?? null,
    scrub: member.scrubber?.progress() ?? null,
    fence: member.fence === null ? null : {
      refusedStaleWriters: member.fence.refusedStaleWriters,
      refusedStaleRing: member.fence.refusedStaleRing,
    },
    heartbeats: member.heartbeatCount,
    distributor: {
      blockRequests: stats.blockRequests,
      cachedBlocks: stats.cachedBlocks,
      localBlocks: stats.localBlocks,
      localBlockFails: stats.localBlockFails,
      peerBlocks: Object.fromEntries(stats.peerBlocks),
      peerBlockFails: Object.fromEntries(stats.peerBlockFails),
      requestFailures: stats.requestFailures,
      repairedBlocks: stats.repairedBlocks,
      resyncedBlocks: stats.resyncedBlocks,
      staleBlocks: member.distributor.staleBlocks(),
      pulledBlocks: stats.pulledBlocks,
      degradedWrites: stats.degradedWrites,
      markedBlocks: member.staleMarks.markedBlocks(),
    },
  };
}

/** See the module doc. */
export class ServeReporter implements NodeReporter {
  readonly #parts: ServeReporterParts;

  constructor(parts: ServeReporterParts) {
    this.#parts = parts;
  }

  live(): LiveReport {
    const parts = this.#parts;
    return {
      node: {
        uuid: parts.uuid,
        version: VERSION,
        dataDir: parts.dataDir,
        pid: Deno.pid,
        startedAtMs: parts.startedAtMs,
      },
      store: parts.store === null ? null : storeReport(parts.store),
      metadata: parts.metadataWhere,
      nbd: parts.nbd === null ? null : nbdReport(parts.nbd.server, parts.nbd.address),
      aoe: parts.aoe.map(aoeReport),
      openVolumes: parts.volumes.openVolumes().map((volume) => ({
        ...volume,
        fencingToken: volume.fencingToken.toString(),
      })),
      cluster: parts.member === null ? null : clusterReport(parts.member),
    };
  }

  async volumes(): Promise<VolumeReport[]> {
    const metadata = this.#parts.metadata;
    const { volumes } = await metadata.volumes.listVolumes();
    const names = new Map(volumes.map((volume) => [volume.id, volume.name]));
    return await Promise.all(volumes.map(async (volume): Promise<VolumeReport> => {
      const lock = await metadata.blockVolumes.lockStatus(volume.id);
      const parent = volume.parent;
      return {
        name: volume.name,
        id: volume.id,
        type: volume.type,
        sizeBytes: volume.sizeBytes,
        cloneOf: parent === null
          ? null
          : `${names.get(parent.volumeId) ?? `#${parent.volumeId}`}@${parent.snapshot}`,
        lockHolder: lock.state === "locked" ? lock.holder : null,
      };
    }));
  }

  async checkMetadata(): Promise<void> {
    await this.#parts.metadata.cluster.globalMetadata();
  }
}

function storeReport(store: MonitoredBlockStore): StoreReport {
  const failure = store.failure;
  return {
    name: store.name,
    kind: store.kind,
    blockSizeBytes: store.blockSizeBytes,
    // A failed (or closing) store refuses every call, these included.
    totalBlocks: orNull(() => store.totalBlocks()),
    usedBlocks: orNull(() => store.usedBlocks()),
    failure: failure === null ? null : failure.message,
    counters: { ...store.stats },
  };
}

function orNull(read: () => number): number | null {
  try {
    return read();
  } catch {
    return null;
  }
}

function aoeReport(exported: AoeExport): AoeReport {
  const { spec } = exported;
  return {
    volume: spec.volume,
    interface: spec.interfaceName,
    mac: exported.mac,
    address: `e${spec.major}.${spec.minor}`,
    readOnly: exported.readOnly,
    sectorsPerFrame: exported.sectorsPerFrame,
    counters: { ...exported.stats() },
  };
}

function nbdReport(server: NbdServer, address: HostPort): NbdReport {
  const stats = server.stats;
  const requestsByCommand: Record<string, number> = {};
  NBD_COMMAND_LABELS.forEach((label, type) => {
    requestsByCommand[label] = stats.requestsByCommand[type] ?? 0;
  });
  return {
    address: formatHostPort(address),
    connectionsOpen: stats.connectionsOpen,
    connectionsAccepted: stats.connectionsAccepted,
    requestsByCommand,
    errorReplies: stats.errorReplies,
    protocolErrors: stats.protocolErrors,
    readBytes: stats.readBytes,
    writtenBytes: stats.writtenBytes,
  };
}
