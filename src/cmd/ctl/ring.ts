/**
 * `torus ctl ring get|set-replication|manual-change`. Every change is a compare-and-swap to
 * version current + 1 (the original's manual-change wrote without one), retried when another
 * change wins the race, so two administrators can never overwrite each other's ring.
 *
 * Replication follows the one rule of src/ring/replication.ts. A change after which none of the
 * current members is left (an empty `--uuids`, `--type empty`, a disjoint member list, removing
 * every peer) makes every stored block unreachable, so it asks like `wipe` does
 * ({@link changeRing}). A stored ring that cannot be read is reported with the way out:
 * `manual-change` replaces it without reading it.
 * @module
 */

import {
  type Command,
  commandGroup,
  ExitCode,
  type Io,
  metadataFlagOptions,
  metadataFlagsHelp,
  parseFlags,
  renderJson,
  splitList,
  UsageError,
} from "../../cli/mod.ts";
import {
  invalid,
  isTorusError,
  normalizeUuid,
  notExist,
  parseUuid,
  REPLICATION_DEFAULT,
  TorusError,
} from "../../core/mod.ts";
import type { MetadataService } from "../../metadata/mod.ts";
import type { PeerInfo, Ring as RingMessage } from "../../models/mod.ts";
import {
  createRing,
  isModifiable,
  type Ring,
  ringFromMessage,
  RingType,
  ringTypeFromName,
  ringTypeNames,
} from "../../ring/mod.ts";
import {
  confirmDestructive,
  confirmFlagOptions,
  type CtlDeps,
  expectPositionals,
  metadataFlagsOf,
  withMetadata,
} from "./common.ts";

/** The ring as `ring get --json` prints it. */
export function ringJson(ring: Ring): Record<string, unknown> {
  return {
    type: ringTypeNames[ring.type],
    version: ring.version,
    replication: ring.replication,
    members: ring.members().map((p) => ({
      uuid: p.uuid,
      address: p.address,
      totalBlocks: p.totalBlocks,
    })),
  };
}

/** One line describing a ring just written (`Ring version 3: ketama, replication 2, ...`). */
export function ringSummary(message: RingMessage): string {
  const type = ringTypeNames[message.type as RingType] ?? `type ${message.type}`;
  return `Ring version ${message.version}: ${type}, replication ${message.replicationFactor}, ` +
    `${message.peers.length} member(s)\n`;
}

function getCommand(deps: CtlDeps): Command {
  const flags = { ...metadataFlagOptions, json: { type: "boolean" } } as const;
  return {
    name: "get",
    summary: "Show the current ring",
    help: `Usage: torus ctl ring get [--json]

Prints the ring's type, version, replication and members.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, flags);
      expectPositionals(positionals, []);
      const message = await withMetadata(deps, metadataFlagsOf(values), async ({ service }) => {
        return await service.cluster.getRing();
      });
      const ring = storedRing(message);
      io.stdout(
        values.json ? renderJson(ringJson(ring)) : `${ring.describe().trimEnd()}\n`,
      );
      return ExitCode.Ok;
    },
  };
}

/**
 * The ring a stored Ring proto describes; `invalid` with the way out when it cannot be read (a
 * member that is not a UUID, two spellings of one member...).
 */
export function storedRing(message: RingMessage): Ring {
  try {
    return ringFromMessage(message);
  } catch (error) {
    if (!isTorusError(error, "invalid")) throw error;
    throw invalid(
      `the stored ring (version ${message.version}) is invalid: ${error.message}; ` +
        "replace it with torus ctl ring manual-change",
      { cause: error },
    );
  }
}

/**
 * The member UUIDs of a stored ring; for a ring that cannot be read, the UUIDs its proto lists
 * (canonical where they are UUIDs), so listings and confirmations still work.
 */
export function storedMemberUuids(message: RingMessage): string[] {
  try {
    return [...ringFromMessage(message).memberUuids()];
  } catch (error) {
    if (!isTorusError(error, "invalid")) throw error;
    return message.peers.map((peer) => normalizeUuid(peer.uuid) ?? peer.uuid);
  }
}

/** Parses a replication factor: a whole number (the ring's rule then decides what it allows). */
export function parseReplication(text: string): number {
  const value = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isSafeInteger(value)) {
    throw invalid(`replication "${text}" must be a whole number of at least 1`);
  }
  return value;
}

/** The replication `manual-change` gives a ring of `type` when -r is not given. */
export function defaultReplication(type: RingType): number {
  if (type === RingType.Empty) return 0;
  return type === RingType.Single ? 1 : REPLICATION_DEFAULT;
}

/** A ring change that needs `--yes-i-am-sure` (thrown inside the CAS loop, caught outside). */
class NeedsConfirmation extends TorusError {
  readonly consequence: string;
  constructor(consequence: string) {
    super("invalid", consequence);
    this.consequence = consequence;
  }
}

/** Why `next` needs confirmation: no member of `current` is left in it; null when some are. */
export function droppedEveryMember(current: RingMessage, next: RingMessage): string | null {
  const before = storedMemberUuids(current);
  if (before.length === 0) return null;
  const after = new Set(storedMemberUuids(next));
  if (before.some((uuid) => after.has(uuid))) return null;
  const what = after.size === 0
    ? "leaves the ring without members: no block can be read or written"
    : `replaces all of them: no node that holds a block now is asked for it`;
  return `The ring has ${before.length} member(s); version ${next.version} ${what}.`;
}

/**
 * Changes the ring by compare-and-swap (retried on races). A change that drops every current
 * member is refused without `--yes-i-am-sure` and, on a terminal, needs a typed YES; it is then
 * computed again from the ring as it is at that moment.
 */
export async function changeRing(
  context: { deps: CtlDeps; io: Io; service: MetadataService; confirmed: boolean },
  change: (current: RingMessage) => RingMessage,
): Promise<RingMessage> {
  let asked = false;
  for (;;) {
    try {
      return await context.service.cluster.updateRing((current) => {
        const next = change(current);
        const consequence = asked ? null : droppedEveryMember(current, next);
        if (consequence !== null) throw new NeedsConfirmation(consequence);
        return next;
      });
    } catch (error) {
      if (!(error instanceof NeedsConfirmation)) throw error;
      await confirmDestructive(context.deps, context.io, {
        confirmed: context.confirmed,
        action: "remove every member of the ring",
        consequence: error.consequence,
        command: "ring change",
      });
      asked = true;
    }
  }
}

function setReplicationCommand(deps: CtlDeps): Command {
  return {
    name: "set-replication",
    summary: "Change the replication factor of the ring",
    help: `Usage: torus ctl ring set-replication N

Sets how many nodes keep each block in a new ring version; nodes then rebalance. Only mod and
ketama rings have a replication to change: 1 <= N <= members, or up to ${REPLICATION_DEFAULT}
while the ring has fewer members than that (so a cluster can be set up before its nodes join).

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["N"]);
      const replication = parseReplication(positionals[0]!);
      const next = await withMetadata(deps, metadataFlagsOf(values), async ({ service }) => {
        return await service.cluster.updateRing((current) => {
          const ring = storedRing(current);
          if (!isModifiable(ring)) {
            throw invalid(
              `ring type ${ringTypeNames[ring.type]} has no replication to change; ` +
                "use torus ctl ring manual-change --type ketama",
            );
          }
          return ring.changeReplication(replication).toMessage();
        });
      });
      io.stdout(ringSummary(next));
      return ExitCode.Ok;
    },
  };
}

/** Checks the peers a ring of `type` gets (its replication is checked by the ring's rule). */
function checkManualRing(type: RingType, peers: readonly PeerInfo[]): void {
  if (type === RingType.Union) {
    throw invalid("union rings are made during rebalancing, not by hand");
  }
  if (type === RingType.Empty && peers.length > 0) throw invalid("an empty ring has no peers");
  if (type === RingType.Single && peers.length !== 1) {
    throw invalid(`a single ring needs exactly 1 peer, got ${peers.length}`);
  }
}

/** The UUIDs of `--uuids` (split by splitList): each checked and normalised, duplicates once. */
export function parseUuidList(items: readonly string[]): string[] {
  return [...new Set(items.map((item) => parseUuid(item, "peer UUID")))];
}

function choosePeers(
  registered: readonly PeerInfo[],
  uuids: readonly string[],
  allPeers: boolean,
): PeerInfo[] {
  const nodes = registered.filter((p) => p.address !== "");
  if (allPeers) return [...nodes];
  return uuids.map((uuid) => {
    const peer = nodes.find((p) => p.uuid === uuid);
    if (!peer) throw notExist(`peer ${uuid} is not registered`);
    return peer;
  });
}

function manualChangeCommand(deps: CtlDeps): Command {
  const flags = {
    ...metadataFlagOptions,
    ...confirmFlagOptions,
    type: { type: "string", default: "ketama" },
    uuids: { type: "string" },
    "all-peers": { type: "boolean" },
    replication: { type: "string", short: "r" },
  } as const;
  return {
    name: "manual-change",
    summary: "Replace the ring with a new one of a given type and members",
    help: `Usage: torus ctl ring manual-change [--type TYPE] [--uuids UUID,...|--all-peers]
                                   [--replication N] [--yes-i-am-sure]

Writes a new ring (version current + 1) of TYPE (empty, single, mod, ketama; default ketama)
with the registered peers named by --uuids (or all of them with --all-peers) and replication N
(-r; default ${REPLICATION_DEFAULT}, 1 for single, 0 for empty). Replication follows the rule of
set-replication. A ring with no peers is allowed, but a new ring that keeps none of the current
members makes every block unreachable: it needs --yes-i-am-sure, and on a terminal a typed YES.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, flags);
      expectPositionals(positionals, []);
      if (values.uuids !== undefined && values["all-peers"]) {
        throw new UsageError("give --uuids or --all-peers, not both");
      }
      const type = ringTypeFromName(values.type);
      const replication = values.replication === undefined
        ? defaultReplication(type)
        : parseReplication(values.replication);
      const uuids = values.uuids === undefined
        ? []
        : parseUuidList(splitList(values.uuids, "UUID"));
      const confirmed = values["yes-i-am-sure"] ?? false;
      const next = await withMetadata(deps, metadataFlagsOf(values), async ({ service }) => {
        const peers = choosePeers(
          await service.peers.listPeers(),
          uuids,
          values["all-peers"] ?? false,
        );
        checkManualRing(type, peers);
        // Built once before the store is changed, so a bad replication fails without asking.
        createRing(type, { version: 1, replication, peers });
        return await changeRing(
          { deps, io, service, confirmed },
          (current) =>
            createRing(type, { version: current.version + 1, replication, peers }).toMessage(),
        );
      });
      io.stdout(ringSummary(next));
      return ExitCode.Ok;
    },
  };
}

/** `torus ctl ring`. */
export function ringCommand(deps: CtlDeps): Command {
  return commandGroup("ring", "Inspect and change the placement ring", [
    getCommand(deps),
    setReplicationCommand(deps),
    manualChangeCommand(deps),
  ], { path: "ctl ring" });
}
