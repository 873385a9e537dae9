/** The node identity file goes through the one UUID parser: checked and read in canonical form. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, normalizeUuid } from "../core/mod.ts";
import { nodeUuid } from "./serve.ts";

async function withDataDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-identity-" });
  try {
    await Deno.mkdir(`${dir}/metadata`);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("nodeUuid creates a UUID once, and reads one written in capitals as lowercase", async () => {
  await withDataDir(async (dir) => {
    const created = await nodeUuid(dir);
    assert.equal(normalizeUuid(created), created);
    assert.equal(await nodeUuid(dir), created);
    await Deno.writeTextFile(`${dir}/metadata/uuid`, "6F1A52B4-3C1E-4D5F-9A1B-0C2D3E4F5A6B\n");
    assert.equal(await nodeUuid(dir), "6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b");
  });
});

Deno.test("nodeUuid refuses an identity file that holds no UUID", async () => {
  await withDataDir(async (dir) => {
    for (const text of ["not-a-uuid\n", "00000000-0000-0000-0000-000000000000", "x".repeat(255)]) {
      await Deno.writeTextFile(`${dir}/metadata/uuid`, text);
      await assert.rejects(
        nodeUuid(dir),
        (e: unknown) =>
          isTorusError(e, ErrorCode.Invalid) && /does not hold a node UUID/.test(e.message),
      );
    }
  });
});
