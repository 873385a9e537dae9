/** The one UUID parser: accepted forms, the canonical spelling, and clean errors. */

import assert from "node:assert/strict";
import {
  ErrorCode,
  escapedErrorMessage,
  isTorusError,
  normalizeUuid,
  parseUuid,
  randomUuid,
  SeededRandom,
} from "./mod.ts";

Deno.test("parseUuid accepts 8-4-4-4-12 hex in any case and returns it lowercase", () => {
  assert.equal(
    parseUuid("6F1A52B4-3C1E-4D5F-9A1B-0C2D3E4F5A6B"),
    "6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b",
  );
  // The original's nodes used time-based v1 UUIDs.
  assert.equal(
    normalizeUuid("c232ab00-9414-11ec-b3c8-9f6bdeced846"),
    "c232ab00-9414-11ec-b3c8-9f6bdeced846",
  );
  const random = randomUuid(new SeededRandom(7));
  assert.equal(parseUuid(random), random);
});

Deno.test("parseUuid rejects addresses, tokens, long strings, the nil UUID and near misses", () => {
  const bad = [
    "",
    "not-a-uuid",
    "x".repeat(255),
    "tdp://10.0.0.1:40000",
    "10.0.0.1:40000",
    "00000000-0000-0000-0000-000000000000",
    "6f1a52b43c1e4d5f9a1b0c2d3e4f5a6b",
    "{6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b}",
    " 6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b",
    "6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b\n",
    "6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6g",
    "6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6\u0660",
  ];
  for (const text of bad) {
    assert.equal(normalizeUuid(text), null, JSON.stringify(text));
    assert.throws(() => parseUuid(text, "peer UUID"), (e: unknown) => {
      return isTorusError(e, ErrorCode.Invalid) && /^invalid peer UUID "/.test(e.message) &&
        !escapedErrorMessage(e).includes("\n") && e.message.length < 200;
    });
  }
});
