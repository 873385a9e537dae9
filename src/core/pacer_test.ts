import assert from "node:assert/strict";
import { ManualClock } from "./clock.ts";
import { Pacer } from "./pacer.ts";

Deno.test("Pacer: units wait their turn at the rate; no rate, no wait", async () => {
  const clock = new ManualClock(1_000);
  const pacer = new Pacer(1_000, clock); // 1000 bytes a second
  await pacer.wait(500); // the first starts at once
  let second = false;
  const waiting = pacer.wait(500).then(() => second = true);
  await clock.advance(499);
  assert.equal(second, false, "not before 500 ms");
  await clock.advance(1);
  await waiting;
  assert.equal(second, true);
  const free = new Pacer(0, clock);
  await free.wait(1 << 30);
});

Deno.test("Pacer: an abort ends the wait without an error", async () => {
  const clock = new ManualClock(0);
  const pacer = new Pacer(10, clock);
  await pacer.wait(100);
  const stop = new AbortController();
  const waiting = pacer.wait(100, stop.signal);
  stop.abort();
  await waiting;
});
