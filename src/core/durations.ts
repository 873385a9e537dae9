/**
 * Durations on the command line: a number and a unit (`500ms`, `30s`, `10m`, `1h`), or `0`.
 * @module
 */

import { invalid } from "./errors.ts";

const unitMs: ReadonlyMap<string, number> = new Map([
  ["ms", 1],
  ["s", 1000],
  ["m", 60_000],
  ["h", 3_600_000],
]);

/** Longest duration accepted (a week): anything longer is a typo. */
export const DURATION_MAX_MS = 7 * 24 * 3_600_000;

/** Parses a duration into milliseconds; throws `invalid` with the accepted forms. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (match === null) {
    throw invalid(`invalid duration "${text}": expected a number with a unit such as 30s or 10m`);
  }
  const value = Number(match[1]);
  const unit = match[2];
  if (unit === undefined && value !== 0) {
    throw invalid(`invalid duration "${text}": give a unit (ms, s, m or h)`);
  }
  const ms = Math.round(value * (unit === undefined ? 0 : unitMs.get(unit)!));
  if (ms > DURATION_MAX_MS) throw invalid(`duration "${text}" is too long (at most 168h)`);
  return ms;
}
