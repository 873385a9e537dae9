/**
 * Runs the cluster simulation (cluster_sim.ts) over many seeds. A failing seed is named in the
 * failure with the run's log; `TORUS_SIM_SEED=N deno test -A tests/sim/` replays exactly that one
 * (`TORUS_SIM_STEPS` sets the length, `TORUS_SIM_SEEDS` how many seeds from 1).
 */

import assert from "node:assert/strict";
import { runSimulation } from "./cluster_sim.ts";

const oneSeed = Deno.env.get("TORUS_SIM_SEED");
const seeds = oneSeed !== undefined
  ? [Number(oneSeed)]
  : Array.from({ length: Number(Deno.env.get("TORUS_SIM_SEEDS") ?? 24) }, (_, i) => i + 1);
const steps = Number(Deno.env.get("TORUS_SIM_STEPS") ?? 150);

Deno.test(`simulation: ${seeds.length} seeded runs of a 3-node cluster with cuts, power losses and delays`, async () => {
  for (const seed of seeds) {
    const result = await runSimulation(seed, steps);
    assert.equal(
      result.failure,
      null,
      `seed ${seed} (replay: TORUS_SIM_SEED=${seed}): ${result.failure}\n` +
        result.log.slice(-40).join("\n"),
    );
  }
});

Deno.test(`simulation: ${seeds.length} seeded runs with ring changes (a fourth node added and taken out again, A→B→A) and every node's rebalancer on`, async () => {
  for (const seed of seeds) {
    const result = await runSimulation(seed, steps, { ringChanges: true });
    assert.equal(
      result.failure,
      null,
      `seed ${seed} (replay: TORUS_SIM_SEED=${seed}, --filter "ring changes"): ` +
        `${result.failure}\n${result.log.slice(-40).join("\n")}`,
    );
  }
});

Deno.test("simulation: a seed replays exactly", async () => {
  const first = await runSimulation(7, 60, { ringChanges: true });
  const again = await runSimulation(7, 60, { ringChanges: true });
  assert.deepEqual(again.log, first.log);
});
