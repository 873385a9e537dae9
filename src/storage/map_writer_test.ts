/** The map writer's pure parts: runs of dirty slots and how the high-water mark is raised. */

import assert from "node:assert/strict";
import {
  HIGH_WATER_STEP_SLOTS_MAX,
  highWaterStepSlots,
  raisedHighWater,
  toRuns,
} from "./map_writer.ts";

Deno.test("map writer: dirty slots share a run only across slots whose entry is zero", () => {
  const zero = () => true;
  assert.deepEqual(toRuns([1, 2, 3, 20, 24, 100], zero), [[1, 4], [20, 25], [100, 101]]);
  // Slot 22 holds an entry that did not change: it is never rewritten.
  assert.deepEqual(toRuns([20, 24], (slot) => slot !== 22), [[20, 21], [24, 25]]);
  assert.deepEqual(toRuns([], zero), []);
});

Deno.test("map writer: the high-water mark grows by steps, at least by half, never past the end", () => {
  const step = HIGH_WATER_STEP_SLOTS_MAX;
  assert.equal(highWaterStepSlots(100 * step), step);
  assert.equal(raisedHighWater(0, 0, 10 * step), step);
  assert.equal(raisedHighWater(step, step, 10 * step), 2 * step);
  assert.equal(raisedHighWater(4 * step, 4 * step, 100 * step), 6 * step);
  assert.equal(raisedHighWater(0, 5 * step + 3, 100 * step), 6 * step);
  // Small stores move in eighths (at least 8 slots), never past their end.
  assert.equal(highWaterStepSlots(24), 8);
  assert.equal(raisedHighWater(0, 0, 24), 8);
  assert.equal(raisedHighWater(8, 9, 24), 16);
  assert.equal(raisedHighWater(16, 16, 24), 24);
  assert.equal(raisedHighWater(0, 10, 12), 12);
});
