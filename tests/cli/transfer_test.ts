/**
 * `torus ctl block dump` and `load` as a user runs them: beside a running `torus serve --nbd`
 * (through its NBD server, found in serve.json), and on a stopped node's data dir (the store
 * opened by ctl itself). Checks exact bytes, sparseness of the output file, snapshot exactness,
 * stdin/stdout, and that a failed load leaves no volume behind.
 */

import assert from "node:assert/strict";
import { assertSameBytes } from "../../src/core/mod.ts";
import { ctlOk, runTorus, startServe } from "../support/torus_process.ts";
import { silentListener } from "../support/deadlines.ts";

const MiB = 1024 * 1024;

/** Deterministic bytes that are never all zero. */
function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

/** A 16 MiB image with data at a few places and zeros elsewhere. */
function sparseImage(seed: number): Uint8Array {
  const image = new Uint8Array(16 * MiB);
  image.set(pattern(4096, seed), 0);
  image.set(pattern(1000, seed + 1), 3 * MiB + 17);
  image.set(pattern(MiB, seed + 2), 9 * MiB);
  image.set(pattern(512, seed + 3), 16 * MiB - 512);
  return image;
}

async function withDataDir(body: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "torus-transfer-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("dump and load through a running serve: exact, sparse, snapshots, stdin and stdout", async () => {
  await withDataDir(async (dir) => {
    await using serve = await startServe(`${dir}/data`);
    const data = `${dir}/data`;
    await ctlOk(data, ["volume", "create-block", "v", "16MiB"]);
    const image = sparseImage(7);
    const writer = await serve.connect("v");
    await writer.writeAt(0, image.subarray(0, 4 * MiB));
    await writer.writeAt(9 * MiB, image.subarray(9 * MiB, 16 * MiB));
    await writer.flush();

    // A dump of the volume while its writer stays connected.
    const dumped = await ctlOk(data, ["block", "dump", "v", `${dir}/v.img`]);
    assert.match(dumped, /^Dumped 16777216 bytes \(16 MiB\)/);
    assertSameBytes(await Deno.readFile(`${dir}/v.img`), image);
    const blocks = (await Deno.stat(`${dir}/v.img`)).blocks;
    assert.ok(blocks !== null && blocks * 512 < 2 * MiB, `holes left: ${blocks} blocks allocated`);
    const snapshots = await ctlOk(data, ["block", "snapshot", "list", "v", "--json"]);
    assert.deepEqual(JSON.parse(snapshots), [], "the temporary snapshot is gone");

    // A snapshot dump shows what was flushed when it was taken, not later writes.
    await ctlOk(data, ["block", "snapshot", "create", "v@before"]);
    await writer.writeAt(0, pattern(8192, 99));
    await writer.flush();
    await ctlOk(data, ["block", "dump", "v@before", `${dir}/before.img`]);
    assertSameBytes(await Deno.readFile(`${dir}/before.img`), image);
    await writer.close();

    // Load a file: the new volume has the file's size and bytes.
    const loaded = await ctlOk(data, ["block", "load", `${dir}/v.img`, "w"]);
    assert.match(loaded, /^Loaded 16777216 bytes .* into volume "w" \(16 MiB\)/);
    const reader = await serve.connect("w");
    assert.equal(reader.sizeBytes, 16 * MiB);
    const back = new Uint8Array(16 * MiB);
    await reader.readAt(0, back);
    await reader.close();
    assertSameBytes(back, image);

    // stdout and stdin: `dump w - | load - x SIZE`.
    const out = await runTorus(["ctl", "block", "dump", "w", "-", "--data-dir", data]);
    assert.equal(out.code, 0, out.stderr);
    assertSameBytes(out.stdoutRaw, image);
    assert.match(out.stderr, /^Dumped 16777216 bytes/, "the summary goes to stderr");
    const piped = await runTorus(["ctl", "block", "load", "-", "x", "20MiB", "--data-dir", data], {
      stdin: out.stdoutRaw,
    });
    assert.equal(piped.code, 0, piped.stderr);
    await ctlOk(data, ["block", "dump", "x", `${dir}/x.img`]);
    const x = await Deno.readFile(`${dir}/x.img`);
    assert.equal(x.length, 20 * MiB);
    assertSameBytes(x.subarray(0, 16 * MiB), image);
    assert.ok(x.subarray(16 * MiB).every((b) => b === 0));

    // An input longer than SIZE fails with one line, and leaves no volume.
    const long = await runTorus(["ctl", "block", "load", "-", "y", "1MiB", "--data-dir", data], {
      stdin: image,
    });
    assert.equal(long.code, 1, long.stderr);
    assert.match(long.stderr, /longer than the device/);
    const list = JSON.parse(await ctlOk(data, ["volume", "list", "--json"])) as { name: string }[];
    assert.deepEqual(list.map((v) => v.name).sort(), ["v", "w", "x"]);

    // A name that exists is refused before anything is written.
    const exists = await runTorus([
      "ctl",
      "block",
      "load",
      `${dir}/v.img`,
      "v",
      "--data-dir",
      data,
    ]);
    assert.equal(exists.code, 1);
    assert.match(exists.stderr, /exists/);
    assert.equal(await serve.stop(), 0);
  });
});

Deno.test("dump and load on a stopped node's data dir open its store directly", async () => {
  await withDataDir(async (dir) => {
    const data = `${dir}/data`;
    {
      await using serve = await startServe(data);
      assert.equal(await serve.stop(), 0);
    }
    const image = sparseImage(11);
    await Deno.writeFile(`${dir}/in.img`, image);
    await ctlOk(data, ["block", "load", `${dir}/in.img`, "v"]);
    await ctlOk(data, ["block", "dump", "v", `${dir}/out.img`]);
    assertSameBytes(await Deno.readFile(`${dir}/out.img`), image);

    // What the offline load wrote is what a started serve serves.
    await using serve = await startServe(data);
    const client = await serve.connect("v");
    const back = new Uint8Array(image.length);
    await client.readAt(0, back);
    await client.close();
    assertSameBytes(back, image);
    assert.equal(await serve.stop(), 0);
  });
});

Deno.test("dump and load say what to do when no data path exists", async () => {
  await withDataDir(async (dir) => {
    const data = `${dir}/data`;
    const init = await runTorus(["ctl", "init", "--data-dir", data]);
    assert.equal(init.code, 0, init.stderr);
    await ctlOk(data, ["volume", "create-block", "v", "1MiB"]);
    const noStore = await runTorus(["ctl", "block", "dump", "v", "-", "--data-dir", data]);
    assert.equal(noStore.code, 1);
    assert.match(noStore.stderr, /has no block store: run torus serve there first/);
    assert.equal(noStore.stdout, "");

    const dumpVia = (nbd: string) =>
      runTorus(["ctl", "block", "dump", "v", `${dir}/o`, "--nbd", nbd, "--data-dir", data]);
    const unreachable = await dumpVia("127.0.0.1:1");
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, /cannot reach NBD server 127\.0\.0\.1:1/);

    // A port that accepts and never speaks (a node's HTTP or TDP port given by mistake): the
    // handshake's deadline ends the wait with one line, not a hang.
    await using silent = silentListener();
    const mute = await dumpVia(`127.0.0.1:${silent.port}`);
    assert.equal(mute.code, 1);
    assert.match(
      mute.stderr,
      /did not finish the NBD handshake within 10 s \(is it an NBD server\?\)/,
    );
    assert.equal(mute.stderr.trim().split("\n").length, 1, mute.stderr);

    const missing = await runTorus([
      "ctl",
      "block",
      "dump",
      "nope",
      `${dir}/o`,
      "--data-dir",
      data,
    ]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /nope/);
    const noSize = await runTorus(["ctl", "block", "load", "-", "w", "--data-dir", data]);
    assert.equal(noSize.code, 2);
    assert.match(noSize.stderr, /give SIZE/);
  });
});
