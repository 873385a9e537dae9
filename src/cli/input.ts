/**
 * The one set of rules for what the command line and the environment hand to every command
 * (serve, ctl and its subcommands, ringtool, blk, aoe), applied by {@link parseFlags} and
 * {@link envVar}:
 *
 * - An empty or blank value is a usage error: a flag (`--data-dir ""`, `-C ''`, `--size=`), a
 *   positional argument, or an environment variable the program reads (`TORUS_DATA_DIR=`). A
 *   script whose variable is unset must stop, not act on a default place (the embedded store
 *   instead of etcd, the filesystem root instead of the data dir).
 * - An environment variable that is not valid UTF-8 is a usage error naming the variable.
 *   (Arguments that are not valid UTF-8 never reach the program: Deno refuses them before it
 *   runs any code, so the launchers check them; see bin/torus.)
 * - A negative number (`-5`, `-1GiB`, `-.5`) is a value, not a flag, wherever it stands, so
 *   `volume create-block x -5` is a size error and `--delta -1` works. No flag is a digit.
 * @module
 */

import type { Env } from "./config_file.ts";
import { UsageError } from "./usage_error.ts";

/** An argument that reads as a negative number, never as a cluster of short flags. */
const negativeNumber = /^-(\d|\.\d)/;

/** Replaces each negative number before `--` by a token no real argument can hold. */
export function protectNegativeNumbers(
  args: readonly string[],
): { args: string[]; restore(value: string): string } {
  const saved: string[] = [];
  const end = args.indexOf("--");
  const protectedArgs = args.map((arg, i) => {
    if ((end !== -1 && i >= end) || !negativeNumber.test(arg)) return arg;
    saved.push(arg);
    // An argv string can never contain NUL, so this token cannot collide with a real argument.
    return `\0negative-${saved.length - 1}`;
  });
  const restore = (value: string): string => {
    const match = /^\0negative-(\d+)$/.exec(value);
    return (match ? saved[Number(match[1])] : undefined) ?? value;
  };
  return { args: protectedArgs, restore };
}

/** Whether `text` is empty or only white space. */
export function isBlank(text: string): boolean {
  return text.trim() === "";
}

/** Throws a UsageError for a blank flag value or a blank positional argument. */
export function checkNotBlank(
  values: Readonly<Record<string, unknown>>,
  positionals: readonly string[],
): void {
  for (const [name, value] of Object.entries(values)) {
    const texts = Array.isArray(value) ? value : [value];
    if (texts.some((text) => typeof text === "string" && isBlank(text))) {
      throw new UsageError(`--${name} needs a value; it was given an empty one`);
    }
  }
  const blank = positionals.findIndex(isBlank);
  if (blank !== -1) throw new UsageError(`argument ${blank + 1} is empty`);
}

/**
 * The blank rule for a command that does not parse its flags (the not-yet-built `blk` and `aoe`):
 * a blank argument, or a `--flag=` with a blank value, is a UsageError.
 */
export function checkArgsNotBlank(args: readonly string[]): void {
  args.forEach((arg, i) => {
    const inline = /^--([^=]+)=(.*)$/s.exec(arg);
    if (inline && isBlank(inline[2]!)) {
      throw new UsageError(`--${inline[1]} needs a value; it was given an empty one`);
    }
    if (isBlank(arg)) throw new UsageError(`argument ${i + 1} is empty`);
  });
}

/**
 * Splits a comma-separated list (`-C a:1,b:2`, `--uuids U1,U2`), trimming each item. An empty
 * item (`a:1,`, `,`, `"$A,$B"` with B unset) is a UsageError naming `what`: a list must never
 * silently shrink, least of all to nothing.
 */
export function splitList(text: string, what: string): string[] {
  const items = text.split(",").map((item) => item.trim());
  if (items.some((item) => item === "")) {
    throw new UsageError(`empty ${what} in the list "${text}"`);
  }
  return items;
}

/**
 * The environment variable `name`: undefined when unset; a UsageError when it is set but empty
 * or blank (it is never silently taken as unset), or not valid UTF-8.
 */
export function envVar(env: Env, name: string): string | undefined {
  const value = env.get(name);
  if (value !== undefined && isBlank(value)) {
    throw new UsageError(`$${name} is set but empty; unset it or give it a value`);
  }
  return value;
}

/** Reads the process environment; a value that is not valid UTF-8 is a UsageError. */
export function readProcessEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch (error) {
    if (error instanceof Deno.errors.InvalidData) {
      throw new UsageError(`$${name} is not valid UTF-8`);
    }
    throw error;
  }
}
