import assert from "node:assert/strict";
import { SharedRun } from "./shared_run.ts";

/** An operation whose runs the test finishes one by one. */
function controlled() {
  const finishers: ((error?: Error) => void)[] = [];
  let started = 0;
  const shared = new SharedRun(() => {
    started++;
    return new Promise<void>((resolve, reject) => {
      finishers.push((error) => error === undefined ? resolve() : reject(error));
    });
  });
  return { shared, finishers, started: () => started };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

Deno.test("SharedRun: a call while a run is in progress gets the next run, shared by all", async () => {
  const { shared, finishers, started } = controlled();
  const first = shared.next();
  assert.equal(started(), 1);
  const second = shared.next();
  const third = shared.next();
  assert.equal(second, third, "callers meanwhile share the waiting run");
  assert.equal(started(), 1, "it waits for the one in progress");
  finishers[0]!();
  await first;
  await tick();
  assert.equal(started(), 2, "the waiting run starts after the first ended");
  assert.equal(shared.running !== null, true);
  const fourth = shared.next();
  assert.notEqual(fourth, second, "a call after the second started needs a third run");
  finishers[1]!();
  await second;
  await tick();
  assert.equal(started(), 3);
  finishers[2]!();
  await fourth;
  assert.equal(shared.running, null);
});

Deno.test("SharedRun: a failed run fails its callers only; the next run still starts", async () => {
  const { shared, finishers, started } = controlled();
  const first = shared.next();
  const second = shared.next();
  finishers[0]!(new Error("disk gone"));
  await assert.rejects(first, /disk gone/);
  await tick();
  assert.equal(started(), 2);
  finishers[1]!();
  await second;
});
