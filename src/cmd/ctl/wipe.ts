/**
 * `torus ctl wipe --yes-i-am-sure`: deletes every metadata key under the prefix (volumes, ring,
 * peers, settings), and nothing outside it. Refuses without the flag; on a terminal it also asks
 * for a literal YES, so a pasted command line cannot wipe a cluster by accident.
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
import { invalid } from "../../core/mod.ts";
import { type CtlDeps, expectPositionals, metadataFlagsOf, withMetadata } from "./common.ts";

const flags = { ...metadataFlagOptions, "yes-i-am-sure": { type: "boolean" } } as const;

/** `torus ctl wipe`. */
export function wipeCommand(deps: CtlDeps): Command {
  return {
    name: "wipe",
    summary: "Delete all torus metadata (needs --yes-i-am-sure)",
    help: `Usage: torus ctl wipe --yes-i-am-sure

Deletes every key under the metadata prefix: settings, ring, peers, volumes and snapshots. Block
data on the nodes is not touched but becomes unreachable. On a terminal you must also type YES.

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, flags);
      expectPositionals(positionals, []);
      if (!values["yes-i-am-sure"]) {
        throw invalid("refusing to wipe all metadata without --yes-i-am-sure");
      }
      await withMetadata(deps, metadataFlagsOf(values), async ({ service, backend }) => {
        if (deps.terminal.isInteractive()) {
          io.stderr(
            `This deletes every key under ${backend.prefix} in ${describeBackend(backend)}.\n` +
              "Type YES to continue: ",
          );
          const answer = await deps.terminal.readLine();
          if (answer?.trim() !== "YES") throw invalid("wipe aborted: the answer was not YES");
        }
        const deleted = await service.cluster.wipe();
        io.stdout(`Wiped ${deleted} keys under ${backend.prefix}\n`);
      });
      return ExitCode.Ok;
    },
  };
}
