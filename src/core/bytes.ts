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
