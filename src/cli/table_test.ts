/** Output formats: aligned tables, CSV with a header, JSON without lossy numbers. */

import assert from "node:assert/strict";
import { hasInvisibleOrControl, invalid } from "../core/mod.ts";
import { reportError, UsageError } from "./command.ts";
import { formatAgo, renderCsv, renderJson, renderTable } from "./table.ts";

Deno.test("tables align columns and leave no trailing blanks", () => {
  const text = renderTable(["NAME", "SIZE", "X"], [["a", "1 KiB", ""], ["long-name", "2 B", "z"]], {
    align: ["left", "right", "left"],
  });
  assert.equal(text, "NAME        SIZE  X\na          1 KiB\nlong-name    2 B  z\n");
});

Deno.test("CSV has a header and quotes what needs quoting", () => {
  assert.equal(
    renderCsv(["A", "B"], [["x,y", 'say "hi"'], ["", "z"]]),
    'A,B\n"x,y","say ""hi"""\n,z\n',
  );
});

Deno.test("JSON prints bigints exactly and bytes as base64", () => {
  assert.equal(
    renderJson({ n: 2n ** 64n - 1n, b: Uint8Array.of(1, 2) }),
    '{"n":"18446744073709551615","b":"AQI="}\n',
  );
});

Deno.test("formatAgo speaks in whole units", () => {
  assert.equal(formatAgo(10_000, 10_000), "just now");
  assert.equal(formatAgo(11_000, 10_000), "1 second ago");
  assert.equal(formatAgo(130_000, 10_000), "2 minutes ago");
  assert.equal(formatAgo(2 * 86_400_000, 0), "2 days ago");
});

Deno.test("tables, CSV and JSON never carry a raw control, format or separator character", () => {
  const forged = "tdp://h:1\x1b[2J\x1b[H\nforged-row\r\u009b31m\u202edb\u200b\u2028";
  const table = renderTable(["ADDRESS", "UUID"], [[forged, "u"]]);
  const csv = renderCsv(["ADDRESS", "UUID"], [[forged, "u"]]);
  const json = renderJson({ address: forged });
  for (const text of [table, csv, json]) {
    for (const line of text.split("\n")) assert.equal(hasInvisibleOrControl(line), false, text);
  }
  assert.equal(table.split("\n").length, 3, "one line per row");
  assert.match(
    table,
    /tdp:\/\/h:1\\x1b\[2J\\x1b\[H\\x0aforged-row\\x0d\\u009b31m\\u202edb\\u200b\\u2028 {2}u/,
  );
  assert.equal(
    csv,
    "ADDRESS,UUID\ntdp://h:1\\x1b[2J\\x1b[H\\x0aforged-row\\x0d\\u009b31m\\u202edb\\u200b\\u2028,u\n",
  );
  assert.deepEqual(JSON.parse(json), { address: forged });
});

Deno.test("reportError escapes: stored values and typed input cannot drive a terminal", () => {
  let err = "";
  const io = { stdout: () => {}, stderr: (text: string) => void (err += text) };
  assert.equal(reportError("ctl x", invalid('volume "a\x1b[2J\u202e" not found'), io), 1);
  assert.equal(reportError("ctl x", new UsageError("Unknown option '--\x1b]0;t\x07'"), io), 2);
  assert.equal(hasInvisibleOrControl(err.replaceAll("\n", "")), false, err);
  assert.match(err, /^torus ctl x: volume "a\\x1b\[2J\\u202e" not found\n/);
  assert.match(err, /\ntorus ctl x: Unknown option '--\\x1b\]0;t\\x07'\n/);
});
