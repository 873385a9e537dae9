/**
 * Byte-string helpers shared by codecs and tests.
 * @module
 */

/** The first offset where `a` and `b` differ (the shorter length when one is a prefix), or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : length;
}

/**
 * Throws when `actual` and `expected` differ, naming the first differing offset. Tests use it for
 * large buffers: a deep-equality assertion that fails on megabytes spends minutes on its diff.
 */
export function assertSameBytes(actual: Uint8Array, expected: Uint8Array, message = ""): void {
  const at = firstDifference(actual, expected);
  if (at < 0) return;
  const prefix = message === "" ? "" : `${message}: `;
  const lengths = actual.length === expected.length
    ? ""
    : ` (lengths ${actual.length} and ${expected.length})`;
  throw new Error(
    `${prefix}bytes differ at offset ${at}${lengths}: ` +
      `${actual[at] ?? "end"} where ${expected[at] ?? "end"} was expected`,
  );
}

/**
 * `parts` (at least one) as one array: a view of their buffer when they lie back to back in it
 * (cut one after another from one buffer), else a copy. Saves a copy where pieces usually are
 * adjacent (journal records of one batch, the sectors of one record).
 */
export function joinedBytes(parts: readonly Uint8Array[]): Uint8Array {
  const first = parts[0]!;
  let total = first.length;
  let adjacent = true;
  for (let i = 1; i < parts.length; i++) {
    const part = parts[i]!;
    adjacent &&= part.buffer === first.buffer && part.byteOffset === first.byteOffset + total;
    total += part.length;
  }
  if (adjacent) return new Uint8Array(first.buffer, first.byteOffset, total);
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.length;
  }
  return bytes;
}
