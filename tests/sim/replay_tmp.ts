import { runSimulation } from "./cluster_sim.ts";
const r = await runSimulation(Number(Deno.args[0]), Number(Deno.args[1] ?? 150));
console.log(r.failure);
const f = Deno.args[2];
console.log(
  r.log.filter((l) =>
    f === undefined || l.includes(f) ||
    /cut |power|back|flush|restarted|marks|ring version|lack/.test(l)
  ).join("\n"),
);
