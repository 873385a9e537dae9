/** Output formats: aligned tables, CSV with a header, JSON without lossy numbers. */

import assert from "node:assert/strict";
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
