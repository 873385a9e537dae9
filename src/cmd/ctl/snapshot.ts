/**
 * `torus ctl block snapshot create|list|delete|restore`, `torus ctl block clone` and
 * `torus ctl volume resize`: everything about block volumes that the metadata service can do
 * without touching data. A snapshot of a volume a writer has open is taken by that writer at a
 * flush point (a request through the metadata service), so it holds exactly what was written
 * before it (docs/adr/0004-block-volume-write-path.md).
 * @module
 */

import {
  type Command,
  commandGroup,
  ExitCode,
  metadataFlagOptions,
  metadataFlagsHelp,
  parseFlags,
  renderCsv,
  renderJson,
  renderTable,
  UsageError,
} from "../../cli/mod.ts";
import {
  checkName,
  ErrorCode,
  escapeText,
  formatSize,
  NAME_RULE_TEXT,
  parseVolumeSize,
  TorusError,
} from "../../core/mod.ts";
import type { MetadataService } from "../../metadata/mod.ts";
import { checkMappableSize, growVolume, mapGeometry, snapshotVolume } from "../../block/mod.ts";
import { type CtlDeps, expectPositionals, metadataFlagsOf, withMetadata } from "./common.ts";

/** Splits `VOLUME@SNAPSHOT`, as a usage error when it is not that. */
export function volumeAtSnapshot(spec: string): { volume: string; snapshot: string } {
  const at = spec.indexOf("@");
  if (at <= 0 || at === spec.length - 1) {
    throw new UsageError(`expected VOLUME@SNAPSHOT, got "${escapeText(spec)}"`);
  }
  return { volume: spec.slice(0, at), snapshot: spec.slice(at + 1) };
}

function createCommand(deps: CtlDeps): Command {
  return {
    name: "create",
    summary: "Take a snapshot: VOLUME@SNAPSHOT",
    help: `Usage: torus ctl block snapshot create VOLUME@SNAPSHOT

Takes snapshot SNAPSHOT of VOLUME: an exact, read-only copy of what had been written when it was
taken (copy-on-write: it costs nothing until the volume changes). Works while the volume is in
use: its writer takes the snapshot at a flush point. SNAPSHOT is ${NAME_RULE_TEXT}.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["VOLUME@SNAPSHOT"]);
      const { volume, snapshot } = volumeAtSnapshot(positionals[0]!);
      checkName(snapshot, "snapshot");
      const taken = await withMetadata(
        deps,
        metadataFlagsOf(values),
        (m) => inUserTerms(volume, snapshot, snapshotVolume(m.service, volume, snapshot)),
      );
      io.stdout(
        `Created snapshot ${escapeText(volume)}@${escapeText(taken.name)} (${
          formatSize(taken.sizeBytes ?? 0)
        })\n`,
      );
      return ExitCode.Ok;
    },
  };
}

const listFlags = {
  ...metadataFlagOptions,
  csv: { type: "boolean" },
  json: { type: "boolean" },
} as const;

function listCommand(deps: CtlDeps): Command {
  return {
    name: "list",
    summary: "List the snapshots of a volume",
    help: `Usage: torus ctl block snapshot list VOLUME [--csv] [--json]

Lists the snapshots of VOLUME: name, time taken (RFC 3339), size and the clones made from it.
  --csv   comma-separated values with a header line
  --json  machine-readable output

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, listFlags);
      expectPositionals(positionals, ["VOLUME"]);
      const volumeName = positionals[0]!;
      const { snapshots, names } = await withMetadata(deps, metadataFlagsOf(values), async (m) => {
        const info = await m.service.volumes.getVolume(volumeName);
        const snapshots = await m.service.snapshots.listSnapshots(info.id);
        const names = new Map<number, string>();
        for (const snapshot of snapshots) {
          for (const id of snapshot.clones) {
            const clone = await m.service.volumes.getVolumeById(id).catch(() => null);
            names.set(id, clone?.name ?? `#${id}`);
          }
        }
        return { snapshots, names };
      });
      if (values.json) {
        io.stdout(renderJson(snapshots.map((s) => ({
          name: s.name,
          time: new Date(s.whenMs).toISOString(),
          sizeBytes: s.sizeBytes,
          clones: s.clones.map((id) => names.get(id)),
        }))));
        return ExitCode.Ok;
      }
      const header = ["SNAPSHOT NAME", "TIMESTAMP", "SIZE", "CLONES"];
      const cells = snapshots.map((s) => [
        s.name,
        new Date(s.whenMs).toISOString(),
        s.sizeBytes === null ? "?" : formatSize(s.sizeBytes),
        s.clones.map((id) => names.get(id) ?? "").join(" "),
      ]);
      if (values.csv) {
        io.stdout(renderCsv(header, cells));
      } else {
        io.stdout(`Volume: ${escapeText(volumeName)}\n`);
        io.stdout(renderTable(header, cells));
      }
      return ExitCode.Ok;
    },
  };
}

function deleteCommand(deps: CtlDeps): Command {
  return {
    name: "delete",
    summary: "Delete a snapshot: VOLUME@SNAPSHOT",
    help: `Usage: torus ctl block snapshot delete VOLUME@SNAPSHOT

Deletes the snapshot; its blocks that nothing else uses are reclaimed by garbage collection.
Refused while clones made from it exist.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["VOLUME@SNAPSHOT"]);
      const { volume, snapshot } = volumeAtSnapshot(positionals[0]!);
      await withMetadata(deps, metadataFlagsOf(values), async (m) => {
        const info = await m.service.volumes.getVolume(volume);
        await inUserTerms(volume, snapshot, refuseWithClones(m.service, info.id, snapshot));
        await inUserTerms(volume, snapshot, m.service.snapshots.deleteSnapshot(info.id, snapshot));
      });
      io.stdout(`Deleted snapshot ${escapeText(volume)}@${escapeText(snapshot)}\n`);
      return ExitCode.Ok;
    },
  };
}

function restoreCommand(deps: CtlDeps): Command {
  return {
    name: "restore",
    summary: "Roll a volume back to a snapshot: VOLUME@SNAPSHOT",
    help: `Usage: torus ctl block snapshot restore VOLUME@SNAPSHOT

Makes VOLUME's contents and size those of SNAPSHOT again; what was written since is dropped
(other snapshots keep it). The volume must not be in use. The snapshot stays.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["VOLUME@SNAPSHOT"]);
      const { volume, snapshot } = volumeAtSnapshot(positionals[0]!);
      await withMetadata(deps, metadataFlagsOf(values), async (m) => {
        const info = await m.service.volumes.getVolume(volume);
        await inUserTerms(volume, snapshot, m.service.snapshots.restoreSnapshot(info.id, snapshot));
      });
      io.stdout(`Restored ${escapeText(volume)} to snapshot ${escapeText(snapshot)}\n`);
      return ExitCode.Ok;
    },
  };
}

/** `torus ctl block snapshot`. */
export function snapshotCommand(deps: CtlDeps): Command {
  return commandGroup("snapshot", "Create, list, delete and restore snapshots", [
    createCommand(deps),
    listCommand(deps),
    deleteCommand(deps),
    restoreCommand(deps),
  ], { path: "ctl block snapshot" });
}

/** `torus ctl block clone VOLUME@SNAPSHOT NEWVOLUME`. */
export function cloneCommand(deps: CtlDeps): Command {
  return {
    name: "clone",
    summary: "Make a new volume from a snapshot (copy-on-write)",
    help: `Usage: torus ctl block clone VOLUME@SNAPSHOT NEWVOLUME

Creates NEWVOLUME as a copy-on-write clone of the snapshot: it starts with the snapshot's
contents and size, shares its blocks, and stores only what it writes itself. The snapshot cannot
be deleted while clones of it exist. NEWVOLUME is ${NAME_RULE_TEXT}.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["VOLUME@SNAPSHOT", "NEWVOLUME"]);
      const { volume, snapshot } = volumeAtSnapshot(positionals[0]!);
      const newName = checkName(positionals[1]!, "volume");
      const clone = await withMetadata(deps, metadataFlagsOf(values), async (m) => {
        const source = await m.service.volumes.getVolume(volume);
        return await inUserTerms(
          volume,
          snapshot,
          m.service.volumes.createClone(newName, source.id, snapshot),
        );
      });
      io.stdout(
        `Created block volume "${clone.name}" (id ${clone.id}, ${formatSize(clone.sizeBytes)}) ` +
          `as a clone of ${escapeText(volume)}@${escapeText(snapshot)}\n`,
      );
      return ExitCode.Ok;
    },
  };
}

/** `torus ctl volume resize NAME SIZE`. */
export function resizeCommand(deps: CtlDeps): Command {
  return {
    name: "resize",
    summary: "Grow a block volume to SIZE (in use or not)",
    help: `Usage: torus ctl volume resize NAME SIZE

Grows volume NAME to SIZE (a whole number of 512-byte sectors; shrinking is refused). A volume
in use is grown by its writer; clients see the new size when they connect again (a kernel NBD
device after detach and attach). Then grow the filesystem on it (resize2fs, xfs_growfs).

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["NAME", "SIZE"]);
      const [volumeName, sizeText] = positionals as [string, string];
      const sizeBytes = parseVolumeSize(sizeText);
      const grown = await withMetadata(deps, metadataFlagsOf(values), async (m) => {
        const global = await m.service.cluster.globalMetadata();
        checkMappableSize(sizeBytes, mapGeometry(global.blockSizeBytes));
        return await growVolume(m.service, volumeName, sizeBytes);
      });
      io.stdout(`Volume "${escapeText(grown.name)}" is now ${formatSize(grown.sizeBytes)}\n`);
      return ExitCode.Ok;
    },
  };
}

/**
 * Names the clones that keep a snapshot (the service checks again under its compare-and-swap;
 * this only says it in the user's words: volume names, not ids).
 */
async function refuseWithClones(
  service: MetadataService,
  volumeId: number,
  snapshot: string,
): Promise<void> {
  const { clones } = await service.snapshots.getSnapshot(volumeId, snapshot);
  if (clones.length === 0) return;
  const names = await Promise.all(
    clones.map((id) =>
      service.volumes.getVolumeById(id).then((clone) => clone.name, () => `id ${id}`)
    ),
  );
  throw new TorusError(
    ErrorCode.Locked,
    `snapshot "${snapshot}" of volume id ${volumeId} has clones ` +
      `(${names.map(escapeText).join(", ")}); delete those volumes first`,
  );
}

/**
 * The metadata service names a snapshot by its volume's id; a user named it VOLUME@SNAPSHOT.
 * Its errors about that snapshot are said again in the user's words (same code).
 */
async function inUserTerms<T>(volume: string, snapshot: string, call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (error) {
    if (!(error instanceof TorusError)) throw error;
    const prefix = `snapshot "${snapshot}" of volume id `;
    if (!error.message.startsWith(prefix)) throw error;
    const rest = error.message.slice(prefix.length).replace(/^\d+ /, "");
    throw new TorusError(error.code, `snapshot ${volume}@${snapshot} ${rest}`);
  }
}
