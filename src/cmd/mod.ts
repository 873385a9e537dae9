/**
 * The command table of the `torus` program. Each top-level command lives in its own file; this
 * module only lists them.
 * @module
 */

import type { Command } from "../cli/mod.ts";
import { aoeCommand } from "./aoe.ts";
import { blkCommand } from "./blk.ts";
import { ctlCommand, defaultCtlDeps } from "./ctl/mod.ts";
import { ringtoolCommand } from "./ringtool.ts";
import { serveCommand } from "./serve.ts";
import { versionCommand } from "./version.ts";

/** Top-level commands in the order `torus help` lists them. */
export const commands: readonly Command[] = [
  serveCommand,
  ctlCommand(defaultCtlDeps(() => commands)),
  blkCommand(),
  aoeCommand,
  ringtoolCommand,
  versionCommand,
];
