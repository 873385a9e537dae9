/**
 * `torus aoe VOLUME INTERFACE MAJOR MINOR`: serves one volume as the ATA-over-Ethernet target
 * eMAJOR.MINOR on a raw Ethernet interface (block/aoe/target.ts over an AF_PACKET socket).
 *
 * - With the embedded metadata (no -C): it is the single node of its data dir, as `torus serve`
 *   is (same store, same lock, no NBD); `torus serve --aoe` serves AoE next to NBD instead.
 * - With -C: a cluster client with no store, as `torus blk nbdserve`: blocks go straight to their
 *   holders, a FLUSH CACHE that succeeded is durable on every holder.
 * - Either way the volume is locked for write while served (a snapshot is served read-only).
 * - `torus aoe --flush eX.Y|all` is the initiator side, as the original's: it asks this
 *   machine's aoe driver to forget devices whose target went away (/dev/etherd/flush).
 * @module
 */

import {
  type Command,
  ExitCode,
  type Io,
  metadataFlagOptions,
  metadataFlagsHelp,
  parseFlags,
  resolveBackend,
  UsageError,
} from "../cli/mod.ts";
import {
  ErrorCode,
  escapeText,
  HTTP_PORT_DEFAULT,
  parseDuration,
  systemClock,
  TorusError,
} from "../core/mod.ts";
import {
  type AoeExport,
  type AoeExportSpec,
  checkInterfaceName,
  describeAoeExport,
  openAoePort,
  parseShelf,
  parseSlot,
  startAoeExport,
} from "./aoe_export.ts";
import { clusterNbdSettingsOf, httpLine, startClusterClient } from "./blk_nbdserve.ts";
import { httpAddressOf, serve, waitForStopSignal } from "./serve.ts";

const flags = {
  ...metadataFlagOptions,
  "sync-interval": { type: "string" },
  "write-cache": { type: "boolean" },
  flush: { type: "string" },
  // A single node's flags (as torus serve's).
  size: { type: "string" },
  host: { type: "string" },
  port: { type: "string" },
  "gc-interval": { type: "string" },
  // A cluster client's flags (as torus blk nbdserve's).
  "read-level": { type: "string" },
  "write-level": { type: "string" },
  "read-cache-size": { type: "string" },
  "min-copies": { type: "string" },
} as const;

const SINGLE_NODE_FLAGS = ["size", "gc-interval"] as const;
const CLUSTER_FLAGS = ["read-level", "write-level", "read-cache-size", "min-copies"] as const;

/** Where the aoe driver takes the names of devices to forget. */
export const AOE_DRIVER_FLUSH_PATH = "/dev/etherd/flush";

const help = `Usage: torus aoe VOLUME INTERFACE MAJOR MINOR [--write-cache [--sync-interval D]]
                 [--host H [--port P]] [--data-dir DIR] [--size SIZE|N%] [--gc-interval D]
                 [-C ENDPOINTS [--read-level L] [--write-level L] [--read-cache-size SIZE]
                  [--min-copies N]] [metadata flags]
       torus aoe --flush eMAJOR.MINOR|all

Serves VOLUME (or VOLUME@SNAPSHOT, read-only) as the ATA-over-Ethernet target eMAJOR.MINOR
(shelf MAJOR 0-65534, slot MINOR 0-254) on the Ethernet interface INTERFACE, through a raw
socket (root). Initiators on that Ethernet segment (the Linux aoe driver:
/dev/etherd/eMAJOR.MINOR) find it by broadcast; every target of a segment needs its own
MAJOR.MINOR. The volume is locked for write while served: no other writer (a second target,
an NBD writer) can open it.

Each write is durable when it is answered (write-through): the Linux aoe driver never sends
ATA FLUSH CACHE, so a guest's fsync is only safe this way. With --write-cache, writes are
answered when stored, like a disk's write cache (IDENTIFY then says so): an ATA FLUSH CACHE
that succeeded makes them durable, and so do the periodic sync and stopping. SIGINT or SIGTERM
stops it cleanly: requests in flight are answered, the volume is flushed and unlocked. If the
interface goes down or away, it stops the same way and exits 1 (for a supervisor to restart it).

Without -C it is the single node of its data dir, as torus serve (the embedded metadata, no
etcd); the data dir must not be in use by torus serve, whose own AoE flag serves AoE next to NBD.
With -C (the cluster's etcd) it is a client with no store: blocks go straight to the nodes
that hold them, and a FLUSH CACHE that succeeded is durable on every holder.

  --write-cache    answer writes before they are durable (faster; for initiators that send
                   FLUSH CACHE, or data that may lose its last seconds)
  --sync-interval D  with --write-cache, how often writes the initiator did not flush are
                   made durable (default 5s; 0: only FLUSH CACHE and stopping)
  --flush eX.Y|all   on an initiator machine: make its aoe driver forget device eX.Y (or
                   every device that is down) whose target went away, then exit
  --host H         serve the status over HTTP on host H (/status, /metrics with the target's
                   torus_aoe_* counters, /healthz); no HTTP without it
  --port P         the HTTP port (default ${HTTP_PORT_DEFAULT}; 0 picks a free port, printed)
  --size, --gc-interval  the single node's, as torus serve's (see its --help)
  --read-level, --write-level, --read-cache-size, --min-copies  the cluster client's, as
                   torus blk nbdserve's (see its --help)

${metadataFlagsHelp}
`;

/** `torus aoe --flush`: writes `device` to the aoe driver's flush file at `path`. */
export async function flushInitiatorDevice(device: string, path: string): Promise<void> {
  if (!/^(e\d{1,5}\.\d{1,3}|all)$/.test(device)) {
    throw new UsageError(`--flush "${device}": give a device as eMAJOR.MINOR (e1.2), or all`);
  }
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { write: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new TorusError(
        ErrorCode.NotExist,
        `no AoE initiator on this machine: ${path} does not exist (load the aoe driver: ` +
          `modprobe aoe)`,
      );
    }
    throw new TorusError(ErrorCode.Unavailable, `${path}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  try {
    await file.write(new TextEncoder().encode(device));
  } catch (error) {
    // The driver refuses a device that is open (EBUSY) or unknown (ENOENT).
    throw new TorusError(ErrorCode.Unavailable, `${path}: ${device}: ${(error as Error).message}`, {
      cause: error,
    });
  } finally {
    file.close();
  }
}

/** The export the positional arguments name. */
function exportSpecOf(positionals: readonly string[]): AoeExportSpec {
  if (positionals.length !== 4) {
    throw new UsageError(
      positionals.length < 4
        ? "give VOLUME INTERFACE MAJOR MINOR (for example: torus aoe vol1 eth0 1 2)"
        : `unexpected argument "${positionals[4]}"`,
    );
  }
  return {
    volume: positionals[0]!,
    interfaceName: checkInterfaceName(positionals[1]!),
    major: parseShelf(positionals[2]!),
    minor: parseSlot(positionals[3]!),
  };
}

function refuseFlags(values: Record<string, unknown>, names: readonly string[], why: string) {
  const given = names.find((name) => values[name] !== undefined);
  if (given !== undefined) throw new UsageError(`--${given} ${why}`);
}

async function aoe(values: Record<string, unknown>, positionals: string[], io: Io) {
  const spec = exportSpecOf(positionals);
  const syncInterval = String(values["sync-interval"] ?? "5s");
  let syncIntervalMs: number;
  try {
    syncIntervalMs = parseDuration(syncInterval);
  } catch (error) {
    throw new UsageError(`--sync-interval: ${(error as Error).message}`);
  }
  const backend = await resolveBackend(values);
  // The interface is checked before the node starts or the cluster is joined: a typo fails at
  // once, with nothing locked or created.
  await openAoePort(spec.interfaceName).close();
  if (backend.kind === "embedded") {
    refuseFlags(values, CLUSTER_FLAGS, "is a cluster client's flag: it needs -C");
    return await serve(
      {
        ...values,
        size: values.size ?? "1GiB",
        "gc-interval": values["gc-interval"] ?? "5m",
        aoe: [`${spec.volume}:${spec.interfaceName}:${spec.major}.${spec.minor}`],
        "aoe-sync-interval": syncInterval,
        "aoe-write-cache": values["write-cache"] === true,
      },
      io,
      "torus aoe",
      { exitWhenAoeFails: true },
    );
  }
  refuseFlags(values, SINGLE_NODE_FLAGS, "is a single node's flag: not with -C");
  return await serveFromCluster(values, spec, syncIntervalMs, io);
}

/** `torus aoe -C`: a cluster client serving one volume. */
async function serveFromCluster(
  values: Record<string, unknown>,
  spec: AoeExportSpec,
  syncIntervalMs: number,
  io: Io,
): Promise<number> {
  const settings = clusterNbdSettingsOf(values);
  const http = httpAddressOf(values);
  const stopSignal = waitForStopSignal();
  const client = await startClusterClient(values, settings);
  let exported: AoeExport | null = null;
  try {
    exported = await startAoeExport(client.volumes, spec, {
      syncIntervalMs,
      writeCache: values["write-cache"] === true,
      clock: systemClock,
    });
    const target = exported;
    const httpAddress = http === null
      ? null
      : client.serveHttp(http, { nbd: () => null, aoe: () => [target] });
    const ring = client.member.ring();
    io.stdout(
      [
        `torus aoe: client ${client.uuid}`,
        `  AoE:         ${escapeText(describeAoeExport(exported))}`,
        `  HTTP:        ${httpLine(httpAddress)}`,
        `  cluster:     ring version ${ring.version}, ${ring.memberUuids().length} nodes, ` +
        `replication ${ring.replication}`,
        `Ready. Stop with Ctrl-C (SIGINT) or SIGTERM.`,
        "",
      ].join("\n"),
    );
    const stop = await Promise.race([stopSignal, exported.failed]);
    if (stop instanceof Error) {
      // Nothing is served any more: exit (a supervisor restarts it), cleanly.
      io.stderr(`torus aoe: ${stop.message}; stopping\n`);
      return ExitCode.Failure;
    }
    io.stdout(`Received ${stop}: answering requests in flight, flushing and unlocking\n`);
  } finally {
    // The target's final flush is awaited before the client goes: its failure is the exit's.
    try {
      await exported?.close();
    } finally {
      await client.close();
    }
  }
  return ExitCode.Ok;
}

/** `torus aoe`. */
export const aoeCommand: Command = {
  name: "aoe",
  summary: "Serve a volume as an ATA-over-Ethernet target",
  help,
  async run(args, io) {
    const { values, positionals } = parseFlags(args, flags);
    if (typeof values.flush === "string") {
      if (positionals.length > 0) {
        throw new UsageError(`--flush takes no other argument ("${positionals[0]}")`);
      }
      await flushInitiatorDevice(values.flush, AOE_DRIVER_FLUSH_PATH);
      io.stdout(`Flushed ${values.flush} from this machine's aoe driver\n`);
      return ExitCode.Ok;
    }
    return await aoe(values, positionals, io);
  },
};
