/**
 * Human sizes, parsed and printed in one place: `512KiB`, `1GiB`, `20GB`, `1.5 TiB`, plain bytes,
 * and `N%` of some space. IEC units (KiB, MiB, ...) are powers of 1024, SI units (kB, MB, ...)
 * powers of 1000, as go-humanize's ParseBytes, which the original used.
 *
 * Every size the program reads goes through {@link parseSize} (or its wrappers here), so every
 * bad size gets the same one-line messages: "negative", "too large", "must be a whole number of
 * 512-byte sectors". The arithmetic is exact (decimal digits times the unit in bigint, rounded
 * down to whole bytes), so `4.1MB` is 4100000 bytes, not 4099999.
 * @module
 */

import { invalid } from "./errors.ts";
import { SECTOR_SIZE_BYTES } from "./limits.ts";

const unitBytes: ReadonlyMap<string, bigint> = new Map([
  ["", 1n],
  ["b", 1n],
  ["k", 10n ** 3n],
  ["kb", 10n ** 3n],
  ["m", 10n ** 6n],
  ["mb", 10n ** 6n],
  ["g", 10n ** 9n],
  ["gb", 10n ** 9n],
  ["t", 10n ** 12n],
  ["tb", 10n ** 12n],
  ["p", 10n ** 15n],
  ["pb", 10n ** 15n],
  ["e", 10n ** 18n],
  ["eb", 10n ** 18n],
  ["ki", 1n << 10n],
  ["kib", 1n << 10n],
  ["mi", 1n << 20n],
  ["mib", 1n << 20n],
  ["gi", 1n << 30n],
  ["gib", 1n << 30n],
  ["ti", 1n << 40n],
  ["tib", 1n << 40n],
  ["pi", 1n << 50n],
  ["pib", 1n << 50n],
  ["ei", 1n << 60n],
  ["eib", 1n << 60n],
]);

/** Largest size any parser here returns: the largest exact integer of a JavaScript number. */
export const SIZE_MAX_BYTES = Number.MAX_SAFE_INTEGER;

/** An optional minus (to name it in the error), digits with an optional fraction, a unit. */
const sizePattern = /^(-?)\s*(\d+|\d*\.\d+)\s*([a-z]*)$/i;

/** `text` quoted for a one-line error, shortened so a huge argument cannot flood the terminal. */
function quoted(text: string): string {
  return JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}...` : text);
}

/** `digits` (with an optional `.fraction`) times `unit`, rounded down, exactly. */
function exactBytes(digits: string, unit: bigint): bigint {
  const [whole = "", fraction = ""] = digits.split(".");
  const scaled = BigInt((whole || "0") + fraction) * unit;
  return scaled / 10n ** BigInt(fraction.length);
}

/**
 * Parses a human size into bytes. Fractions are rounded down to whole bytes (`1.5KiB` = 1536).
 * Throws `invalid` with a one-line message: malformed, negative, or too large.
 * @example
 * ```ts
 * import { parseSize } from "./sizes.ts";
 * parseSize("512KiB"); // 524288
 * ```
 */
export function parseSize(text: string): number {
  const match = sizePattern.exec(text.trim());
  const unit = match ? unitBytes.get(match[3]!.toLowerCase()) : undefined;
  if (!match || unit === undefined) {
    throw invalid(
      `invalid size ${quoted(text)}: expected a number with an optional unit like 512KiB`,
    );
  }
  if (match[1] === "-") throw invalid(`invalid size ${quoted(text)}: a size cannot be negative`);
  const bytes = exactBytes(match[2]!, unit);
  if (bytes > BigInt(SIZE_MAX_BYTES)) {
    throw invalid(`size ${quoted(text)} is too large: at most ${SIZE_MAX_BYTES} bytes (8 PiB)`);
  }
  return Number(bytes);
}

/**
 * Parses the size of a block volume (and of an NBD export): more than 0 bytes and a whole number
 * of 512-byte sectors, as block devices are addressed in sectors.
 */
export function parseVolumeSize(text: string): number {
  const bytes = parseSize(text);
  checkVolumeSizeBytes(bytes, quoted(text));
  return bytes;
}

/** Throws `invalid` unless `bytes` is a positive whole number of 512-byte sectors. */
export function checkVolumeSizeBytes(bytes: number, shown = `${bytes} bytes`): void {
  if (bytes <= 0) throw invalid(`invalid volume size ${shown}: must be more than 0 bytes`);
  if (bytes % SECTOR_SIZE_BYTES !== 0) {
    throw invalid(
      `invalid volume size ${shown}: must be a whole number of ${SECTOR_SIZE_BYTES}-byte ` +
        `sectors (${bytes} bytes is not)`,
    );
  }
}

/** A capacity as written by a user: bytes, or a share of some space measured later. */
export type Capacity =
  | { readonly kind: "bytes"; readonly bytes: number }
  | { readonly kind: "percent"; readonly percent: number };

/** Parses a size or `N%` (more than 0, at most 100; fractions allowed: `12.5%`). */
export function parseCapacity(text: string): Capacity {
  const trimmed = text.trim();
  if (!trimmed.endsWith("%")) return { kind: "bytes", bytes: parseSize(trimmed) };
  const percentText = trimmed.slice(0, -1).trim();
  if (/^-\s*[\d.]/.test(percentText)) {
    throw invalid(`invalid size ${quoted(text)}: a size cannot be negative`);
  }
  const percent = Number(percentText);
  if (!/^\d+(\.\d+)?$/.test(percentText) || percent < 1 || percent > 100) {
    throw invalid(`invalid size ${quoted(text)}: a percentage must be between 1% and 100%`);
  }
  return { kind: "percent", percent };
}

/** The bytes of `capacity`; a percentage is taken of `availableBytes()`, rounded down. */
export function capacityBytes(capacity: Capacity, availableBytes: () => number): number {
  if (capacity.kind === "bytes") return capacity.bytes;
  return Math.floor(availableBytes() * capacity.percent / 100);
}

/** {@link parseCapacity} then {@link capacityBytes}: `N%` (1..100) of `availableBytes()`. */
export function parseSizeOrPercent(text: string, availableBytes: () => number): number {
  return capacityBytes(parseCapacity(text), availableBytes);
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
