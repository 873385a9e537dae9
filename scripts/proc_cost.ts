/**
 * What a process spent while a benchmark ran, read from /proc: its CPU (every thread, exited ones
 * included) and its threads' context switches. The parsers are in bench_nbd_report.ts (pure);
 * this module reads the files.
 * @module
 */

import {
  parseContextSwitches,
  parseCpuTicks,
  type ProcessCost,
  switchesBetween,
} from "./bench_nbd_report.ts";

/** USER_HZ, the unit of /proc's CPU times: 100 on every Linux architecture. */
const CLOCK_TICKS_PER_SECOND = 100;

/** A process's CPU ticks and its threads' context switches so far. */
export interface CostSnapshot {
  readonly cpuTicks: number;
  readonly switches: ReadonlyMap<string, number>;
}

/** A snapshot of process `pid`, or null (told to `onError`) where /proc cannot give one. */
export async function costSnapshot(
  pid: number,
  onError: (text: string) => void,
): Promise<CostSnapshot | null> {
  try {
    const cpuTicks = parseCpuTicks(await Deno.readTextFile(`/proc/${pid}/stat`));
    const switches = new Map<string, number>();
    for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
      const status = await Deno.readTextFile(`/proc/${pid}/task/${task.name}/status`)
        .catch((error) => {
          if (error instanceof Deno.errors.NotFound) return null; // the thread just ended
          throw error;
        });
      if (status !== null) switches.set(task.name, parseContextSwitches(status));
    }
    return { cpuTicks, switches };
  } catch (error) {
    onError(`no CPU accounting for process ${pid}: ${error}`);
    return null;
  }
}

/** What the process spent between two snapshots; null if either is missing. */
export function costBetween(
  before: CostSnapshot | null,
  after: CostSnapshot | null,
): ProcessCost | null {
  if (before === null || after === null) return null;
  return {
    cpuMs: (after.cpuTicks - before.cpuTicks) * 1000 / CLOCK_TICKS_PER_SECOND,
    contextSwitches: switchesBetween(before.switches, after.switches),
  };
}

/** The cost of several processes together; null if any is missing. */
export function sumCosts(costs: readonly (ProcessCost | null)[]): ProcessCost | null {
  if (costs.some((cost) => cost === null)) return null;
  return {
    cpuMs: costs.reduce((sum, cost) => sum + cost!.cpuMs, 0),
    contextSwitches: costs.reduce((sum, cost) => sum + cost!.contextSwitches, 0),
  };
}

/** How often {@link measuringCost} looks at the threads while its body runs. */
const THREAD_POLL_MS = 200;

/**
 * Runs `body` and returns its result with what each of `pids` spent meanwhile. The threads are
 * looked at every THREAD_POLL_MS as well: a thread that ends before the body does (a server's
 * thread per connection ends with the client's connection) keeps the switches it was last seen
 * with, so only its last moments are lost.
 */
export async function measuringCost<T>(
  pids: readonly number[],
  onError: (text: string) => void,
  body: () => Promise<T>,
): Promise<{ result: T; costs: (ProcessCost | null)[] }> {
  // A process that cannot be read is said once, not at every look.
  const said = new Set<string>();
  const tell = (text: string) => {
    if (!said.has(text)) onError(text);
    said.add(text);
  };
  const before = await Promise.all(pids.map((pid) => costSnapshot(pid, tell)));
  const seen = pids.map(() => new Map<string, number>());
  const look = async () => {
    const now = await Promise.all(pids.map((pid) => costSnapshot(pid, tell)));
    now.forEach((snapshot, i) => {
      for (const [thread, count] of snapshot?.switches ?? []) seen[i]!.set(thread, count);
    });
    return now;
  };
  let running = true;
  let wake: () => void = () => {};
  const poller = (async () => {
    while (running) {
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, THREAD_POLL_MS);
      });
      if (running) await look();
    }
  })();
  let result: T;
  try {
    result = await body();
  } finally {
    running = false;
    wake();
    await poller;
  }
  const after = await look();
  // The end's CPU, and every switch any look saw.
  const costs = pids.map((_, i) => {
    const end = after[i]!;
    return costBetween(before[i]!, end === null ? null : { ...end, switches: seen[i]! });
  });
  return { result, costs };
}
