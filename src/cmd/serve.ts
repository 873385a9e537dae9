/**
 * `torus serve`: a storage node. It opens the node's data dir (node UUID, block store, embedded
 * metadata), initialises a single-node cluster on the embedded store when none exists, serves its
 * block volumes over NBD (`--nbd`) and its status over HTTP (`--host`, `--port`), collects
 * garbage, and runs until SIGINT/SIGTERM, then closes in order: HTTP stops, the NBD server
 * answers what is in flight, volumes flush and unlock, the store flushes. With `-C` and
 * `--peer-address` it is a member of a cluster (server/cluster_member.ts): it serves its store to
 * peers, registers itself every heartbeat, and its volumes are written through the distributor.
 * @module
 */

import {
  type Command,
  dataDirOf,
  ExitCode,
  formatHostPort,
  type HostPort,
  type Io,
  lockDataDir,
  metadataFlagOptions,
  metadataFlagsHelp,
  type OpenedMetadata,
  openMetadata,
  parseFlags,
  parseHost,
  parseHostPort,
  parsePort,
  processEnv,
  resolveBackend,
  UsageError,
} from "../cli/mod.ts";
import {
  BLOCK_SIZE_DEFAULT_BYTES,
  CryptoRandom,
  decodeUtf8,
  escapeText,
  formatSize,
  HTTP_PORT_DEFAULT,
  invalid,
  isTorusError,
  NODE_ID_FILE_MAX_BYTES,
  normalizeUuid,
  parseCapacity,
  parseDuration,
  parseSize,
  randomUuid,
  REPLICATION_DEFAULT,
  systemClock,
} from "../core/mod.ts";
import { parseBlockLayerSpec } from "../blockset/mod.ts";
import { type InitOptions } from "../metadata/mod.ts";
import { createRing, RingType } from "../ring/mod.ts";
import { FileBlockStore } from "../storage/mod.ts";
import { makeDirectoryDurable, readFileBounded, writeFileAtomic } from "../sys/mod.ts";
import { type ClusterSettings, startNode } from "./node.ts";
import {
  type AoeExport,
  type AoeExportSpec,
  checkAoeExportSpecs,
  describeAoeExport,
  parseAoeExportSpec,
} from "./aoe_export.ts";
import {
  GrpcProtocol,
  parseMinCopies,
  parsePeerUrl,
  parseReadLevel,
  parseWriteLevel,
  type PeerProtocol,
  TdpProtocol,
} from "../distributor/mod.ts";
import type { ClusterMember } from "../server/mod.ts";
import {
  checkStoreBlocks,
  checkStoreSpace,
  measureStoreSpace,
  storeSizeBytes,
} from "./serve_size.ts";

/** The flags of `torus serve` (exported for the table test of every command's flags). */
export const serveFlags = {
  ...metadataFlagOptions,
  size: { type: "string", default: "1GiB" },
  nbd: { type: "string" },
  host: { type: "string" },
  port: { type: "string" },
  "gc-interval": { type: "string", default: "5m" },
  aoe: { type: "string", multiple: true },
  "aoe-sync-interval": { type: "string", default: "5s" },
  "aoe-write-cache": { type: "boolean", default: false },
  "peer-address": { type: "string" },
  "auto-join": { type: "boolean", default: false },
  "read-level": { type: "string", default: "block" },
  "write-level": { type: "string", default: "all" },
  "read-cache-size": { type: "string", default: "50MiB" },
  "rebalance-rate": { type: "string", default: "16MiB" },
  "scrub-interval": { type: "string", default: "24h" },
  "scrub-rate": { type: "string", default: "16MiB" },
  "min-copies": { type: "string" },
  "debug-init": { type: "boolean", default: false },
} as const;

/** Where `--nbd` without an address listens. */
export const NBD_DEFAULT_ADDRESS = "127.0.0.1:10809";

/**
 * `--nbd` takes an optional address: a bare `--nbd` (last, or followed by another flag) means the
 * default one. node:util's parser has no optional values, so the default is filled in first.
 */
export function expandNbdFlag(args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    out.push(args[i]!);
    if (args[i] === "--nbd" && (i + 1 >= args.length || args[i + 1]!.startsWith("-"))) {
      out.push(NBD_DEFAULT_ADDRESS);
    }
  }
  return out;
}

const help =
  `Usage: torus serve [--data-dir DIR] [--size SIZE|N%] [--nbd [ADDR]] [--host H [--port P]]
                   [--aoe VOLUME:INTERFACE:MAJOR.MINOR]... [--aoe-write-cache]
                   [--aoe-sync-interval D]
                   [-C ENDPOINTS --peer-address URL [--auto-join] [--read-level L]
                   [--write-level L] [--read-cache-size SIZE] [--rebalance-rate SIZE]
                   [--scrub-interval D] [--scrub-rate SIZE] [--min-copies N]]
                   [metadata flags]

Runs a storage node on DIR (default $TORUS_DATA_DIR or ./torus-data). Without -C it is a
single-node cluster on the embedded metadata store in DIR, initialised on first start
(block size 512 KiB, block spec crc,base). DIR is locked (DIR/lock) while serve runs: a
second serve, or ctl init, on it exits with the pid of the holder.

It serves the cluster's block volumes from its block store: over NBD with --nbd (every
volume as an export of its name, every snapshot read-only as VOLUME@SNAPSHOT), and to torus ctl
block dump and load on this machine. With --host it serves its status over HTTP: GET /healthz
(200 "ok", or 503 and why), /status (JSON) and /metrics (Prometheus). SIGINT or SIGTERM stops
it cleanly: requests in flight are answered, volumes are flushed and unlocked, the store is
flushed.

With -C (the cluster's etcd) and --peer-address it is a node of a cluster: it serves its store
to the other nodes at URL, registers itself in etcd every 5 s (torus ctl list-peers shows it),
and writes its volumes' blocks to the ring's holders of each block (replication R).

  --size SIZE|N%   capacity of the block store (default 1GiB): bytes with a unit (1GiB,
                   500GB), or N% of the space available to it: the free space of the
                   filesystem holding DIR plus what the store already occupies. At least
                   two blocks (one is kept spare). A size beyond the available space is
                   refused for a new or growing store, and only warned about for an
                   existing store whose disk filled up.
  --nbd [ADDR]     serve volumes over NBD on ADDR (HOST:PORT or PORT; default
                   ${NBD_DEFAULT_ADDRESS}; port 0 picks a free port, printed and written to
                   DIR/serve.json). Listening on another address than loopback
                   lets any machine that reaches it read and write every volume.
  --host H         serve HTTP status on host H (an address or name; 0.0.0.0 or :: for every
                   interface); no HTTP without it. It has no authentication: whoever
                   reaches it sees the node's volumes and counters (it changes nothing).
  --port P         the HTTP port (default ${HTTP_PORT_DEFAULT}; 0 picks a free port, printed)
  --gc-interval D  how often unreferenced blocks are reclaimed (default 5m; 0 turns it off)
  --aoe VOLUME:INTERFACE:MAJOR.MINOR  serve VOLUME (or VOLUME@SNAPSHOT, read-only) as the
                   ATA-over-Ethernet target eMAJOR.MINOR on INTERFACE (raw Ethernet, root);
                   repeatable. The volume stays open for write here while serve runs.
  --aoe-write-cache  AoE targets answer writes before they are durable, made so by ATA FLUSH
                   CACHE and every --aoe-sync-interval (default: each write is durable
                   when answered, since the Linux aoe driver never sends FLUSH CACHE)
  --aoe-sync-interval D  with --aoe-write-cache, how often writes the initiator did not flush
                   are made durable (default 5s; 0: only FLUSH CACHE and stopping)
  --peer-address URL  where the other nodes reach this one: tdp://HOST:PORT (the binary
                   peer protocol) or http://HOST:PORT (gRPC, about ten times slower); port
                   40000 when left out. HOST must be an address the peers can reach, not
                   0.0.0.0. Needs -C.
  --auto-join      add this node to the ring when it is not a member
  --read-level L   block (default: holders, then the rest of the ring, in rounds whose
                   deadline doubles), seq (one such round) or spread (all holders at once)
  --write-level L  all (default: a write returns when every holder has it, else fails),
                   one (when one holder has it; a flush reports a holder that missed it) or
                   local (when this node's copy is written)
  --read-cache-size SIZE  blocks read from peers kept in memory (default 50MiB)
  --rebalance-rate SIZE  bytes per second this node copies to peers after a ring change
                   (default 16MiB; 0 for no bound). Client I/O shares the same links
                   and disks: a lower rate keeps its latency, a higher one heals sooner.
  --scrub-interval D  how often this node re-reads all its blocks to find copies damaged
                   on disk and replace them from another holder (default 24h; 0: never)
  --scrub-rate SIZE  bytes per second the scrubber reads (default 16MiB; 0 for no bound)
  --min-copies N   at write level all, how many holders a write needs when others do not
                   answer (down, stopped, cut off): those are recorded in etcd as lacking
                   the block and caught up when back, and nothing reads their copy meanwhile.
                   majority (default: 1 of 2, 2 of 3) or a number; the replication to make
                   writes fail while any holder is down
  --debug-init     initialise the cluster on etcd when it is not (block size 512 KiB, block
                   spec crc,base, a ketama ring of replication 2), as torus ctl init would

${metadataFlagsHelp}
`;

/**
 * The node's persistent identity: `<data-dir>/metadata/uuid`, created on first start. The caller
 * holds the data-dir lock, so no other process creates one at the same time.
 */
export async function nodeUuid(dataDir: string): Promise<string> {
  const path = `${dataDir}/metadata/uuid`;
  try {
    const bytes = await readFileBounded(path, NODE_ID_FILE_MAX_BYTES, path);
    const uuid = normalizeUuid(decodeUtf8(bytes, path).trim());
    if (uuid === null) throw invalid(`${path} does not hold a node UUID`);
    return uuid;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const uuid = randomUuid(new CryptoRandom());
  // Written aside, synced and renamed: a crash never leaves a half-written identity behind.
  await writeFileAtomic(path, uuid + "\n", { mode: 0o600 });
  return uuid;
}

function singleNodeInit(): InitOptions {
  const spec = parseBlockLayerSpec("crc,base");
  return {
    blockSizeBytes: BLOCK_SIZE_DEFAULT_BYTES,
    defaultBlockSpec: spec.map((layer) => ({ kind: layer.kind, options: layer.options })),
    ring: createRing(RingType.Ketama, { version: 1, replication: REPLICATION_DEFAULT, peers: [] })
      .toMessage(),
  };
}

/** Opens the metadata service; an embedded store is created and initialised when absent. */
async function openNodeMetadata(
  values: Record<string, unknown>,
  io: Io,
): Promise<OpenedMetadata> {
  const opened = await openMetadata(values, { create: true });
  // The embedded store is this machine's own cluster; etcd's is initialised only when asked
  // (--debug-init, as the original's: a typo in -C must not create a cluster somewhere).
  const initialise = opened.backend.kind === "embedded" || values["debug-init"] === true;
  if (initialise && !(await opened.service.cluster.isInitialised())) {
    try {
      await opened.service.cluster.init(singleNodeInit());
      const where = opened.backend.kind === "embedded"
        ? `a single-node cluster in ${escapeText(opened.backend.path)}`
        : `the cluster on etcd ${opened.backend.endpoints.join(",")} (--debug-init)`;
      io.stdout(`Initialised ${where}\n`);
    } catch (error) {
      // Another local process (ctl init, a second serve) may have initialised it meanwhile.
      if (!isTorusError(error, "exists")) throw error;
    }
  }
  return opened;
}

/** Whether this start will create the single-node cluster (embedded, no store yet). */
async function createsEmbeddedCluster(
  values: Record<string, unknown>,
  dataDir: string,
): Promise<boolean> {
  const backend = await resolveBackend({ ...values, "data-dir": dataDir });
  if (backend.kind !== "embedded") return false;
  try {
    await Deno.stat(backend.path);
    return false;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return true;
    throw error;
  }
}

/** Resolves with the first SIGINT or SIGTERM (listening starts at the call). */
export function waitForStopSignal(): Promise<Deno.Signal> {
  return new Promise((resolve) => {
    const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
    const handlers = signals.map((signal) => {
      const handler = () => {
        signals.forEach((s, i) => Deno.removeSignalListener(s, handlers[i]!));
        resolve(signal);
      };
      Deno.addSignalListener(signal, handler);
      return handler;
    });
  });
}

/** What serve's own flags ask for, beyond the data dir and the store size. */
interface ServeOptions {
  readonly nbd: HostPort | null;
  readonly http: HostPort | null;
  readonly gcIntervalMs: number;
  /** The cluster flags, checked; null without --peer-address. */
  readonly cluster: ClusterSettings | null;
  /** `--aoe` and `--aoe-sync-interval`. */
  readonly aoe: {
    readonly exports: readonly AoeExportSpec[];
    readonly syncIntervalMs: number;
    readonly writeCache: boolean;
  };
}

/** The peer protocols a node speaks, by URL scheme (`tdp://`, `http://` for gRPC). */
export function peerProtocols(): PeerProtocol[] {
  return [new TdpProtocol(), new GrpcProtocol()];
}

/** `parse()`, with a failure as a usage error naming `flag`. */
function flagValue<T>(flag: string, parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new UsageError(`${flag}: ${(error as Error).message}`);
  }
}

/** `--peer-address` and the flags that only mean something with it. */
function clusterSettingsOf(values: Record<string, unknown>): ClusterSettings | null {
  const address = values["peer-address"];
  if (typeof address !== "string") {
    for (const flag of ["auto-join", "debug-init"] as const) {
      if (values[flag] === true) throw new UsageError(`--${flag} needs --peer-address`);
    }
    if (typeof values.etcd === "string") {
      throw new UsageError(
        "-C/--etcd needs --peer-address: the URL peers reach this node's store at " +
          "(tdp://HOST:PORT, for example tdp://10.0.0.5:40000)",
      );
    }
    return null;
  }
  if (typeof values.etcd !== "string") {
    throw new UsageError(
      "--peer-address needs -C/--etcd: the nodes of a cluster share one etcd (the embedded " +
        "metadata store serves one machine)",
    );
  }
  const protocols = peerProtocols();
  const readLevel = flagValue("--read-level", () => parseReadLevel(String(values["read-level"])));
  const writeLevel = flagValue(
    "--write-level",
    () => parseWriteLevel(String(values["write-level"])),
  );
  const readCacheBytes = flagValue(
    "--read-cache-size",
    () => parseSize(String(values["read-cache-size"])),
  );
  const rebalanceRateBytesPerSecond = flagValue(
    "--rebalance-rate",
    () => parseSize(String(values["rebalance-rate"])),
  );
  const minCopies = flagValue("--min-copies", () => parseMinCopies(values["min-copies"]));
  const scrub = {
    intervalMs: flagValue(
      "--scrub-interval",
      () => parseDuration(String(values["scrub-interval"])),
    ),
    rateBytesPerSecond: flagValue("--scrub-rate", () => parseSize(String(values["scrub-rate"]))),
  };
  try {
    const scheme = /^([a-z]+):\/\//i.exec(address)?.[1] ?? "";
    const protocol = protocols.find((p) => p.scheme === scheme.toLowerCase());
    if (protocol === undefined) {
      throw new Error(`it must start with ${protocols.map((p) => `${p.scheme}://`).join(" or ")}`);
    }
    const { hostname } = parsePeerUrl(address, protocol.scheme);
    if (hostname === "0.0.0.0" || hostname === "::") {
      throw new Error("give the address peers reach this node at, not a wildcard");
    }
    return {
      peerAddress: address,
      protocols,
      autoJoin: values["auto-join"] === true,
      readLevel,
      writeLevel,
      readCacheBytes,
      rebalanceRateBytesPerSecond,
      scrub,
      minCopies,
    };
  } catch (error) {
    throw new UsageError(`--peer-address ${address}: ${(error as Error).message}`);
  }
}

function serveOptionsOf(values: Record<string, unknown>): ServeOptions {
  const nbd = typeof values.nbd === "string"
    ? parseHostPort(values.nbd, "--nbd address", { listen: true })
    : null;
  const http = httpAddressOf(values);
  let gcIntervalMs: number;
  try {
    gcIntervalMs = parseDuration(String(values["gc-interval"]));
  } catch (error) {
    throw new UsageError(`--gc-interval: ${(error as Error).message}`);
  }
  return { nbd, http, gcIntervalMs, cluster: clusterSettingsOf(values), aoe: aoeOptionsOf(values) };
}

/** `--aoe VOLUME:INTERFACE:MAJOR.MINOR` (repeatable) and `--aoe-sync-interval D`. */
function aoeOptionsOf(values: Record<string, unknown>): ServeOptions["aoe"] {
  const texts = Array.isArray(values.aoe) ? values.aoe.map(String) : [];
  const exports = texts.map(parseAoeExportSpec);
  checkAoeExportSpecs(exports);
  const syncIntervalMs = flagValue(
    "--aoe-sync-interval",
    () => parseDuration(String(values["aoe-sync-interval"] ?? "5s")),
  );
  return { exports, syncIntervalMs, writeCache: values["aoe-write-cache"] === true };
}

/** `--host H [--port P]`: where HTTP listens; `--port` alone is a mistake, not ignored. */
export function httpAddressOf(values: Record<string, unknown>): HostPort | null {
  const port = typeof values.port === "string"
    ? parsePort(values.port, "--port", { listen: true })
    : HTTP_PORT_DEFAULT;
  if (typeof values.host !== "string") {
    if (typeof values.port === "string") {
      throw new UsageError("--port needs --host: HTTP is served only where --host says");
    }
    return null;
  }
  return { hostname: parseHost(values.host, "--host"), port };
}

/**
 * Runs the node of `values` until SIGINT/SIGTERM. `program` names it in the banner and in the
 * data-dir lock (`torus aoe` runs a single node this way too).
 */
export async function serve(
  values: Record<string, unknown>,
  io: Io,
  program = "torus serve",
  options: { readonly exitWhenAoeFails?: boolean } = {},
): Promise<number> {
  const exitWhenAoeFails = options.exitWhenAoeFails ?? false;
  const serveOptions = serveOptionsOf(values);
  // The same data dir rule as every command (an empty --data-dir or $TORUS_DATA_DIR is a usage
  // error), and "/" stays "/".
  const dataDir = dataDirOf(values, processEnv).replace(/(.)\/+$/, "$1");
  // The size is checked before anything is created (these checks only read): against the disk,
  // and against the block size when this start creates the cluster (it gets the default block
  // size); otherwise against the cluster's block size once the metadata is open.
  const request = { capacity: parseCapacity(String(values.size)), text: String(values.size) };
  const space = await measureStoreSpace(`${dataDir}/block`);
  const sizeBytes = storeSizeBytes(request.capacity, space);
  const checkBlocks = (blockSizeBytes: number) =>
    checkStoreBlocks(sizeBytes, { ...request, blockSizeBytes });
  if (await createsEmbeddedCluster(values, dataDir)) {
    checkBlocks(singleNodeInit().blockSizeBytes);
  }
  const spaceWarning = checkStoreSpace(sizeBytes, { ...request, space, where: dataDir });
  // The lock comes before anything is created: the loser of a start race creates nothing and
  // names the winner.
  using _dataDirLock = await lockDataDir(dataDir, program);
  await makeDirectoryDurable(`${dataDir}/metadata`, 0o700);
  await makeDirectoryDurable(`${dataDir}/block`, 0o700);
  const uuid = await nodeUuid(dataDir);
  await using metadata = await openNodeMetadata({ ...values, "data-dir": dataDir }, io);
  const global = await metadata.service.cluster.globalMetadata();
  checkBlocks(global.blockSizeBytes);
  if (spaceWarning !== null) io.stderr(`${program}: ${spaceWarning}\n`);
  const store = await FileBlockStore.open({
    dir: `${dataDir}/block`,
    blockSizeBytes: global.blockSizeBytes,
    sizeBytes,
  });
  try {
    // Listen before saying "Ready.": whoever reads that line may signal at once.
    const stopSignal = waitForStopSignal();
    await using node = await startNode({
      dataDir,
      uuid,
      metadata: metadata.service,
      store,
      clock: systemClock,
      nbd: serveOptions.nbd,
      http: serveOptions.http,
      metadataWhere: metadata.backend.kind === "etcd"
        ? { kind: "etcd", endpoints: metadata.backend.endpoints }
        : { kind: "embedded", path: metadata.backend.path },
      gcIntervalMs: serveOptions.gcIntervalMs,
      cluster: serveOptions.cluster,
      aoe: serveOptions.aoe,
    });
    const where = metadata.backend.kind === "etcd"
      ? `etcd ${metadata.backend.endpoints.join(",")}`
      : `embedded store ${metadata.backend.path}`;
    const nbd = node.nbdAddress === null
      ? "off (--nbd to serve volumes)"
      : `${formatHostPort(node.nbdAddress)} (export names: VOLUME, VOLUME@SNAPSHOT)`;
    const http = node.httpAddress === null
      ? "off (--host to serve /status, /metrics, /healthz)"
      : `http://${formatHostPort(node.httpAddress)} (/status, /metrics, /healthz)`;
    io.stdout(
      [
        `${program}: node ${uuid}`,
        `  data dir:    ${escapeText(dataDir)}`,
        `  block store: ${store.totalBlocks()} blocks of ${formatSize(store.blockSizeBytes)} ` +
        `(${formatSize(store.totalBlocks() * store.blockSizeBytes)}), ${store.usedBlocks()} used`,
        `  metadata:    ${escapeText(where)}`,
        `  NBD:         ${nbd}`,
        `  HTTP:        ${http}`,
        ...aoeLines(node.aoeExports),
        `  peers:       ${peersLine(node.member)}`,
        `Ready. Stop with Ctrl-C (SIGINT) or SIGTERM.`,
        "",
      ].join("\n"),
    );
    const targetFailed = exitWhenAoeFails
      ? Promise.race(node.aoeExports.map((exported) => exported.failed))
      : new Promise<never>(() => {});
    const stop = await Promise.race([stopSignal, targetFailed]);
    if (stop instanceof Error) {
      // Nothing is served any more: exit (a supervisor restarts it), cleanly.
      io.stderr(`${program}: ${stop.message}; stopping\n`);
      return ExitCode.Failure;
    }
    io.stdout(`Received ${stop}: closing volumes, flushing the block store and stopping\n`);
  } finally {
    await store.close();
  }
  return ExitCode.Ok;
}

/** The "AoE:" lines of the start banner (none without --aoe). */
function aoeLines(exports: readonly AoeExport[]): string[] {
  return exports.map((exported) => `  AoE:         ${escapeText(describeAoeExport(exported))}`);
}

/** The "peers:" line of the start banner. */
function peersLine(member: ClusterMember | null): string {
  if (member === null) return "off (a single node; -C and --peer-address make a cluster node)";
  const ring = member.ring();
  const inRing = ring.memberUuids().length;
  return `${
    member.server?.address ?? "not serving"
  } (ring version ${ring.version}: ${inRing} member` +
    `${inRing === 1 ? "" : "s"}, replication ${ring.replication})`;
}

/** `torus serve`. */
export const serveCommand: Command = {
  name: "serve",
  summary: "Run a storage node (single-node mode with embedded metadata)",
  help,
  run(args, io) {
    const { values, positionals } = parseFlags(expandNbdFlag(args), serveFlags);
    if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    return serve(values, io);
  },
};
