/**
 * What every `torus ctl` subcommand shares: its injected dependencies (how to open metadata, the
 * environment, the clock, the terminal), flag plumbing and a scoped metadata connection that is
 * always closed.
 * @module
 */

import {
  type Command,
  type Env,
  type Io,
  metadataFlagOptions,
  type MetadataFlags,
  type OpenedMetadata,
  openMetadata,
  type OpenMetadataOptions,
  processEnv,
  UsageError,
} from "../../cli/mod.ts";
import {
  type Clock,
  CONFIRMATION_LINE_MAX_BYTES,
  escapeText,
  invalid,
  readLineBounded,
  systemClock,
} from "../../core/mod.ts";

/** Interactive input, for the confirmation destructive commands ask for on a terminal. */
export interface Terminal {
  /** Whether stdin is a terminal (a human can answer). */
  isInteractive(): boolean;
  /** One line from stdin without its newline; null at end of input. */
  readLine(): Promise<string | null>;
}

/** The process's terminal. */
export const processTerminal: Terminal = {
  isInteractive: () => Deno.stdin.isTerminal(),
  async readLine() {
    // Capped: an answer is one word; a pasted file or an endless stream must not grow memory.
    const line = await readLineBounded(Deno.stdin, CONFIRMATION_LINE_MAX_BYTES, "the answer");
    return line === null ? null : new TextDecoder().decode(line);
  },
};

/** Dependencies of the ctl commands; tests replace them. */
export interface CtlDeps {
  openMetadata(flags: MetadataFlags, options?: OpenMetadataOptions): Promise<OpenedMetadata>;
  readonly env: Env;
  readonly clock: Clock;
  readonly terminal: Terminal;
  /** The program's top-level commands (for `completion`). */
  rootCommands(): readonly Command[];
}

/** The production dependencies. */
export function defaultCtlDeps(rootCommands: () => readonly Command[] = () => []): CtlDeps {
  return {
    openMetadata: (flags, options) => openMetadata(flags, { env: processEnv, ...options }),
    env: processEnv,
    clock: systemClock,
    terminal: processTerminal,
    rootCommands,
  };
}

/** The metadata flag values out of a parsed command line. */
export function metadataFlagsOf(values: Record<string, unknown>): MetadataFlags {
  const flags: Record<string, unknown> = {};
  for (const name of Object.keys(metadataFlagOptions)) {
    if (values[name] !== undefined) flags[name] = values[name];
  }
  return flags as MetadataFlags;
}

/** Opens metadata, runs `body`, and closes the connection whatever happens. */
export async function withMetadata<T>(
  deps: CtlDeps,
  flags: MetadataFlags,
  body: (opened: OpenedMetadata) => Promise<T>,
  options: OpenMetadataOptions = {},
): Promise<T> {
  const opened = await deps.openMetadata(flags, options);
  try {
    return await body(opened);
  } finally {
    await opened.close();
  }
}

/** Throws a UsageError unless exactly `names.length` positionals were given. */
export function expectPositionals(positionals: readonly string[], names: readonly string[]): void {
  if (positionals.length === names.length) return;
  const wanted = names.length === 0 ? "no arguments" : names.join(" ");
  throw new UsageError(`expected ${wanted}, got ${positionals.length} argument(s)`);
}

/**
 * Moves metadata flags written before the subcommand (`torus ctl -C host:2379 volume list`) to
 * the end, where the leaf command parses them, as the original's persistent flags allowed.
 */
export function hoistLeadingFlags(args: readonly string[]): string[] {
  const leading: string[] = [];
  let i = 0;
  while (i < args.length && args[i]!.startsWith("-") && args[i] !== "--") {
    const arg = args[i]!;
    const name = arg.startsWith("--") ? arg.slice(2).split("=")[0]! : arg.slice(1);
    const option = Object.entries(metadataFlagOptions).find(([long, o]) =>
      long === name || ("short" in o && o.short === name)
    )?.[1];
    if (!option || arg === "-h" || arg === "--help") break;
    const takesValue = option.type === "string" && !arg.includes("=");
    leading.push(...args.slice(i, takesValue ? i + 2 : i + 1));
    i += takesValue ? 2 : 1;
  }
  return [...args.slice(i), ...leading];
}

/** The flag that confirms a destructive command (`wipe`, a ring change that drops every member). */
export const confirmFlagOptions = { "yes-i-am-sure": { type: "boolean" } } as const;

/** What a destructive command says when it asks. */
export interface Confirmation {
  /** Whether `--yes-i-am-sure` was given. */
  readonly confirmed: boolean;
  /** What is refused without the flag: `wipe all metadata`. */
  readonly action: string;
  /** The consequence, shown before the question on a terminal (one line). */
  readonly consequence: string;
  /** The command named when the answer is not YES: `wipe`. */
  readonly command: string;
}

/** The first half of {@link confirmDestructive}: `invalid` unless `--yes-i-am-sure` was given. */
export function requireConfirmFlag(confirmation: Pick<Confirmation, "confirmed" | "action">): void {
  if (!confirmation.confirmed) {
    throw invalid(`refusing to ${confirmation.action} without --yes-i-am-sure`);
  }
}

/**
 * Asks before anything that removes every ring member, all data or all metadata: refused without
 * `--yes-i-am-sure` (scripts give it), and on a terminal a literal `YES` must be typed as well, so
 * neither a pasted command line nor an empty flag value can do it by accident.
 */
export async function confirmDestructive(
  deps: CtlDeps,
  io: Io,
  confirmation: Confirmation,
): Promise<void> {
  requireConfirmFlag(confirmation);
  if (!deps.terminal.isInteractive()) return;
  io.stderr(`${escapeText(confirmation.consequence)}\nType YES to continue: `);
  const answer = await deps.terminal.readLine();
  if (answer?.trim() !== "YES") {
    throw invalid(`${confirmation.command} aborted: the answer was not YES`);
  }
}
