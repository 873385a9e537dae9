import assert from "node:assert/strict";
import * as limits from "./limits.ts";

Deno.test("limits load, and every limit is a positive integer", () => {
  // Importing the module ran its load-time assertions; a broken relation would have thrown.
  const entries = Object.entries(limits);
  assert.ok(entries.length > 10);
  for (const [name, value] of entries) {
    assert.ok(Number.isSafeInteger(value) && (value as number) > 0, `${name} = ${value}`);
  }
});

Deno.test("limits that depend on each other agree", () => {
  assert.ok(limits.REP_LAYER_COPIES_DEFAULT >= 1);
  assert.ok(limits.REP_LAYER_COPIES_DEFAULT <= limits.REP_LAYER_COPIES_MAX);
  assert.ok(limits.BLOCK_SIZE_MIN_BYTES <= limits.BLOCK_SIZE_DEFAULT_BYTES);
  assert.ok(limits.BLOCK_SIZE_DEFAULT_BYTES <= limits.BLOCK_SIZE_MAX_BYTES);
  assert.ok(limits.HEARTBEAT_INTERVAL_MS * 3 <= limits.LEASE_TTL_MS);
  assert.ok(limits.PEER_STALE_MS > limits.LEASE_TTL_MS);
  assert.ok(limits.BLOCKSET_BLOCKS_MAX * limits.BLOCK_SIZE_MIN_BYTES <= 2 ** 53);
  assert.ok(limits.TDP_FRAME_OVERHEAD_MAX_BYTES + limits.BLOCK_SIZE_MAX_BYTES < 2 ** 32);
});
