/**
 * torus: distributed block storage in one program. `torus <command> [flags]`; see `torus help`.
 * This file only dispatches: it maps argv[0] to a command in src/cmd and sets the exit code.
 * @module
 */

import { type Command, ExitCode, type Io, processIo, runCommand } from "./src/cli/mod.ts";
import { escapeText } from "./src/core/mod.ts";
import { commands } from "./src/cmd/mod.ts";
import { tuneMallocForLargeBuffers } from "./src/sys/mod.ts";

function topLevelHelp(): string {
  const width = Math.max(...commands.map((c) => c.name.length), "help".length);
  return [
    "torus: distributed block storage (replicated volumes over NBD and ATA-over-Ethernet)",
    "",
    "Usage: torus <command> [flags]",
    "",
    "Commands:",
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    `  ${"help".padEnd(width)}  Show help for torus or a command`,
    "",
    "Run 'torus <command> --help' for the flags of a command.",
    "",
  ].join("\n");
}

/** Runs the program with `args`; returns the exit code. */
export async function main(args: string[], io: Io = processIo): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h") {
    io[name === undefined ? "stderr" : "stdout"](topLevelHelp());
    return name === undefined ? ExitCode.Usage : ExitCode.Ok;
  }
  if (name === "help") return help(rest, io);
  if (name === "--version") return await main(["version"], io);
  const command = commands.find((c) => c.name === name);
  if (!command) {
    io.stderr(
      `torus: unknown command "${escapeText(name)}"\n` +
        "Run 'torus help' for the list of commands.\n",
    );
    return ExitCode.Usage;
  }
  return await runCommand(command, rest, io);
}

function help(args: string[], io: Io): number {
  const [name] = args;
  if (name === undefined) {
    io.stdout(topLevelHelp());
    return ExitCode.Ok;
  }
  const command: Command | undefined = commands.find((c) => c.name === name);
  if (!command) {
    io.stderr(`torus help: unknown command "${escapeText(name)}"\n`);
    return ExitCode.Usage;
  }
  io.stdout(command.help.trimEnd() + "\n");
  return ExitCode.Ok;
}

if (import.meta.main) {
  // Every torus process moves block-sized buffers (a client with no store too: its copies of
  // each block it sends to the holders), and fresh ones cost page faults (see the function).
  tuneMallocForLargeBuffers();
  Deno.exit(await main(Deno.args));
}
