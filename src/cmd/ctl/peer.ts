/**
 * `torus ctl list-peers` (= `peer list`) and `torus ctl peer add|remove`.
 *
 * The peer table is the original's: one row per registered peer with an address (clients, which
 * register without one, are hidden), MEMBER `OK` for ring members and `Avail` for the others, and
 * one `DOWN`/`Missing` row per ring member that is not registered (a dead node). SIZE and USED
 * are blocks × block size. REB/REP DATA is the rate of the node's last rebalance.
 *
 * Peers are named by address or UUID; a UUID is matched in any case (one parser, src/core/uuid.ts)
 * and only a UUID can be forced into the ring. Every value shown comes from the metadata store
 * and is escaped by the table printers.
 * @module
 */

import {
  type Command,
  commandGroup,
  ExitCode,
  formatAgo,
  type Io,
  metadataFlagOptions,
  metadataFlagsHelp,
  parseFlags,
  renderCsv,
  renderJson,
  renderTable,
  UsageError,
} from "../../cli/mod.ts";
import {
  escapedErrorMessage,
  formatSize,
  invalid,
  normalizeUuid,
  notExist,
  quoteForMessage,
} from "../../core/mod.ts";
import { emptyPeerInfo, type PeerInfo, type Ring as RingMessage } from "../../models/mod.ts";
import { isModifiable, ringTypeNames } from "../../ring/mod.ts";
import { confirmFlagOptions, type CtlDeps, metadataFlagsOf, withMetadata } from "./common.ts";
import { changeRing, ringSummary, storedMemberUuids, storedRing } from "./ring.ts";

/** One row of the peer table. Sizes are null for members that are not registered. */
export interface PeerRow {
  readonly address: string;
  readonly uuid: string;
  readonly sizeBytes: number | null;
  readonly usedBytes: number | null;
  /** `OK` (ring member), `Avail` (registered, not a member), `DOWN` (member, not registered). */
  readonly member: "OK" | "Avail" | "DOWN";
  /** Last heartbeat in ms since the epoch; null when not registered. */
  readonly lastSeenMs: number | null;
  readonly rebalancing: boolean;
  /** Bytes per second moved by the last rebalance (0 if none); null when not registered. */
  readonly rebalanceBytesPerSecond: number | null;
}

/** The peer table's data. */
export interface PeerReport {
  readonly peers: PeerRow[];
  /** No peer is rebalancing. */
  readonly balanced: boolean;
  /** Used / total bytes of the registered peers, in percent. */
  readonly usagePercent: number;
  readonly ringVersion: number;
}

function rebalanceRate(peer: PeerInfo, blockSizeBytes: number): number | null {
  const info = peer.rebalanceInfo;
  if (!info || info.lastRebalanceBlocks === 0n) return 0;
  // As the original: bytes moved over the time since the rebalance finished, in nanoseconds.
  const elapsedNs = Number(peer.lastSeen + 1n - info.lastRebalanceFinish);
  if (elapsedNs <= 0) return 0;
  return Number(info.lastRebalanceBlocks) * blockSizeBytes * 1e9 / elapsedNs;
}

/** Builds the report from the ring, the registrations and the block size. */
export function peerReport(
  ring: RingMessage,
  registered: readonly PeerInfo[],
  blockSizeBytes: number,
): PeerReport {
  const memberUuids = storedMemberUuids(ring);
  const members = new Set(memberUuids);
  const withAddress = registered.filter((p) => p.address !== "")
    .sort((a, b) => a.address.localeCompare(b.address) || a.uuid.localeCompare(b.uuid));
  const rows: PeerRow[] = withAddress.map((p) => ({
    address: p.address,
    uuid: p.uuid,
    sizeBytes: Number(p.totalBlocks) * blockSizeBytes,
    usedBytes: Number(p.usedBlocks) * blockSizeBytes,
    member: members.has(p.uuid) ? "OK" : "Avail",
    lastSeenMs: Number(p.lastSeen / 1_000_000n),
    rebalancing: p.rebalanceInfo?.rebalancing ?? false,
    rebalanceBytesPerSecond: rebalanceRate(p, blockSizeBytes),
  }));
  const seen = new Set(withAddress.map((p) => p.uuid));
  for (const uuid of memberUuids) {
    if (seen.has(uuid)) continue;
    rows.push({
      address: "",
      uuid,
      sizeBytes: null,
      usedBytes: null,
      member: "DOWN",
      lastSeenMs: null,
      rebalancing: false,
      rebalanceBytesPerSecond: null,
    });
  }
  const total = rows.reduce((sum, r) => sum + (r.sizeBytes ?? 0), 0);
  const used = rows.reduce((sum, r) => sum + (r.usedBytes ?? 0), 0);
  return {
    peers: rows,
    balanced: !rows.some((r) => r.rebalancing),
    usagePercent: total > 0 ? (used / total) * 100 : 0,
    ringVersion: ring.version,
  };
}

const listFlags = {
  ...metadataFlagOptions,
  csv: { type: "boolean" },
  si: { type: "boolean" },
  json: { type: "boolean" },
} as const;

function printReport(
  report: PeerReport,
  options: { csv?: boolean; si?: boolean; json?: boolean; nowMs: number },
  io: Io,
): void {
  if (options.json) {
    io.stdout(renderJson(report));
    return;
  }
  const size = (bytes: number | null) =>
    bytes === null ? "???" : formatSize(bytes, { si: options.si ?? false });
  const header = ["ADDRESS", "UUID", "SIZE", "USED", "MEMBER", "UPDATED", "REB/REP DATA"];
  const rows = report.peers.map((p) => [
    p.address,
    p.uuid,
    size(p.sizeBytes),
    size(p.usedBytes),
    p.member,
    p.lastSeenMs === null ? "Missing" : formatAgo(options.nowMs, p.lastSeenMs),
    p.rebalanceBytesPerSecond === null ? "" : `${size(Math.round(p.rebalanceBytesPerSecond))}/sec`,
  ]);
  if (options.csv) {
    io.stdout(renderCsv(header, rows));
    return;
  }
  io.stdout(renderTable(header, rows));
  io.stdout(`Balanced: ${report.balanced} Usage: ${report.usagePercent.toFixed(2)}%\n`);
}

/** `torus ctl list-peers` or `torus ctl peer list`. */
export function listPeersCommand(deps: CtlDeps, name: string, usage: string): Command {
  return {
    name,
    summary: "List storage nodes with capacity, usage, ring membership and rebalance state",
    help: `Usage: ${usage} [--csv] [--si] [--json]

Lists registered storage nodes and ring members:
  ADDRESS UUID SIZE USED MEMBER UPDATED REB/REP DATA
MEMBER is OK (in the ring), Avail (registered, not in the ring) or DOWN (in the ring but not
registered: UPDATED says Missing). The footer says whether any node is rebalancing and how full
the cluster is.
  --csv   comma-separated values with a header line (no footer)
  --si    sizes in powers of 1000
  --json  machine-readable output

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, listFlags);
      if (positionals.length > 0) throw new UsageError(`${name} takes no arguments`);
      const report = await withMetadata(deps, metadataFlagsOf(values), async ({ service }) => {
        const [global, ring, peers] = await Promise.all([
          service.cluster.globalMetadata(),
          service.cluster.getRing(),
          service.peers.listPeers(),
        ]);
        warnIfUnreadable(ring, name, io);
        return peerReport(ring, peers, global.blockSizeBytes);
      });
      printReport(report, { ...values, nowMs: deps.clock.nowMs() }, io);
      return ExitCode.Ok;
    },
  };
}

/** A listing goes on when the stored ring cannot be read, and says so (one escaped line). */
function warnIfUnreadable(ring: RingMessage, commandName: string, io: Io): void {
  try {
    storedRing(ring);
  } catch (error) {
    io.stderr(`torus ${commandName}: warning: ${escapedErrorMessage(error)}\n`);
  }
}

/**
 * Whether `arg` names `peer` by UUID (in any case) or by address (with or without the URL
 * scheme). Registered peers carry canonical UUIDs (listPeers checks them).
 */
function names(arg: string, peer: PeerInfo): boolean {
  const uuid = normalizeUuid(arg);
  if (uuid !== null) return uuid === peer.uuid;
  if (arg === peer.address) return true;
  return peer.address.replace(/^[a-z]+:\/\//, "") === arg.replace(/^[a-z]+:\/\//, "");
}

/** The PeerInfo `--force` puts in the ring for `arg`: only a UUID can stand for a gone node. */
function forcedPeer(arg: string, verb: string): PeerInfo {
  const uuid = normalizeUuid(arg);
  if (uuid === null) {
    throw invalid(
      `peer ${quoteForMessage(arg)} is not registered, and --force can ${verb} only a UUID ` +
        "(32 hex digits as 8-4-4-4-12)",
    );
  }
  return emptyPeerInfo(uuid);
}

/**
 * The peers `args` name among the registered ones with an address; with `force`, names that
 * match no registration are taken as UUIDs of peers that are gone.
 */
export function resolvePeers(
  args: readonly string[],
  registered: readonly PeerInfo[],
  options: { allPeers: boolean; force: boolean; verb: string },
): PeerInfo[] {
  const candidates = registered.filter((p) => p.address !== "");
  if (options.allPeers && args.length > 0) {
    throw new UsageError("give peers or --all-peers, not both");
  }
  if (options.allPeers) {
    if (candidates.length === 0) throw notExist("no peers are registered");
    return [...candidates];
  }
  if (args.length === 0) throw new UsageError("name at least one peer (ADDRESS or UUID)");
  const chosen = new Map<string, PeerInfo>();
  for (const arg of args) {
    const peer = candidates.find((p) => names(arg, p));
    if (peer) {
      chosen.set(peer.uuid, peer);
    } else if (options.force) {
      const forced = forcedPeer(arg, options.verb);
      chosen.set(forced.uuid, forced);
    } else {
      throw notExist(
        `peer ${arg} is not currently registered; to ${options.verb} it anyway use --force`,
      );
    }
  }
  return [...chosen.values()];
}

const addFlags = {
  ...metadataFlagOptions,
  "all-peers": { type: "boolean" },
  force: { type: "boolean" },
} as const;
/** Removing can drop every member, so it takes the confirmation flag. */
const removeFlags = { ...addFlags, ...confirmFlagOptions } as const;

async function changeMembers(
  context: Parameters<typeof changeRing>[0],
  verb: "add" | "remove",
  peers: readonly PeerInfo[],
): Promise<RingMessage> {
  return await changeRing(context, (current) => {
    const ring = storedRing(current);
    if (!isModifiable(ring)) {
      throw invalid(
        `ring type ${ringTypeNames[ring.type]} cannot ${verb} peers; ` +
          "use torus ctl ring manual-change --type ketama",
      );
    }
    const next = verb === "add" ? ring.addPeers(peers) : ring.removePeers(peers.map((p) => p.uuid));
    return next.toMessage();
  });
}

function changeCommand(deps: CtlDeps, verb: "add" | "remove"): Command {
  const forceHelp = verb === "add"
    ? "also add UUIDs that are not registered (a node that will join later)"
    : "also remove UUIDs that are not registered (a dead node)";
  return {
    name: verb,
    summary: verb === "add" ? "Add peers to the ring" : "Remove peers from the ring",
    help: `Usage: torus ctl peer ${verb} ADDRESS|UUID... [--force]${
      verb === "remove" ? " [--yes-i-am-sure]" : ""
    }
       torus ctl peer ${verb} --all-peers

${verb === "add" ? "Adds" : "Removes"} peers ${
      verb === "add" ? "to" : "from"
    } the ring (a new ring version; nodes then rebalance). Peers are
named by UUID (in any case) or address and must be registered (alive), unless --force.
  --all-peers      every registered storage node
  --force          ${forceHelp}${
      verb === "remove"
        ? "\n  --yes-i-am-sure  needed to remove every member (then no block can be read); on a" +
          "\n                   terminal you must also type YES"
        : ""
    }

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, verb === "add" ? addFlags : removeFlags);
      const next = await withMetadata(deps, metadataFlagsOf(values), async ({ service }) => {
        const registered = await service.peers.listPeers();
        const peers = resolvePeers(positionals, registered, {
          allPeers: values["all-peers"] ?? false,
          force: values.force ?? false,
          verb,
        });
        const confirmed = "yes-i-am-sure" in values && values["yes-i-am-sure"] === true;
        return await changeMembers({ deps, io, service, confirmed }, verb, peers);
      });
      io.stdout(ringSummary(next));
      return ExitCode.Ok;
    },
  };
}

/** `torus ctl peer`. */
export function peerCommand(deps: CtlDeps): Command {
  return commandGroup("peer", "Manage the storage nodes of the ring", [
    listPeersCommand(deps, "list", "torus ctl peer list"),
    changeCommand(deps, "add"),
    changeCommand(deps, "remove"),
  ], { path: "ctl peer" });
}
