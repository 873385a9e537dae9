/**
 * Human sizes, parsed and printed in one place: `512KiB`, `1GiB`, `20GB`, `1.5 TiB`, plain bytes,
 * and `N%` of a filesystem. IEC units (KiB, MiB, ...) are powers of 1024, SI units (kB, MB, ...)
 * powers of 1000, as go-humanize's ParseBytes, which the original used.
 * @module
 */

import { invalid } from "./errors.ts";

const unitBytes: ReadonlyMap<string, number> = new Map([
  ["", 1],
  ["b", 1],
  ["k", 1e3],
  ["kb", 1e3],
  ["m", 1e6],
  ["mb", 1e6],
  ["g", 1e9],
  ["gb", 1e9],
  ["t", 1e12],
  ["tb", 1e12],
  ["p", 1e15],
  ["pb", 1e15],
  ["ki", 2 ** 10],
  ["kib", 2 ** 10],
  ["mi", 2 ** 20],
  ["mib", 2 ** 20],
  ["gi", 2 ** 30],
  ["gib", 2 ** 30],
  ["ti", 2 ** 40],
  ["tib", 2 ** 40],
  ["pi", 2 ** 50],
  ["pib", 2 ** 50],
]);

const sizePattern = /^(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)$/i;

/**
 * Parses a human size into bytes. Fractions are allowed where the result is a whole number of
 * bytes after rounding down (`1.5KiB` = 1536). Throws `invalid` with a one-line message.
 * @example
 * ```ts
 * import { parseSize } from "./sizes.ts";
 * parseSize("512KiB"); // 524288
 * ```
 */
export function parseSize(text: string): number {
  const trimmed = text.trim();
  const match = sizePattern.exec(trimmed);
  const unit = match ? unitBytes.get((match[2] ?? "").toLowerCase()) : undefined;
  if (!match || unit === undefined) {
    throw invalid(`invalid size "${text}": expected a number with an optional unit like 512KiB`);
  }
  const bytes = Math.floor(Number(match[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw invalid(`size "${text}" is too large`);
  return bytes;
}

/**
 * Parses a size that may also be `N%` (1..100) of `filesystemBytes` (the total size of the
 * filesystem that holds the data dir, as `torus serve --size` did).
 */
export function parseSizeOrPercent(text: string, filesystemBytes: () => number): number {
  const trimmed = text.trim();
  if (!trimmed.endsWith("%")) return parseSize(trimmed);
  const percentText = trimmed.slice(0, -1).trim();
  const percent = Number(percentText);
  if (!/^\d+(\.\d+)?$/.test(percentText) || percent < 1 || percent > 100) {
    throw invalid(`invalid size "${text}": a percentage must be between 1% and 100%`);
  }
  return Math.floor(filesystemBytes() * percent / 100);
}

const iecUnits = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"] as const;
const siUnits = ["B", "kB", "MB", "GB", "TB", "PB", "EB"] as const;

/**
 * Formats bytes for humans: `512 KiB`, `1.5 GiB` (IEC), or with `si` `524 kB`. One decimal below
 * 10 units and none above, as go-humanize printed, except that a zero decimal is dropped (`1 GiB`
 * where go-humanize printed `1.0 GiB`).
 */
export function formatSize(bytes: number, options: { si?: boolean } = {}): string {
  const base = options.si ? 1000 : 1024;
  const units = options.si ? siUnits : iecUnits;
  if (!Number.isFinite(bytes) || bytes < 0) return `${bytes} B`;
  if (bytes < base) return `${bytes} B`;
  let value = bytes;
  let exponent = 0;
  while (value >= base && exponent < units.length - 1) {
    value /= base;
    exponent++;
  }
  const rounded = value < 10 ? Math.round(value * 10) / 10 : Math.round(value);
  const text = value < 10 && !Number.isInteger(rounded) ? rounded.toFixed(1) : String(rounded);
  return `${text} ${units[exponent]}`;
}
