/**
 * `torus ctl`: administration over the metadata service. One file per noun; this module only
 * assembles the group. Metadata flags (-C, --data-dir, ...) may come before the noun
 * (`torus ctl -C host:2379 volume list`) or after the leaf command.
 * @module
 */

import { type Command, commandGroup, metadataFlagsHelp } from "../../cli/mod.ts";
import { LogLevel, setGlobalLogLevel } from "../../core/mod.ts";
import { versionCommand } from "../version.ts";
import { type CtlDeps, defaultCtlDeps, hoistLeadingFlags } from "./common.ts";
import { completionCommand } from "./completion.ts";
import { configCommand } from "./config.ts";
import { initCommand } from "./init.ts";
import { listPeersCommand, peerCommand } from "./peer.ts";
import { ringCommand } from "./ring.ts";
import { blockCommand, volumeCommand } from "./volume.ts";
import { wipeCommand } from "./wipe.ts";

export type { CtlDeps, Terminal } from "./common.ts";
export { defaultCtlDeps } from "./common.ts";

/** The `torus ctl` command over `deps`. */
export function ctlCommand(deps: CtlDeps = defaultCtlDeps()): Command {
  const group = commandGroup("ctl", "Administer the cluster: init, peers, ring, volumes", [
    initCommand(deps),
    configCommand(deps),
    listPeersCommand(deps, "list-peers", "torus ctl list-peers"),
    peerCommand(deps),
    ringCommand(deps),
    volumeCommand(deps),
    blockCommand(deps),
    wipeCommand(deps),
    versionCommand,
    completionCommand(deps),
  ]);
  return {
    ...group,
    help: `${group.help}\n\n${metadataFlagsHelp}\n`,
    run(args, io) {
      // Warnings only, as the original torusctl, unless --debug asks for more.
      setGlobalLogLevel(LogLevel.Warning);
      return group.run(hoistLeadingFlags(args), io);
    },
  };
}
