/**
 * `torus ctl ring get|set-replication|manual-change`. Every change is a compare-and-swap to
 * version current + 1 (the original's manual-change wrote without one), retried when another
 * change wins the race, so two administrators can never overwrite each other's ring.
 * @module
 */

import {
  type Command,
  commandGroup,
  ExitCode,
  metadataFlagOptions,
  metadataFlagsHelp,
  parseFlags,
  renderJson,
  splitList,
  UsageError,
} from "../../cli/mod.ts";
import { invalid, notExist } from "../../core/mod.ts";
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
import { type CtlDeps, expectPositionals, metadataFlagsOf, withMetadata } from "./common.ts";

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
      const ring = ringFromMessage(message);
      io.stdout(
        values.json ? renderJson(ringJson(ring)) : `${ring.describe().trimEnd()}\n`,
      );
      return ExitCode.Ok;
    },
  };
}

/** Parses a replication factor: a whole number >= 1. */
export function parseReplication(text: string): number {
  const value = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw invalid(`replication "${text}" must be a whole number of at least 1`);
  }
  return value;
}

function setReplicationCommand(deps: CtlDeps): Command {
  return {
    name: "set-replication",
    summary: "Change the replication factor of the ring",
    help: `Usage: torus ctl ring set-replication N

Sets how many nodes keep each block (1 <= N <= members) in a new ring version; nodes then
rebalance. Only mod and ketama rings have a replication to change.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["N"]);
      const replication = parseReplication(positionals[0]!);
      const next = await withMetadata(deps, metadataFlagsOf(values), async ({ service }) => {
        return await service.cluster.updateRing((current) => {
          const ring = ringFromMessage(current);
          if (!isModifiable(ring)) {
            throw invalid(
              `ring type ${ringTypeNames[ring.type]} has no replication to change; ` +
                "use torus ctl ring manual-change --type ketama",
            );
          }
          const members = ring.memberUuids().length;
          if (replication > members) {
            throw invalid(`replication ${replication} exceeds the ring's ${members} member(s)`);
          }
          return ring.changeReplication(replication).toMessage();
        });
      });
      io.stdout(ringSummary(next));
      return ExitCode.Ok;
    },
  };
}

/** Checks the peers a ring of `type` gets and its replication. */
function checkManualRing(type: RingType, peers: readonly PeerInfo[], replication: number): void {
  const name = ringTypeNames[type];
  if (type === RingType.Union) {
    throw invalid("union rings are made during rebalancing, not by hand");
  }
  if (type === RingType.Empty && peers.length > 0) throw invalid("an empty ring has no peers");
  if (type === RingType.Single && peers.length !== 1) {
    throw invalid(`a single ring needs exactly 1 peer, got ${peers.length}`);
  }
  // A ring without peers may carry any replication (it applies once peers join, as after init).
  if ((type === RingType.Mod || type === RingType.Ketama) && peers.length > 0) {
    if (replication > peers.length) {
      throw invalid(
        `replication ${replication} exceeds the ${peers.length} peer(s) of the ${name} ring`,
      );
    }
  }
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
    type: { type: "string", default: "ketama" },
    uuids: { type: "string" },
    "all-peers": { type: "boolean" },
    replication: { type: "string", short: "r", default: "2" },
  } as const;
  return {
    name: "manual-change",
    summary: "Replace the ring with a new one of a given type and members",
    help: `Usage: torus ctl ring manual-change [--type TYPE] [--uuids UUID,...|--all-peers]
                                   [--replication N]

Writes a new ring (version current + 1) of TYPE (empty, single, mod, ketama; default ketama)
with the registered peers named by --uuids (or all of them with --all-peers) and replication N
(-r, default 2). A ring with no peers is allowed.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, flags);
      expectPositionals(positionals, []);
      if (values.uuids !== undefined && values["all-peers"]) {
        throw new UsageError("give --uuids or --all-peers, not both");
      }
      const type = ringTypeFromName(values.type);
      const replication = parseReplication(values.replication);
      const uuids = values.uuids === undefined ? [] : splitList(values.uuids, "UUID");
      const next = await withMetadata(deps, metadataFlagsOf(values), async ({ service }) => {
        const peers = choosePeers(
          await service.peers.listPeers(),
          uuids,
          values["all-peers"] ?? false,
        );
        checkManualRing(type, peers, replication);
        return await service.cluster.updateRing((current) =>
          createRing(type, { version: current.version + 1, replication, peers }).toMessage()
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
