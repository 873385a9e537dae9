/**
 * `torus ctl block snapshot create|list|delete|restore`, `ctl block clone` and `ctl volume resize`
 * as a user runs them beside a running `torus serve --nbd`: the bytes each volume, snapshot and
 * clone shows over NBD afterwards, and the refusals (in use, clones left, shrinking, bad names),
 * each one line in the user's own terms (VOLUME@SNAPSHOT, volume names) with a non-zero exit.
 */

import assert from "node:assert/strict";
import { assertSameBytes } from "../../src/core/mod.ts";
import { ctlOk, runTorus, type ServeProcess, startServe } from "../support/torus_process.ts";

const MiB = 1024 * 1024;

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

/** Everything export `name` shows, read over a fresh NBD connection. */
async function readAll(serve: ServeProcess, name: string): Promise<Uint8Array> {
  const client = await serve.connect(name);
  try {
    const bytes = new Uint8Array(client.sizeBytes);
    await client.readAt(0, bytes);
    return bytes;
  } finally {
    await client.close();
  }
}

/** Writes `bytes` at 0 of export `name`, flushes and disconnects. */
async function writeFlushed(serve: ServeProcess, name: string, bytes: Uint8Array): Promise<void> {
  const client = await serve.connect(name);
  try {
    await client.writeAt(0, bytes);
    await client.flush();
  } finally {
    await client.close();
  }
}

async function ctlFails(
  data: string,
  args: string[],
  code: number,
  stderr: RegExp,
): Promise<void> {
  const out = await runTorus(["ctl", ...args, "--data-dir", data]);
  assert.equal(out.code, code, `${args.join(" ")}: ${out.stderr}`);
  assert.match(out.stderr, stderr);
  assert.equal(out.stderr.trimEnd().split("\n").length <= 2, true, out.stderr);
}

Deno.test("snapshots, clones, restore and resize: exact bytes and clear refusals", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-snap-" });
  const data = `${dir}/data`;
  try {
    await using serve = await startServe(data);
    await ctlOk(data, ["volume", "create-block", "v", "8MiB"]);
    const first = pattern(8 * MiB, 1);
    await writeFlushed(serve, "v", first);
    assert.equal(
      await ctlOk(data, ["block", "snapshot", "create", "v@one"]),
      "Created snapshot v@one (8 MiB)\n",
    );
    const second = first.slice();
    second.set(pattern(MiB + 100, 2), 3 * MiB - 50);
    await writeFlushed(serve, "v", second);

    const listed = JSON.parse(await ctlOk(data, ["block", "snapshot", "list", "v", "--json"]));
    assert.deepEqual(listed.map((s: { name: string }) => s.name), ["one"]);
    assertSameBytes(await readAll(serve, "v@one"), first);
    assertSameBytes(await readAll(serve, "v"), second);

    // A clone starts as the snapshot; its writes change neither the snapshot nor the volume.
    await ctlOk(data, ["block", "clone", "v@one", "c"]);
    assertSameBytes(await readAll(serve, "c"), first);
    const cloneBytes = first.slice();
    cloneBytes.set(pattern(4096, 3), 0);
    await writeFlushed(serve, "c", cloneBytes.subarray(0, 4096));
    assertSameBytes(await readAll(serve, "c"), cloneBytes);
    assertSameBytes(await readAll(serve, "v@one"), first);
    assertSameBytes(await readAll(serve, "v"), second);
    await ctlFails(
      data,
      ["block", "snapshot", "delete", "v@one"],
      1,
      /snapshot v@one has clones \(c\); delete those volumes first/,
    );

    // Restore is refused while a writer has the volume open, and exact once it is closed.
    const writer = await serve.connect("v");
    await ctlFails(data, ["block", "snapshot", "restore", "v@one"], 1, /locked|in use/);
    await writer.close();
    await restoreWhenClosed(data, "v@one");
    assertSameBytes(await readAll(serve, "v"), first);

    // Grow: the old bytes stay, the new range reads as zeros; shrinking is refused.
    assert.match(await ctlOk(data, ["volume", "resize", "v", "12MiB"]), /now 12 MiB/);
    const grown = await readAll(serve, "v");
    assert.equal(grown.length, 12 * MiB);
    assertSameBytes(grown.subarray(0, 8 * MiB), first);
    assert.ok(grown.subarray(8 * MiB).every((b) => b === 0));
    await ctlFails(data, ["volume", "resize", "v", "4MiB"], 1, /shrinking is not supported/);

    await ctlFails(data, ["block", "snapshot", "create", "v"], 2, /expected VOLUME@SNAPSHOT/);
    await ctlFails(data, ["block", "snapshot", "create", "v@one"], 1, /snapshot v@one exists/);
    await ctlFails(
      data,
      ["block", "snapshot", "restore", "v@nope"],
      1,
      /snapshot v@nope does not exist/,
    );
    await ctlFails(data, ["block", "clone", "v@nope", "d"], 1, /snapshot v@nope does not exist/);
    await ctlFails(data, ["block", "snapshot", "list", "nope"], 1, /"nope"/);

    await ctlOk(data, ["volume", "delete", "c"]);
    await ctlOk(data, ["block", "snapshot", "delete", "v@one"]);
    assert.deepEqual(
      JSON.parse(await ctlOk(data, ["block", "snapshot", "list", "v", "--json"])),
      [],
    );
    assert.equal(await serve.stop(), 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Restores `spec`; serve closes a volume when its last client leaves, which may take a moment. */
async function restoreWhenClosed(data: string, spec: string): Promise<void> {
  for (let attempt = 0;; attempt++) {
    const out = await runTorus(["ctl", "block", "snapshot", "restore", spec, "--data-dir", data]);
    if (out.code === 0) return;
    if (attempt >= 50 || !/locked|in use/.test(out.stderr)) {
      throw new Error(`restore ${spec} exited ${out.code}: ${out.stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
