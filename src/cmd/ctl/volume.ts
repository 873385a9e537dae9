/**
 * `torus ctl volume list|create-block|delete` and the `torus ctl block create` alias.
 * Snapshots and clones are in snapshot.ts, dump and load in transfer.ts.
 *
 * New names follow the one rule of src/core/names.ts, checked before anything is opened. Names
 * stored by older builds that break it are still listed (escaped, as every cell is) and can be
 * deleted: type them with bash's $'...' quoting, in the form the listing shows.
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
  renderCsv,
  renderJson,
  renderTable,
} from "../../cli/mod.ts";
import {
  checkName,
  escapeText,
  formatSize,
  invalid,
  NAME_RULE_TEXT,
  parseVolumeSize,
} from "../../core/mod.ts";
import type { InvalidRecord, MetadataService, VolumeInfo } from "../../metadata/mod.ts";
import { type CtlDeps, expectPositionals, metadataFlagsOf, withMetadata } from "./common.ts";
import { cloneCommand, resizeCommand, snapshotCommand } from "./snapshot.ts";
import { type BinaryStdio, processStdio, transferCommands } from "./transfer.ts";

const listFlags = {
  ...metadataFlagOptions,
  csv: { type: "boolean" },
  si: { type: "boolean" },
  json: { type: "boolean" },
} as const;

interface VolumeRow extends VolumeInfo {
  /** `free`, `in-use` (its lock is held) or `unknown` (the lock could not be read). */
  readonly status: string;
  readonly holder?: string;
}

async function volumeRows(
  mds: MetadataService,
): Promise<{ rows: VolumeRow[]; invalidRecords: InvalidRecord[] }> {
  const { volumes, invalid: invalidRecords } = await mds.volumes.listVolumes();
  const rows = await Promise.all(volumes.map(async (volume): Promise<VolumeRow> => {
    try {
      const lock = await mds.blockVolumes.lockStatus(volume.id);
      return lock.state === "free"
        ? { ...volume, status: "free" }
        : { ...volume, status: "in-use", holder: lock.holder };
    } catch {
      return { ...volume, status: "unknown" };
    }
  }));
  return { rows, invalidRecords };
}

function printVolumes(
  rows: VolumeRow[],
  values: { csv?: boolean; si?: boolean; json?: boolean },
  io: Io,
) {
  if (values.json) {
    io.stdout(renderJson(rows));
    return;
  }
  const header = ["VOLUME NAME", "SIZE", "TYPE", "STATUS"];
  const size = (bytes: number) => formatSize(bytes, { si: values.si ?? false });
  const cells = rows.map((v) => [v.name, size(v.sizeBytes), v.type, v.status]);
  io.stdout(values.csv ? renderCsv(header, cells) : renderTable(header, cells));
}

function listCommand(deps: CtlDeps): Command {
  return {
    name: "list",
    summary: "List volumes with their size, type and lock status",
    help: `Usage: torus ctl volume list [--csv] [--si] [--json]

Lists every volume: name, size, type and status (free, in-use when a client holds its lock).
Control, zero-width and bidi characters in names (possible in volumes made by older builds) are
shown as escapes such as \\u200b; records that cannot be read are reported on stderr.
  --csv   comma-separated values with a header line
  --si    sizes in powers of 1000 (kB, MB) instead of 1024 (KiB, MiB)
  --json  machine-readable output

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, listFlags);
      expectPositionals(positionals, []);
      const { rows, invalidRecords } = await withMetadata(
        deps,
        metadataFlagsOf(values),
        (m) => volumeRows(m.service),
      );
      // One bad record must not hide every volume: it is reported, one escaped line each.
      for (const record of invalidRecords) {
        io.stderr(
          `torus ctl volume list: skipping invalid volume record ` +
            `${escapeText(record.key)}: ${escapeText(record.reason)}\n`,
        );
      }
      printVolumes(rows, values, io);
      return ExitCode.Ok;
    },
  };
}

function createBlockCommand(deps: CtlDeps, name: string, usage: string): Command {
  return {
    name,
    summary: "Create a block volume: NAME SIZE (e.g. 10GiB)",
    help: `Usage: ${usage} NAME SIZE

Creates a block volume of SIZE bytes (512KiB, 10GiB, 20GB or plain bytes): a whole number of
512-byte sectors. No data is written: a new volume reads as zeros.
NAME is ${NAME_RULE_TEXT}.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["NAME", "SIZE"]);
      const [volumeName, sizeText] = positionals as [string, string];
      checkName(volumeName, "volume");
      const sizeBytes = parseVolumeSize(sizeText);
      const created = await withMetadata(deps, metadataFlagsOf(values), async (m) => {
        return await m.service.volumes.createBlockVolume(volumeName, sizeBytes);
      });
      io.stdout(
        `Created block volume "${created.name}" (id ${created.id}, ${
          formatSize(created.sizeBytes)
        })\n`,
      );
      return ExitCode.Ok;
    },
  };
}

function deleteCommand(deps: CtlDeps): Command {
  return {
    name: "delete",
    summary: "Delete a volume (it must not be in use)",
    help: `Usage: torus ctl volume delete NAME

Deletes volume NAME and its snapshots. Fails while a client has it open (its lock is held). The
volume's blocks are reclaimed later by garbage collection. A name that volume list shows with
escapes (\\u200b) can be typed with bash's quoting: torus ctl volume delete $'db\\u200b'.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, metadataFlagOptions);
      expectPositionals(positionals, ["NAME"]);
      const volumeName = positionals[0]!;
      await withMetadata(deps, metadataFlagsOf(values), async (m) => {
        const volume = await m.service.volumes.getVolume(volumeName);
        if (volume.type !== "block") {
          throw invalid(`volume "${volumeName}" has type ${volume.type}; only block is supported`);
        }
        await m.service.volumes.deleteVolume(volumeName);
      });
      io.stdout(`Deleted volume "${escapeText(volumeName)}"\n`);
      return ExitCode.Ok;
    },
  };
}

/** `torus ctl volume`. */
export function volumeCommand(deps: CtlDeps): Command {
  return commandGroup("volume", "Manage volumes", [
    listCommand(deps),
    createBlockCommand(deps, "create-block", "torus ctl volume create-block"),
    deleteCommand(deps),
    resizeCommand(deps),
  ], { path: "ctl volume" });
}

/** `torus ctl block`: create (an alias of volume create-block), snapshots, clones, dump, load. */
export function blockCommand(deps: CtlDeps, stdio: BinaryStdio = processStdio): Command {
  return commandGroup(
    "block",
    "Manage block volumes",
    [
      createBlockCommand(deps, "create", "torus ctl block create"),
      snapshotCommand(deps),
      cloneCommand(deps),
      ...transferCommands(deps, stdio),
    ],
    { path: "ctl block" },
  );
}
