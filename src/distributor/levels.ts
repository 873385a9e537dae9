/**
 * Read and write levels of the distributor (the original's `--read-level` and `--write-level`).
 * @module
 */

import { invalid } from "../core/mod.ts";

/**
 * How a read looks for a copy:
 * - `block`: the holders in order, then the rest of the permutation, in rounds whose per-peer
 *   deadline doubles (a slow peer gets another chance, a dead one is passed over);
 * - `seq`: one such pass;
 * - `spread`: all holders at once, the first good copy wins; then `seq` over the rest.
 */
export type ReadLevel = "block" | "seq" | "spread";

/**
 * How many copies acknowledge a change before it returns (every holder is always sent it):
 * - `all`: every holder (R copies); fewer is an error, never a silent partial success;
 * - `one`: the first holder to answer; the rest complete in the background, and a flush waits
 *   for them;
 * - `local`: this node's own copy when it is a holder, otherwise as `one`.
 */
export type WriteLevel = "all" | "one" | "local";

export const READ_LEVELS: readonly ReadLevel[] = ["block", "seq", "spread"];
export const WRITE_LEVELS: readonly WriteLevel[] = ["all", "one", "local"];

/** Parses a read level name; `invalid` naming the choices otherwise. */
export function parseReadLevel(text: string): ReadLevel {
  const level = READ_LEVELS.find((l) => l === text);
  if (level === undefined) {
    throw invalid(`read level ${JSON.stringify(text)} is not one of ${READ_LEVELS.join(", ")}`);
  }
  return level;
}

/** Parses a write level name; `invalid` naming the choices otherwise. */
export function parseWriteLevel(text: string): WriteLevel {
  const level = WRITE_LEVELS.find((l) => l === text);
  if (level === undefined) {
    throw invalid(`write level ${JSON.stringify(text)} is not one of ${WRITE_LEVELS.join(", ")}`);
  }
  return level;
}

/** `--min-copies N|majority` (default majority, which is 0 for the distributor). */
export function parseMinCopies(value: unknown): number {
  if (value === undefined || value === "majority") return 0;
  const text = String(value);
  if (!/^[1-9][0-9]?$/.test(text)) {
    throw invalid(`"${text}" is not a whole number 1..99 or majority`);
  }
  return Number(text);
}
