/**
 * The shape of a torus command and the CLI edge: flag parsing with one-line usage errors, and the
 * one table that maps errors to exit codes (2 usage, 1 failure).
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { ErrorCode, errorMessage, escapedErrorMessage, isTorusError } from "../core/mod.ts";
import { checkArgsNotBlank, checkNotBlank, protectNegativeNumbers } from "./input.ts";
import { UsageError } from "./usage_error.ts";

/** Exit codes of the program. */
export const ExitCode = { Ok: 0, Failure: 1, Usage: 2 } as const;

export { UsageError } from "./usage_error.ts";

/** Where a command writes; injected so tests can capture output. */
export interface Io {
  stdout(text: string): void;
  stderr(text: string): void;
}

const encoder = new TextEncoder();

/** Writes to the process's stdout and stderr. */
export const processIo: Io = {
  stdout: (text) => writeAll(Deno.stdout, text),
  stderr: (text) => writeAll(Deno.stderr, text),
};

function writeAll(target: { writeSync(p: Uint8Array): number }, text: string): void {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(target.writeSync(bytes));
}

/** One command (`serve`) or subcommand (`ctl volume list`). */
export interface Command {
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  /** The full help text (usage line first). */
  readonly help: string;
  /** A group dispatches to subcommands, so only its first argument can ask for its help. */
  readonly group?: boolean;
  /** The subcommands of a group (for help and shell completion). */
  readonly subcommands?: readonly Command[];
  /** Runs with the arguments after the command name; returns the exit code. */
  run(args: string[], io: Io): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** Parsed flags and positionals of a command line. */
export interface ParsedArgs<O extends Options> {
  values: ReturnType<typeof parseArgs<{ options: O; allowPositionals: true; strict: true }>>[
    "values"
  ];
  positionals: string[];
}

/**
 * Parses flags strictly, by the rules of input.ts: unknown flags, missing values and empty or
 * blank values (of flags and arguments) become a UsageError; negative numbers are values.
 */
export function parseFlags<O extends Options>(args: string[], options: O): ParsedArgs<O> {
  const negatives = protectNegativeNumbers(args);
  let parsed;
  try {
    parsed = parseArgs({ args: negatives.args, options, allowPositionals: true, strict: true });
  } catch (error) {
    // node:util appends advice about "--" to unknown-option errors; keep the first sentence.
    throw new UsageError(errorMessage(error).split(". ")[0]!);
  }
  const values: Record<string, unknown> = { ...parsed.values };
  for (const [name, value] of Object.entries(values)) {
    if (typeof value === "string") values[name] = negatives.restore(value);
    if (Array.isArray(value)) values[name] = value.map((v) => negatives.restore(String(v)));
  }
  const positionals = parsed.positionals.map(negatives.restore);
  checkNotBlank(values, positionals);
  return { values: values as ParsedArgs<O>["values"], positionals };
}

/** Whether `args` asks for help. */
export function wantsHelp(args: readonly string[]): boolean {
  return args.includes("--help") || args.includes("-h");
}

/**
 * Runs `command`, printing its help for `--help` and mapping errors to one line on stderr and an
 * exit code. Assertion failures are not caught: they are bugs and keep their stack.
 */
export async function runCommand(command: Command, args: string[], io: Io): Promise<number> {
  if (command.group ? wantsHelp(args.slice(0, 1)) : wantsHelp(args)) {
    io.stdout(command.help.trimEnd() + "\n");
    return ExitCode.Ok;
  }
  try {
    return await command.run(args, io);
  } catch (error) {
    return reportError(command.name, error, io);
  }
}

/**
 * Prints `torus <cmd>: <message>` and returns the exit code for `error`. Messages quote what the
 * user typed and what the store holds, so they are escaped (src/core/text.ts) before printing.
 */
export function reportError(commandName: string, error: unknown, io: Io): number {
  if (error instanceof UsageError) {
    io.stderr(`torus ${commandName}: ${escapedErrorMessage(error)}\n`);
    io.stderr(`Run 'torus ${commandName} --help' for usage.\n`);
    return ExitCode.Usage;
  }
  if (isTorusError(error) || error instanceof Error && error.name !== "AssertionError") {
    const code = isTorusError(error) && error.code !== ErrorCode.Invalid ? ` (${error.code})` : "";
    io.stderr(`torus ${commandName}: ${escapedErrorMessage(error)}${code}\n`);
    return ExitCode.Failure;
  }
  throw error;
}

/** A command that exists in the plan but is not built yet: says so honestly, exit 1. */
export function notImplementedCommand(name: string, summary: string, step: string): Command {
  return {
    name,
    summary: `${summary} (not implemented yet)`,
    help: `Usage: torus ${name} ...\n\n${summary}.\nNot implemented yet: arrives with ${step}.\n`,
    run: (args, io) => {
      checkArgsNotBlank(args);
      io.stderr(`torus ${name}: not implemented yet (arrives with ${step})\n`);
      return Promise.resolve(ExitCode.Failure);
    },
  };
}

/**
 * Dispatches `args[0]` to one of `subcommands`; prints the group's help when no subcommand or
 * `--help` is given, and a usage error for an unknown one. `options.path` is the full name of a
 * nested group (`ctl peer`).
 */
export function commandGroup(
  name: string,
  summary: string,
  subcommands: readonly Command[],
  options: { path?: string } = {},
): Command {
  // A nested group (`peer` inside `ctl`) is dispatched by its own name but speaks of itself by
  // its full path (`torus ctl peer add`) in help and errors.
  const path = options.path ?? name;
  const width = Math.max(...subcommands.map((c) => c.name.length));
  const help = [
    `Usage: torus ${path} <command> [flags]`,
    "",
    summary,
    "",
    "Commands:",
    ...subcommands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    "",
    `Run 'torus ${path} <command> --help' for the flags of a command.`,
  ].join("\n");
  return {
    name,
    summary,
    help,
    group: true,
    subcommands,
    async run(args, io) {
      const [first, ...rest] = args;
      if (first === undefined) {
        io.stderr(help + "\n");
        return ExitCode.Usage;
      }
      const sub = subcommands.find((c) => c.name === first);
      if (!sub) throw new UsageError(`unknown command "${first}"`);
      const qualified = { ...sub, name: `${path} ${sub.name}` };
      return await runCommand(qualified, rest, io);
    },
  };
}
