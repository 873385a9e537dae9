/** What a process spent, from /proc (proc_cost.ts): real snapshots, sums, and a missing process. */

import assert from "node:assert/strict";
import process from "node:process";
import { costBetween, costSnapshot, measuringCost, sumCosts } from "./proc_cost.ts";

const noErrors = (text: string) => assert.fail(text);

function usedMs(usage: { user: number; system: number }): number {
  return (usage.user + usage.system) / 1000;
}

Deno.test("proc_cost: a busy stretch of this process shows as its CPU", async () => {
  // Spins until this thread has used 300 ms of CPU by getrusage (node's process.cpuUsage), not
  // for 300 ms of wall time: on a machine busy with other tests a wall-time spin got 90 ms.
  const { result, costs } = await measuringCost([Deno.pid], noErrors, () => {
    const start = process.cpuUsage();
    const giveUpMs = performance.now() + 20_000;
    let spins = 0;
    while (usedMs(process.cpuUsage(start)) < 300 && performance.now() < giveUpMs) spins++;
    return Promise.resolve(usedMs(process.cpuUsage(start)));
  });
  assert.ok(result >= 300, `the spin used ${result} ms of CPU`);
  const cost = costs[0];
  assert.ok(cost !== null && cost !== undefined, "a cost");
  // At least the 300 ms spun, counted in 10 ms ticks (other threads only add to it).
  assert.ok(cost.cpuMs >= 280 && cost.cpuMs <= 3000, `cpuMs ${cost.cpuMs}`);
  assert.ok(cost.contextSwitches >= 0);
});

Deno.test("proc_cost: a process that is gone gives no cost, and says so", async () => {
  const said: string[] = [];
  // Beyond pid_max (at most 2^22 on Linux): no such process.
  assert.equal(await costSnapshot(1 << 23, (text) => said.push(text)), null);
  assert.match(said.join("\n"), /no CPU accounting for process 8388608/);
  const own = await costSnapshot(Deno.pid, noErrors);
  assert.equal(costBetween(own, null), null);
  assert.equal(costBetween(null, own), null);
});

Deno.test("proc_cost: costs add up, and one unknown makes the sum unknown", () => {
  const a = { cpuMs: 10, contextSwitches: 3 };
  const b = { cpuMs: 5, contextSwitches: 4 };
  assert.deepEqual(sumCosts([a, b]), { cpuMs: 15, contextSwitches: 7 });
  assert.equal(sumCosts([a, null]), null);
  assert.deepEqual(sumCosts([]), { cpuMs: 0, contextSwitches: 0 });
});

Deno.test("proc_cost: a thread that ends before the body does keeps its switches", async () => {
  const sleeps = 200;
  const source = `let n = 0; const tick = () => (++n < ${sleeps} ? setTimeout(tick, 3) : ` +
    `postMessage("done")); tick();`;
  const url = `data:application/javascript,${encodeURIComponent(source)}`;
  const { costs } = await measuringCost([Deno.pid], noErrors, async () => {
    const worker = new Worker(url, { type: "module" });
    await new Promise((resolve) => worker.onmessage = resolve);
    worker.terminate();
    // The worker's thread is gone well before the body ends: only polls saw its switches.
    await new Promise((resolve) => setTimeout(resolve, 500));
  });
  const switches = costs[0]?.contextSwitches ?? 0;
  assert.ok(switches >= sleeps / 2, `${switches} switches, the worker slept ${sleeps} times`);
});

Deno.test("proc_cost: a process that cannot be read is said once, whatever the looks", async () => {
  const said: string[] = [];
  const { costs } = await measuringCost(
    [1 << 23, Deno.pid],
    (text) => said.push(text),
    () => new Promise((resolve) => setTimeout(resolve, 700)),
  );
  assert.equal(said.length, 1, said.join("\n"));
  assert.equal(costs[0], null);
  assert.ok(costs[1] !== null, "the readable process still has its cost");
});
