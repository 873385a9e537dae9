/** contrib/grafana/grafana.json uses only metrics a node exposes (as a cluster member). */

import assert from "node:assert/strict";
import { NodeMetrics } from "./metrics.ts";
import { clusterSection, liveReport } from "./report_fixture.ts";

Deno.test("grafana: every metric the dashboard queries is one a node exposes", async () => {
  const path = new URL("../../contrib/grafana/grafana.json", import.meta.url);
  const dashboard = JSON.parse(await Deno.readTextFile(path)) as {
    panels: { title: string; targets: { expr: string }[] }[];
  };
  const exposition = await new NodeMetrics().render(liveReport({ cluster: clusterSection() }));
  const exposed = new Set(
    exposition.split("\n").filter((l) => l.startsWith("# TYPE ")).map((l) => l.split(" ")[2]),
  );
  let queried = 0;
  for (const panel of dashboard.panels) {
    for (const target of panel.targets) {
      for (const name of target.expr.match(/\btorus_[a-z0-9_]+/g) ?? []) {
        queried++;
        assert.ok(
          exposed.has(name),
          `panel "${panel.title}" queries ${name}, which no node exposes`,
        );
      }
    }
  }
  assert.ok(queried >= 15, `only ${queried} metrics queried`);
});
