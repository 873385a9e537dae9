import assert from "node:assert/strict";
import { AssertionError, ErrorCode, isTorusError, ManualClock, systemClock } from "./mod.ts";

Deno.test("ManualClock wakes sleepers in deadline order, ties in arrival order", async () => {
  const clock = new ManualClock(1000);
  const woken: string[] = [];
  const sleep = (name: string, ms: number) =>
    clock.sleep(ms).then(() => woken.push(`${name}@${clock.nowMs()}`));
  const all = Promise.all([sleep("c", 30), sleep("a", 10), sleep("b", 20), sleep("a2", 10)]);
  assert.equal(clock.pendingSleepers, 4);
  await clock.advance(15);
  assert.deepEqual(woken, ["a@1010", "a2@1010"]);
  assert.equal(clock.nowMs(), 1015);
  await clock.advance(100);
  await all;
  assert.deepEqual(woken, ["a@1010", "a2@1010", "b@1020", "c@1030"]);
  assert.equal(clock.nowMs(), 1115);
});

Deno.test("ManualClock lets a woken task sleep again within the same advance", async () => {
  const clock = new ManualClock();
  const ticks: number[] = [];
  const controller = new AbortController();
  const loop = (async () => {
    try {
      for (;;) {
        await clock.sleep(10, controller.signal);
        ticks.push(clock.nowMs());
      }
    } catch {
      // aborted: the loop ends
    }
  })();
  await clock.advance(45);
  assert.deepEqual(ticks, [10, 20, 30, 40]);
  controller.abort();
  await loop;
  assert.equal(clock.pendingSleepers, 0);
});

Deno.test("ManualClock sleeps of zero or negative ms wake on the next advance", async () => {
  const clock = new ManualClock(5);
  let woken = 0;
  void clock.sleep(0).then(() => woken++);
  void clock.sleep(-10).then(() => woken++);
  await clock.advance(0);
  assert.equal(woken, 2);
  assert.equal(clock.nowMs(), 5);
  await assert.rejects(clock.advance(-1), AssertionError);
});

Deno.test("ManualClock rejects an aborted sleep with the signal's reason", async () => {
  const clock = new ManualClock();
  const controller = new AbortController();
  const sleeping = clock.sleep(100, controller.signal);
  controller.abort(new Error("stop"));
  await assert.rejects(sleeping, /stop/);
  assert.equal(clock.pendingSleepers, 0);
  await assert.rejects(clock.sleep(1, AbortSignal.abort(new Error("early"))), /early/);
  assert.equal(clock.pendingSleepers, 0);
});

Deno.test("ManualClock removes its abort listener when a sleep ends", async () => {
  const clock = new ManualClock();
  const signal = new AbortController().signal;
  let listeners = 0;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = (...args: Parameters<typeof add>) => (listeners++, add(...args));
  signal.removeEventListener = (
    ...args: Parameters<typeof remove>
  ) => (listeners--, remove(...args));
  for (let i = 0; i < 100; i++) {
    const sleeping = clock.sleep(1, signal);
    await clock.advance(1);
    await sleeping;
  }
  assert.equal(listeners, 0);
});

Deno.test("ManualClock.close rejects pending and later sleeps as closed", async () => {
  const clock = new ManualClock();
  const pending = clock.sleep(10);
  clock.close();
  const isClosed = (error: unknown) => isTorusError(error, ErrorCode.Closed);
  await assert.rejects(pending, isClosed);
  await assert.rejects(clock.sleep(1), isClosed);
});

Deno.test("systemClock sleeps for real and honours abort", async () => {
  const start = systemClock.nowMs();
  await systemClock.sleep(20);
  assert.ok(systemClock.nowMs() - start >= 15);
  const controller = new AbortController();
  const sleeping = systemClock.sleep(10_000, controller.signal);
  controller.abort(new Error("cancelled"));
  await assert.rejects(sleeping, /cancelled/);
  await assert.rejects(systemClock.sleep(10, AbortSignal.abort(new Error("pre"))), /pre/);
});

Deno.test("after fires once its time passed unless cancelled (ManualClock and systemClock)", async () => {
  const clock = new ManualClock();
  const fired: string[] = [];
  clock.after(10, () => fired.push("kept"));
  const cancel = clock.after(10, () => fired.push("cancelled"));
  cancel();
  await clock.advance(9);
  assert.deepEqual(fired, []);
  await clock.advance(1);
  assert.deepEqual(fired, ["kept"]);
  const real: string[] = [];
  systemClock.after(5, () => real.push("kept"));
  systemClock.after(5, () => real.push("cancelled"))();
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.deepEqual(real, ["kept"]);
});
