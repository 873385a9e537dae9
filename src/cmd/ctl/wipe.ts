/**
 * `torus ctl wipe --yes-i-am-sure`: deletes every metadata key under the prefix (volumes, ring,
 * peers, settings), and nothing outside it. Refuses without the flag; on a terminal it also asks
 * for a literal YES, so a pasted command line cannot wipe a cluster by accident. It refuses a
 * prefix under which no torus cluster was initialised, so a mistyped `--metadata-prefix` (say
 * `/`) cannot delete another application's keys.
 * @module
 */

import {
  type Command,
  describeBackend,
  ExitCode,
  metadataFlagOptions,
  metadataFlagsHelp,
  parseFlags,
} from "../../cli/mod.ts";
import { escapeText, notExist } from "../../core/mod.ts";
import {
  confirmDestructive,
  confirmFlagOptions,
  type CtlDeps,
  expectPositionals,
  metadataFlagsOf,
  requireConfirmFlag,
  withMetadata,
} from "./common.ts";

const flags = { ...metadataFlagOptions, ...confirmFlagOptions } as const;

/** `torus ctl wipe`. */
export function wipeCommand(deps: CtlDeps): Command {
  return {
    name: "wipe",
    summary: "Delete all torus metadata (needs --yes-i-am-sure)",
    help: `Usage: torus ctl wipe --yes-i-am-sure

Deletes every key under the metadata prefix: settings, ring, peers, volumes and snapshots. Block
data on the nodes is not touched but becomes unreachable. On a terminal you must also type YES.
Refused when no torus cluster was initialised under the prefix.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, flags);
      expectPositionals(positionals, []);
      const confirmed = values["yes-i-am-sure"] ?? false;
      const refusal = { confirmed, action: "wipe all metadata", command: "wipe" };
      // Checked before anything is opened, so a missing flag never touches a store.
      requireConfirmFlag(refusal);
      await withMetadata(deps, metadataFlagsOf(values), async ({ service, backend }) => {
        const where = `${backend.prefix} in ${describeBackend(backend)}`;
        if (!(await service.cluster.isInitialised())) {
          throw notExist(`no torus cluster under ${where}: nothing to wipe`);
        }
        await confirmDestructive(deps, io, {
          ...refusal,
          consequence: `This deletes every key under ${where}.`,
        });
        const deleted = await service.cluster.wipe();
        io.stdout(`Wiped ${deleted} keys under ${escapeText(backend.prefix)}\n`);
      });
      return ExitCode.Ok;
    },
  };
}
