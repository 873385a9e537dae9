/** The map writer's pure parts: runs of dirty slots and how the high-water mark is raised. */

import assert from "node:assert/strict";
import { HIGH_WATER_STEP_SLOTS, raisedHighWater, toRuns } from "./map_writer.ts";

Deno.test("map writer: dirty slots close together share a run; the raised range is one", () => {
  assert.deepEqual(toRuns([1, 2, 3, 20, 24, 100], { from: 0, to: 0 }), [[1, 4], [20, 25], [
    100,
    101,
  ]]);
  assert.deepEqual(toRuns([5, 200, 210], { from: 100, to: 300 }), [[5, 6], [100, 300]]);
  assert.deepEqual(toRuns([5], { from: 100, to: 300 }), [[5, 6], [100, 300]]);
  assert.deepEqual(toRuns([], { from: 100, to: 300 }), [[100, 300]]);
});

Deno.test("map writer: the high-water mark grows by steps, at least by half, never past the end", () => {
  const step = HIGH_WATER_STEP_SLOTS;
  assert.equal(raisedHighWater(0, 0, 10 * step), step);
  assert.equal(raisedHighWater(step, step, 10 * step), 2 * step);
  assert.equal(raisedHighWater(4 * step, 4 * step, 100 * step), 6 * step);
  assert.equal(raisedHighWater(0, 5 * step + 3, 100 * step), 6 * step);
  assert.equal(raisedHighWater(0, 10, 20), 20);
});
