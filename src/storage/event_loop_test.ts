/**
 * The engine never blocks the event loop on a file (issue 6, item 6): every file operation of
 * the code under src/storage goes through FileIo, whose real implementation makes nonblocking FFI
 * calls. A synchronous call (`pwriteSync`, `Deno.writeSync`, `fdatasyncSync`...) in the engine's
 * own files would stall every connection of the node for the length of a disk I/O; this test
 * finds one if it comes back (benchmarks and tests may use them: they measure or set up).
 */

import assert from "node:assert/strict";

const dir = new URL("./", import.meta.url);

Deno.test("storage engine: no synchronous file call in the engine's code", async () => {
  const offenders: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const name = entry.name;
    if (!entry.isFile || !name.endsWith(".ts")) continue;
    if (name.endsWith("_test.ts") || name.endsWith("_bench.ts")) continue;
    if (name.endsWith("_contract.ts") || name.endsWith("_contract_ranges.ts")) continue;
    const text = await Deno.readTextFile(new URL(name, dir));
    text.split("\n").forEach((line, i) => {
      const code = line.replace(/\/\/.*$/, "");
      if (/\b\w+Sync\s*\(/.test(code)) offenders.push(`${name}:${i + 1}: ${line.trim()}`);
    });
  }
  assert.deepEqual(offenders, [], "synchronous calls block the event loop");
});
