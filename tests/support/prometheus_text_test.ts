/** The strict exposition reader accepts what the node renders and refuses what breaks the format. */

import assert from "node:assert/strict";
import { NodeMetrics } from "../../src/http/mod.ts";
import { liveReport } from "../../src/http/report_fixture.ts";
import { parseExposition, sampleValue } from "./prometheus_text.ts";

Deno.test("exposition: every line the node renders is valid", async () => {
  const open = liveReport().openVolumes[0]!;
  const text = await new NodeMetrics().render(
    liveReport({ openVolumes: [open, { ...open, id: 3, name: 'odd "name"\\\n' }] }),
  );
  const families = parseExposition(text);
  assert.equal(families.get("torus_storage_flushes")?.type, "counter");
  assert.equal(families.get("torus_storage_blocks")?.type, "gauge");
  assert.equal(sampleValue(families, 'torus_storage_flushes{storage="current"}'), 4);
  assert.equal(sampleValue(families, 'torus_server_open_files{volume="odd \\"name\\"\\\\\\n"}'), 2);
  for (const family of families.values()) assert.notEqual(family.help, null);
});

Deno.test("exposition: lines that break the format are refused", () => {
  const typed = "# TYPE a counter\n";
  for (
    const [bad, why] of [
      ["a 1\n", /before its TYPE/],
      [typed + "a 1\na 2\n", /a series twice/],
      [typed + "a one\n", /not a sample/],
      [typed + 'a{x="1} 1\n', /not a sample/],
      [typed + 'a{x="\\q"} 1\n', /not a sample/],
      [typed + 'a{1x=""} 1\n', /not a sample/],
      [typed + typed, /a second TYPE/],
      ["# TYPE a widget\n", /malformed HELP or TYPE/],
      [typed + "a 1", /must end with/],
      [typed + "a  1\n", /not a sample/],
    ] as const
  ) {
    assert.throws(() => parseExposition(bad), why, JSON.stringify(bad));
  }
  const good = parseExposition(typed + 'a{x="y"} +Inf\na -1.5e3 1700000000000\n');
  assert.equal(sampleValue(good, 'a{x="y"}'), Infinity);
  assert.equal(sampleValue(good, "a"), -1500);
});
