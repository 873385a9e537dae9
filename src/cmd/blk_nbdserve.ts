/**
 * `torus blk nbdserve -C ETCD [-l ADDR]`: the NBD server of `torus serve --nbd`, run by a client
 * process with no store of its own. Its volumes are read and written through the distributor,
 * straight to the nodes that hold each block, with the same promise: a FLUSH (or FUA write) that
 * succeeded is on every holder (write level `all`), durably.
 * @module
 */

import {
  type BackendSpec,
  type Command,
  ExitCode,
  formatHostPort,
  type HostPort,
  type Io,
  metadataFlagOptions,
  metadataFlagsHelp,
  openMetadata,
  parseFlags,
  parseHostPort,
  UsageError,
} from "../cli/mod.ts";
import {
  CryptoRandom,
  HTTP_PORT_DEFAULT,
  parseSize,
  randomUuid,
  systemClock,
} from "../core/mod.ts";
import {
  parseMinCopies,
  parseReadLevel,
  parseWriteLevel,
  type ReadLevel,
  type WriteLevel,
} from "../distributor/mod.ts";
import { NbdServer, VolumeService } from "../block/mod.ts";
import { ClusterMember, LeaseKeeper } from "../server/mod.ts";
import { HttpStatusServer, type MetadataReport } from "../http/mod.ts";
import type { AoeExport } from "./aoe_export.ts";
import { listenOrExplain } from "./listen.ts";
import { ServeReporter } from "./node_report.ts";
import { httpAddressOf, NBD_DEFAULT_ADDRESS, peerProtocols, waitForStopSignal } from "./serve.ts";

const flags = {
  ...metadataFlagOptions,
  listen: { type: "string", short: "l", default: NBD_DEFAULT_ADDRESS },
  "read-level": { type: "string", default: "block" },
  "write-level": { type: "string", default: "all" },
  "read-cache-size": { type: "string", default: "50MiB" },
  "min-copies": { type: "string" },
  host: { type: "string" },
  port: { type: "string" },
} as const;

const help = `Usage: torus blk nbdserve -C ENDPOINTS [-l ADDR] [--host H [--port P]]
                            [--read-level L] [--write-level L]
                            [--read-cache-size SIZE] [metadata flags]

Serves the cluster's block volumes over NBD from this machine, without a store of its own: every
volume as an export of its name, every snapshot read-only as VOLUME@SNAPSHOT. Reads and writes go
straight to the nodes that hold each block (the ring's holders, over the peer protocol). A FLUSH
or FUA write that succeeded is durable on every holder. A volume is open for write on one machine
at a time (its lock). SIGINT or SIGTERM stops it cleanly: requests in flight are answered, volumes
are flushed and unlocked.

  -l, --listen ADDR  where NBD listens (HOST:PORT or PORT; default ${NBD_DEFAULT_ADDRESS}).
                   Listening on another address than loopback lets any machine that reaches
                   it read and write every volume.
  --host H         serve this client's status over HTTP on host H (/status, /metrics,
                   /healthz, as torus serve's, without a store); no HTTP without it
  --port P         the HTTP port (default ${HTTP_PORT_DEFAULT}; 0 picks a free port, printed)
  --read-level L   block (default), seq or spread (see torus serve --help)
  --write-level L  all (default), one or local (see torus serve --help)
  --read-cache-size SIZE  blocks read from the nodes kept in memory (default 50MiB)
  --min-copies N   holders a write needs when others do not answer (see torus serve --help)

${metadataFlagsHelp}
`;

/** Settings of a cluster client's NBD server, from its flags. */
export interface ClusterNbdSettings {
  readonly readLevel: ReadLevel;
  readonly writeLevel: WriteLevel;
  readonly readCacheBytes: number;
  /** ClusterMemberOptions.minCopies. */
  readonly minCopies: number;
}

/** `--read-level`, `--write-level` and `--read-cache-size`; UsageError when wrong. */
export function clusterNbdSettingsOf(values: Record<string, unknown>): ClusterNbdSettings {
  const usage = <T>(flag: string, parse: () => T): T => {
    try {
      return parse();
    } catch (error) {
      throw new UsageError(`${flag}: ${(error as Error).message}`);
    }
  };
  return {
    readLevel: usage("--read-level", () => parseReadLevel(String(values["read-level"] ?? "block"))),
    writeLevel: usage(
      "--write-level",
      () => parseWriteLevel(String(values["write-level"] ?? "all")),
    ),
    readCacheBytes: usage(
      "--read-cache-size",
      () => parseSize(String(values["read-cache-size"] ?? "50MiB")),
    ),
    minCopies: usage("--min-copies", () => parseMinCopies(values["min-copies"])),
  };
}

/** A running cluster client: a member with no store and its volumes (see startClusterClient). */
export interface ClusterClient {
  /** The client's UUID (its volume locks' holder). */
  readonly uuid: string;
  readonly member: ClusterMember;
  readonly volumes: VolumeService;
  /**
   * Serves the client's status over HTTP at `address` (`/status`, `/metrics`, `/healthz`, as a
   * node's, without a store): its volumes, the cluster as it sees it, and the front ends in
   * `frontEnds` (read at each request). Closed with the client. Returns where it listens.
   */
  serveHttp(address: HostPort, frontEnds: ClientFrontEnds): HostPort;
  /** Runs `close` first when the client closes (a front end over its volumes). */
  beforeClose(close: () => Promise<void>): void;
  /** Flushes and unlocks the volumes, leaves the cluster. Idempotent. */
  close(): Promise<void>;
}

/**
 * Joins the cluster of the metadata flags in `values` as a client (no store): the volumes of
 * `torus blk nbdserve`, `torus blk attach -C` and `torus aoe -C`, read and written through the
 * distributor, each locked by this client while open for write.
 */
export async function startClusterClient(
  values: Record<string, unknown>,
  settings: ClusterNbdSettings,
): Promise<ClusterClient> {
  const metadata = await openMetadata(values);
  const uuid = randomUuid(new CryptoRandom());
  const closers: (() => Promise<void>)[] = [() => metadata.close()];
  const closeAll = async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => {});
  };
  try {
    const leases = await LeaseKeeper.start({ leases: metadata.service.leases, clock: systemClock });
    closers.push(() => leases.close());
    const member = await ClusterMember.start({
      uuid,
      metadata: metadata.service,
      leases,
      node: null,
      protocols: peerProtocols(),
      autoJoin: false,
      ...settings,
      rebalanceRateBytesPerSecond: 0,
      clock: systemClock,
    });
    closers.push(() => member.close());
    const volumes = new VolumeService({
      metadata: metadata.service,
      store: member.distributor,
      leases,
      holder: uuid,
      exclusiveHolder: false,
      clock: systemClock,
      // A volume's new writer fences it at every node and finishes what an earlier one left.
      onLocked: (id, token) => member.distributor.takeOver(id, token),
    });
    closers.push(() => volumes.close());
    let closing: Promise<void> | null = null;
    const startedAtMs = systemClock.nowMs();
    return {
      uuid,
      member,
      volumes,
      serveHttp: (address, frontEnds) => {
        const http = new HttpStatusServer({
          clock: systemClock,
          reporter: new ServeReporter({
            uuid,
            dataDir: null,
            startedAtMs,
            store: null,
            metadata: metadata.service,
            metadataWhere: metadataReportOf(metadata.backend),
            volumes,
            get nbd() {
              return frontEnds.nbd();
            },
            get aoe() {
              return frontEnds.aoe();
            },
            member,
          }),
        });
        const at = listenOrExplain("the HTTP status server", address, (a) => http.listen(a));
        closers.push(() => http.close());
        return { hostname: at.hostname, port: at.port };
      },
      beforeClose: (close) => closers.push(close),
      close: () => closing ??= closeAll(),
    };
  } catch (error) {
    await closeAll();
    throw error;
  }
}

/** The "HTTP:" line of a client's banner. */
export function httpLine(address: HostPort | null): string {
  return address === null
    ? "off (--host to serve /status, /metrics, /healthz)"
    : `http://${formatHostPort(address)} (/status, /metrics, /healthz)`;
}

/** The front ends of a cluster client, for its status (read at each request). */
export interface ClientFrontEnds {
  nbd(): { readonly server: NbdServer; readonly address: HostPort } | null;
  aoe(): readonly AoeExport[];
}

/** Where the metadata lives, as `/status` says it. */
function metadataReportOf(backend: BackendSpec): MetadataReport {
  return backend.kind === "etcd"
    ? { kind: "etcd", endpoints: backend.endpoints }
    : { kind: "embedded", path: backend.path };
}

/** A running cluster client with an NBD server over its volumes (see startClusterNbd). */
export interface ClusterNbd {
  /** The client's UUID (its volume locks' holder). */
  readonly uuid: string;
  /** Where its NBD server listens. */
  readonly address: HostPort;
  /** Where its HTTP status server listens, or null for none. */
  readonly httpAddress: HostPort | null;
  readonly member: ClusterMember;
  /** Stops the NBD server, flushes and unlocks the volumes, leaves the cluster. Idempotent. */
  close(): Promise<void>;
}

/**
 * Joins the cluster of the metadata flags in `values` as a client (no store) and serves its
 * volumes over NBD at `listen`: `torus blk nbdserve`, and `torus blk attach -C`, which attaches
 * the kernel to it.
 */
export async function startClusterNbd(
  values: Record<string, unknown>,
  settings: ClusterNbdSettings,
  listen: HostPort,
  http: HostPort | null = null,
): Promise<ClusterNbd> {
  const client = await startClusterClient(values, settings);
  try {
    const { volumes } = client;
    const nbd = new NbdServer({
      exports: {
        list: () => volumes.exportNames(),
        open: (name, openOptions) => volumes.openDevice(name, openOptions ?? {}),
      },
    });
    client.beforeClose(() => nbd.close());
    const address = listenOrExplain("the NBD server", listen, (at) => nbd.listen(at));
    const httpAddress = http === null ? null : client.serveHttp(http, {
      nbd: () => ({ server: nbd, address }),
      aoe: () => [],
    });
    return {
      uuid: client.uuid,
      address,
      httpAddress,
      member: client.member,
      close: () => client.close(),
    };
  } catch (error) {
    await client.close();
    throw error;
  }
}

async function nbdserve(values: Record<string, unknown>, io: Io): Promise<number> {
  const listen = parseHostPort(String(values.listen), "--listen address", { listen: true });
  const settings = clusterNbdSettingsOf(values);
  if (typeof values.etcd !== "string") {
    throw new UsageError(
      "nbdserve reaches a cluster's nodes: give -C (the cluster's etcd). A single node serves " +
        "its volumes with 'torus serve --nbd'",
    );
  }
  const stopSignal = waitForStopSignal();
  const client = await startClusterNbd(values, settings, listen, httpAddressOf(values));
  try {
    const ring = client.member.ring();
    io.stdout(
      [
        `torus blk nbdserve: client ${client.uuid}`,
        `  NBD:         ${formatHostPort(client.address)} (export names: VOLUME, VOLUME@SNAPSHOT)`,
        `  HTTP:        ${httpLine(client.httpAddress)}`,
        `  cluster:     ring version ${ring.version}, ${ring.memberUuids().length} nodes, ` +
        `replication ${ring.replication}`,
        `Ready. Stop with Ctrl-C (SIGINT) or SIGTERM.`,
        "",
      ].join("\n"),
    );
    const signal = await stopSignal;
    io.stdout(`Received ${signal}: closing volumes and stopping\n`);
  } finally {
    await client.close();
  }
  return ExitCode.Ok;
}

/** `torus blk nbdserve`. */
export const nbdserveCommand: Command = {
  name: "nbdserve",
  summary: "Serve the cluster's volumes over NBD from a client (no store of its own)",
  help,
  run(args, io) {
    const { values, positionals } = parseFlags(args, flags);
    if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    return nbdserve(values, io);
  },
};
