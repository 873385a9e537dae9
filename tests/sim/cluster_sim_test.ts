/**
 * Runs the cluster simulation (cluster_sim.ts) over many seeds, in three kinds of runs (faults
 * only; ring changes; the volume handed to new writers). A failing seed is named in the failure
 * with the end of the run's log; `TORUS_SIM_SEED=N deno test -A tests/sim/ --filter KIND` runs
 * that one alone (`TORUS_SIM_STEPS` sets the length, `TORUS_SIM_SEEDS` how many seeds from 1,
 * `TORUS_SIM_PROGRESS=1` names each seed as it starts, `TORUS_SIM_DUMP=DIR` writes each run's
 * whole log there; `TORUS_SIM_TRACE=1` prints it as it goes, and `TORUS_SIM_WATCH=I` adds the
 * copies of block I after every step, which reads the disks and so changes the schedule a little).
 */

import assert from "node:assert/strict";
import { runSimulation, type SimOptions } from "./cluster_sim.ts";

const oneSeed = Deno.env.get("TORUS_SIM_SEED");
const seeds = oneSeed !== undefined
  ? [Number(oneSeed)]
  : Array.from({ length: Number(Deno.env.get("TORUS_SIM_SEEDS") ?? 24) }, (_, i) => i + 1);
const steps = Number(Deno.env.get("TORUS_SIM_STEPS") ?? 150);
/** TORUS_SIM_PROGRESS=1 names each seed as it starts (to find one that never ends). */
const progress = Deno.env.get("TORUS_SIM_PROGRESS") !== undefined;

/** Runs every seed of one kind; `filter` is what `--filter` takes to run this kind alone. */
async function runSeeds(kind: string, filter: string, options: SimOptions): Promise<void> {
  const dump = Deno.env.get("TORUS_SIM_DUMP");
  for (const seed of seeds) {
    if (progress) console.error(`seed ${seed} (${kind})`);
    const result = await runSimulation(seed, steps, options);
    if (dump !== undefined) {
      await Deno.writeTextFile(`${dump}/${kind}-${seed}.txt`, result.log.join("\n"));
    }
    assert.equal(
      result.failure,
      null,
      `seed ${seed} (replay: TORUS_SIM_SEED=${seed}, --filter "${filter}"): ` +
        `${result.failure}\n${result.log.slice(-40).join("\n")}`,
    );
  }
}

Deno.test(`simulation: ${seeds.length} seeded runs of a 3-node cluster with cuts, power losses and delays`, async () => {
  await runSeeds("plain", "cuts, power", {});
});

Deno.test(`simulation: ${seeds.length} seeded runs with ring changes (a fourth node added and taken out again, A→B→A) and every node's rebalancer on`, async () => {
  await runSeeds("ring", "ring changes", { ringChanges: true });
});

Deno.test(`simulation: ${seeds.length} seeded runs with the volume handed to new writers (each earlier one left running, its writes refused and never read)`, async () => {
  await runSeeds("handoffs", "new writers", { handoffs: true });
});

Deno.test("simulation: a seed replays exactly", async () => {
  const first = await runSimulation(7, 60, { ringChanges: true });
  const again = await runSimulation(7, 60, { ringChanges: true });
  assert.deepEqual(again.log, first.log);
});
