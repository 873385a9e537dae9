/**
 * Output formats of listing commands: aligned human tables, CSV (with a header, unlike the
 * original) and JSON (64-bit integers as decimal strings, so nothing is rounded).
 *
 * Cells hold stored values (names, addresses, lock holders) that anyone with access to the
 * metadata store could have written, so every format is safe on a terminal: table and CSV cells
 * are escaped (src/core/text.ts: control, format and separator characters become `\x1b`,
 * `\u200b`...; CSV is for scripts, but it is printed to terminals too and must not carry raw
 * escapes either), and JSON writes those characters as `\uXXXX`, which parses to the same value.
 * @module
 */

import { escapeJsonText, escapeText } from "../core/mod.ts";

/** Column alignment. */
export type Align = "left" | "right";

/** Renders rows under a header as columns separated by two spaces; no trailing blanks. */
export function renderTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  options: { align?: readonly Align[] } = {},
): string {
  const all = [header, ...rows].map((row) => row.map(escapeText));
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  const line = (row: readonly string[]) =>
    header.map((_, i) => {
      const cell = row[i] ?? "";
      const last = i === header.length - 1;
      if (options.align?.[i] === "right") return cell.padStart(widths[i]!);
      return last ? cell : cell.padEnd(widths[i]!);
    }).join("  ").trimEnd();
  return all.map(line).join("\n") + "\n";
}

function csvCell(cell: string): string {
  return /[",\r\n]/.test(cell) ? `"${cell.replaceAll('"', '""')}"` : cell;
}

/** RFC 4180 CSV with a header line; cells escaped as in tables. */
export function renderCsv(header: readonly string[], rows: readonly (readonly string[])[]): string {
  return [header, ...rows].map((r) => r.map((c) => csvCell(escapeText(c))).join(","))
    .join("\n") + "\n";
}

/**
 * JSON with bigints as decimal strings and byte arrays as base64, one document per line; DEL, C1,
 * format and separator characters as `\uXXXX` (JSON.stringify leaves them raw).
 */
export function renderJson(value: unknown): string {
  return escapeJsonText(JSON.stringify(value, (_key, v) => {
    if (typeof v === "bigint") return v.toString();
    if (v instanceof Uint8Array) return btoa(String.fromCharCode(...v));
    return v;
  })) + "\n";
}

/** "just now", "5 seconds ago", "3 minutes ago", "2 hours ago", "4 days ago". */
export function formatAgo(nowMs: number, thenMs: number): string {
  const seconds = Math.floor((nowMs - thenMs) / 1000);
  if (seconds < 1) return "just now";
  const units: [number, string][] = [[86400, "day"], [3600, "hour"], [60, "minute"], [1, "second"]];
  for (const [size, name] of units) {
    if (seconds >= size) {
      const n = Math.floor(seconds / size);
      return `${n} ${name}${n === 1 ? "" : "s"} ago`;
    }
  }
  return "just now";
}
