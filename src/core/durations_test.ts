import assert from "node:assert/strict";
import { parseDuration } from "./durations.ts";

Deno.test("durations: numbers with units, and 0", () => {
  assert.equal(parseDuration("0"), 0);
  assert.equal(parseDuration("500ms"), 500);
  assert.equal(parseDuration("1.5s"), 1500);
  assert.equal(parseDuration("10m"), 600_000);
  assert.equal(parseDuration("2h"), 7_200_000);
});

Deno.test("durations: garbage, bare numbers and huge values are invalid", () => {
  for (const bad of ["", "s", "10", "-1s", "1d", "1 s", "1e3s", "169h", "0x10s"]) {
    assert.throws(() => parseDuration(bad), /duration/, bad);
  }
});
