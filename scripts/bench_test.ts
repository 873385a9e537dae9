/** The bench runner's report parsing and formatting. */

import assert from "node:assert/strict";
import { bytesPerIteration, formatResults, parseReport } from "./bench.ts";

Deno.test("bench: a size tag gives bytes per iteration", () => {
  assert.equal(bytesPerIteration("engine put [32MiB/iter]"), 32 * 1024 * 1024);
  assert.equal(bytesPerIteration("plain [512 KiB/iter]"), 512 * 1024);
  assert.equal(bytesPerIteration("no tag"), null);
  assert.equal(bytesPerIteration("bad [lots/iter]"), null);
});

Deno.test("bench: a JSON report becomes a table with throughput and ratios", () => {
  const report = JSON.stringify({
    benches: [
      {
        group: "g",
        name: "plain [1MB/iter]",
        baseline: true,
        results: [{ ok: { avg: 1e6, min: 1e6 } }],
      },
      {
        group: "g",
        name: "engine [1MB/iter]",
        baseline: false,
        results: [{ ok: { avg: 2e6, min: 2e6 } }],
      },
      { group: "g", name: "broken", baseline: false, results: [{ failed: "boom" }] },
    ],
  });
  const results = parseReport(`Check file.ts\n${report}`);
  assert.equal(results.length, 3);
  const text = formatResults(results).join("\n");
  assert.match(text, /plain \[1MB\/iter\]\s+1\.00 ms\s+1\.00\s+baseline/);
  assert.match(text, /engine \[1MB\/iter\]\s+2\.00 ms\s+0\.50\s+0\.50x/);
  assert.match(text, /broken\s+FAILED boom/);
  assert.deepEqual(parseReport("no json here"), []);
});
