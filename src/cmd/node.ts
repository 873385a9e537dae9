/**
 * What a running `torus serve` holds once its store and metadata are open: the lease its volume
 * locks live under, the volumes (VolumeService), the NBD server, the HTTP status server, the
 * periodic garbage collection, and `<data-dir>/serve.json`, which tells `torus ctl` on the same machine where to reach this
 * node's NBD server (dump and load go through it while serve owns the store).
 * Closing stops them in the order that keeps every flush promise: HTTP first (it only reports),
 * NBD next (it answers what is in flight), then the volumes (flush, unlock), then the lease.
 * @module
 */

import {
  type Clock,
  ErrorCode,
  errorMessage,
  logger,
  type Random,
  TorusError,
} from "../core/mod.ts";
import type { MetadataService } from "../metadata/mod.ts";
import type { MonitoredBlockStore } from "../storage/mod.ts";
import {
  ClusterMember,
  type ClusterMemberOptions,
  FileFenceRecords,
  LeaseKeeper,
} from "../server/mod.ts";
import { collectGarbage, NbdServer, VolumeService } from "../block/mod.ts";
import { listenOrExplain } from "./listen.ts";
import { type AoeExport, type AoeExportSpec, startAoeExport } from "./aoe_export.ts";
import { formatHostPort, type HostPort } from "../cli/mod.ts";
import { HttpStatusServer, type MetadataReport } from "../http/mod.ts";
import { ServeReporter } from "./node_report.ts";
import { readFileBounded, writeFileAtomic } from "../sys/mod.ts";

const log = logger("serve");

/** The file a serve writes into its data dir for local clients. */
export const SERVE_INFO_FILE = "serve.json";
const SERVE_INFO_MAX_BYTES = 4096;

/** What `serve.json` says. */
export interface ServeInfo {
  readonly pid: number;
  /** `HOST:PORT` of the NBD server, or null when serve runs without one. */
  readonly nbd: string | null;
}

/** Options of {@link startNode}. */
export interface NodeOptions {
  readonly dataDir: string;
  readonly uuid: string;
  readonly metadata: MetadataService;
  /** Where the metadata lives, as `/status` shows it. */
  readonly metadataWhere: MetadataReport;
  readonly store: MonitoredBlockStore;
  readonly clock: Clock;
  readonly random?: Random;
  /** Where the NBD server listens; null for none. */
  readonly nbd: HostPort | null;
  /** Where the HTTP status server listens; null for none. */
  readonly http: HostPort | null;
  /** Volumes served as AoE targets (`--aoe`), and their background flush period. */
  readonly aoe?: {
    readonly exports: readonly AoeExportSpec[];
    readonly syncIntervalMs: number;
    readonly writeCache: boolean;
  };
  /** Period of garbage collection; 0 disables it. */
  readonly gcIntervalMs: number;
  /**
   * A member of a cluster (`-C` with `--peer-address`): serves its store to peers, and its
   * volumes are written through the distributor. Null: a single node, volumes in its store.
   */
  readonly cluster: ClusterSettings | null;
}

/** What a cluster member needs beyond what the node already has. */
export type ClusterSettings =
  & Pick<
    ClusterMemberOptions,
    | "protocols"
    | "autoJoin"
    | "readLevel"
    | "writeLevel"
    | "readCacheBytes"
    | "rebalanceRateBytesPerSecond"
    | "scrub"
    | "minCopies"
  >
  & { readonly peerAddress: string };

/** A running node; see the module doc. */
export interface Node extends AsyncDisposable {
  readonly volumes: VolumeService;
  /** Where the NBD server listens (the port chosen when 0 was asked), or null. */
  readonly nbdAddress: HostPort | null;
  /** Where the HTTP status server listens (the port chosen when 0 was asked), or null. */
  readonly httpAddress: HostPort | null;
  /** The node's place in the cluster, or null for a single node. */
  readonly member: ClusterMember | null;
  /** The AoE targets it serves. */
  readonly aoeExports: readonly AoeExport[];
  close(): Promise<void>;
}

/** Starts the node's services over its open store and metadata. */
export async function startNode(options: NodeOptions): Promise<Node> {
  const leases = await LeaseKeeper.start({ leases: options.metadata.leases, clock: options.clock });
  let member: ClusterMember | null = null;
  if (options.cluster !== null) {
    try {
      const { peerAddress, ...settings } = options.cluster;
      member = await ClusterMember.start({
        ...settings,
        uuid: options.uuid,
        metadata: options.metadata,
        leases,
        node: {
          local: options.store,
          fenceRecords: new FileFenceRecords(`${options.dataDir}/metadata/fences.json`),
          peerAddress,
        },
        clock: options.clock,
      });
    } catch (error) {
      await leases.close();
      throw error;
    }
  }
  const volumes = new VolumeService({
    metadata: options.metadata,
    store: member?.distributor ?? options.store,
    leases,
    holder: options.uuid,
    // The caller holds the data-dir lock: locks of this node's UUID under another lease are
    // left by an earlier run that died, and are released rather than waited for.
    exclusiveHolder: true,
    // A volume's new writer fences it at every node and finishes what an earlier one left.
    ...(member
      ? { onLocked: (id: number, token: bigint) => member!.distributor.takeOver(id, token) }
      : {}),
    clock: options.clock,
    ...(options.random ? { random: options.random } : {}),
  });
  let nbd: NbdServer | null = null;
  let nbdAddress: HostPort | null = null;
  let http: HttpStatusServer | null = null;
  let httpAddress: HostPort | null = null;
  const aoeExports: AoeExport[] = [];
  const stopGc = new AbortController();
  let gcLoop: Promise<void> = Promise.resolve();
  const close = async () => {
    stopGc.abort();
    await gcLoop;
    await Deno.remove(`${options.dataDir}/${SERVE_INFO_FILE}`).catch(() => {});
    await http?.close();
    await nbd?.close();
    await closeAoeExports(aoeExports);
    await volumes.close();
    await member?.close();
    await leases.close();
  };
  try {
    await volumes.releaseLocksOfEarlierRuns().catch((error) => {
      log.warn(`releasing the volume locks of an earlier run: ${errorMessage(error)}`);
    });
    if (options.nbd !== null) {
      nbd = new NbdServer({
        exports: {
          list: () => volumes.exportNames(),
          open: (name, openOptions) => volumes.openDevice(name, openOptions ?? {}),
        },
      });
      const address = listenOrExplain("the NBD server", options.nbd, (at) => nbd!.listen(at));
      nbdAddress = { hostname: address.hostname, port: address.port };
    }
    for (const spec of options.aoe?.exports ?? []) {
      aoeExports.push(
        await startAoeExport(volumes, spec, {
          syncIntervalMs: options.aoe!.syncIntervalMs,
          writeCache: options.aoe!.writeCache,
          clock: options.clock,
        }),
      );
    }
    if (options.http !== null) {
      http = new HttpStatusServer({
        clock: options.clock,
        reporter: new ServeReporter({
          uuid: options.uuid,
          dataDir: options.dataDir,
          startedAtMs: options.clock.nowMs(),
          store: options.store,
          metadata: options.metadata,
          metadataWhere: options.metadataWhere,
          volumes,
          nbd: nbd === null || nbdAddress === null ? null : { server: nbd, address: nbdAddress },
          aoe: aoeExports,
          member,
        }),
      });
      const address = listenOrExplain(
        "the HTTP status server",
        options.http,
        (at) => http!.listen(at),
      );
      httpAddress = { hostname: address.hostname, port: address.port };
    }
    const info: ServeInfo = {
      pid: Deno.pid,
      nbd: nbdAddress === null ? null : formatHostPort(nbdAddress),
    };
    await writeFileAtomic(`${options.dataDir}/${SERVE_INFO_FILE}`, JSON.stringify(info) + "\n", {
      mode: 0o600,
    });
    if (options.gcIntervalMs > 0) {
      gcLoop = runGc(options, member, stopGc.signal);
    }
  } catch (error) {
    await close().catch(() => {});
    throw error;
  }
  return {
    volumes,
    nbdAddress,
    httpAddress,
    member,
    aoeExports,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** Stops every AoE target and releases its volume; a failure is logged, the rest still close. */
async function closeAoeExports(exports: readonly AoeExport[]): Promise<void> {
  await Promise.all(exports.map(async (exported) => {
    try {
      await exported.close();
    } catch (error) {
      log.error(`AoE e${exported.spec.major}.${exported.spec.minor}: ${errorMessage(error)}`);
    }
  }));
}

/** Collects garbage every interval until stopped; a failed pass is logged and retried later. */
async function runGc(
  options: NodeOptions,
  member: ClusterMember | null,
  signal: AbortSignal,
): Promise<void> {
  while (!signal.aborted) {
    await options.clock.sleep(options.gcIntervalMs, signal).catch(() => {});
    if (signal.aborted) return;
    try {
      // A cluster node scans its own blocks and reads the volumes' maps from the cluster.
      const reader = member?.distributor ?? options.store;
      await collectGarbage({ metadata: options.metadata, store: options.store, reader, signal });
    } catch (error) {
      if (!signal.aborted) log.warn(`garbage collection failed: ${errorMessage(error)}`);
    }
  }
}

/** Reads the `serve.json` of a data dir; null when there is none. */
export async function readServeInfo(dataDir: string): Promise<ServeInfo | null> {
  const path = `${dataDir}/${SERVE_INFO_FILE}`;
  let bytes: Uint8Array;
  try {
    bytes = await readFileBounded(path, SERVE_INFO_MAX_BYTES, path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new TorusError(ErrorCode.Invalid, `${path} is not JSON`);
  }
  const raw = value as { pid?: unknown; nbd?: unknown } | null;
  if (
    raw === null || typeof raw !== "object" || !Number.isSafeInteger(raw.pid) ||
    !(raw.nbd === null || typeof raw.nbd === "string")
  ) {
    throw new TorusError(ErrorCode.Invalid, `${path} is not a serve record`);
  }
  return { pid: raw.pid as number, nbd: raw.nbd as string | null };
}
