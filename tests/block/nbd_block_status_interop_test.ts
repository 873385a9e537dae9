/**
 * Third-party clients read the allocation map of a sparse volume served by a real
 * `torus serve --nbd`: `nbdinfo --map` (and `--totals`), `qemu-img map`, and `nbdcopy` to a file
 * that keeps the holes; `qemu-img convert` of the same export stays byte-exact. The volume has
 * data, never-written ranges and a discarded range, at the volume's 512 KiB block granularity.
 * Skipped (and named so) when a tool is missing; `npm test` installs them.
 */

import assert from "node:assert/strict";
import { assertSameBytes, BLOCK_SIZE_DEFAULT_BYTES } from "../../src/core/mod.ts";
import type { NbdClient } from "../../src/block/mod.ts";
import { toolTest } from "../support/packages.ts";
import { runOk } from "../support/nbd_fixture.ts";
import { ctlOk, type ServeProcess, startServe } from "../support/torus_process.ts";

const MiB = 1024 * 1024;
const BLOCK = BLOCK_SIZE_DEFAULT_BYTES;
const SIZE = 64 * MiB;

/** Where the volume holds data; everything else reads as zeros and is unallocated. */
const DATA: readonly [number, number][] = [
  [MiB, MiB],
  [20 * MiB, BLOCK], // 100 bytes written at 20 MiB + 4096 allocate their whole block
  [30 * MiB, BLOCK], // 2 MiB written at 30 MiB, then 1 MiB of it discarded
  [31 * MiB + BLOCK, MiB - BLOCK],
];

/** The expected map: [offset, length, data?] covering the whole volume. */
function expectedMap(): [number, number, boolean][] {
  const map: [number, number, boolean][] = [];
  let at = 0;
  for (const [offset, length] of DATA) {
    if (offset > at) map.push([at, offset - at, false]);
    map.push([offset, length, true]);
    at = offset + length;
  }
  if (at < SIZE) map.push([at, SIZE - at, false]);
  return map;
}

const dataBytes = DATA.reduce((sum, [, length]) => sum + length, 0);

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = ((i * 31 + seed) % 251) + 1;
  return bytes;
}

/** Writes the layout through our client and returns the bytes the volume must hold. */
async function writeLayout(client: NbdClient): Promise<Uint8Array> {
  const image = new Uint8Array(SIZE);
  const write = async (offset: number, bytes: Uint8Array) => {
    image.set(bytes, offset);
    await client.writeAt(offset, bytes);
  };
  await write(MiB, pattern(MiB, 1));
  await write(20 * MiB + 4096, pattern(100, 2));
  await write(30 * MiB, pattern(2 * MiB, 3));
  // NBD_CMD_TRIM of whole blocks: the volume frees them, and they read as zeros.
  await client.discard(30 * MiB + BLOCK, MiB);
  image.fill(0, 30 * MiB + BLOCK, 31 * MiB + BLOCK);
  await client.flush();
  return image;
}

/** A serve with volume "v" laid out; `body` gets its NBD URI and the expected bytes. */
async function withSparseVolume(
  body: (uri: string, image: Uint8Array, serve: ServeProcess) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-blockstatus-" });
  try {
    await using serve = await startServe(`${dir}/data`);
    await ctlOk(`${dir}/data`, ["volume", "create-block", "v", "64MiB"]);
    const client = await serve.connect("v");
    const image = await writeLayout(client);
    await client.close();
    await body(`nbd://${serve.nbd.hostname}:${serve.nbd.port}/v`, image, serve);
    assert.equal(await serve.stop(), 0, serve.output());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** `nbdinfo --map` lines: offset, length, type number, description. */
function parseMap(text: string): [number, number, boolean][] {
  return text.trim().split("\n").map((line) => {
    const [offset, length, type, ...description] = line.trim().split(/\s+/);
    const flags = Number(type);
    // base:allocation: 3 = hole,zero; 0 = data. Anything else is not what torus reports.
    assert.ok(flags === 0 || flags === 3, `unexpected map line: ${line}`);
    assert.equal(description.join(" "), flags === 0 ? "data" : "hole,zero");
    return [Number(offset), Number(length), flags === 0];
  });
}

toolTest("nbd block status interop: nbdinfo --map shows data and holes", ["nbdinfo"], async () => {
  await withSparseVolume(async (uri) => {
    assert.deepEqual(parseMap(await runOk("nbdinfo", ["--map", uri])), expectedMap());
    // The totals: the share of data and of holes.
    const totals = (await runOk("nbdinfo", ["--map", "--totals", uri])).trim().split("\n");
    const sums = new Map(totals.map((line) => {
      const [bytes, , type] = line.trim().split(/\s+/);
      return [Number(type), Number(bytes)];
    }));
    assert.deepEqual([...sums].sort(), [[0, dataBytes], [3, SIZE - dataBytes]]);
    const info = JSON.parse(await runOk("nbdinfo", ["--json", uri]));
    assert.deepEqual(info.exports[0].contexts, ["base:allocation"]);
    assert.equal(info.exports[0].can_df, true);
  });
});

toolTest(
  "nbd block status interop: qemu-img map agrees; qemu-img convert is byte-exact",
  ["qemu-img"],
  async () => {
    await withSparseVolume(async (uri, image, serve) => {
      const map = JSON.parse(await runOk("qemu-img", ["map", "--output=json", uri])) as {
        start: number;
        length: number;
        data: boolean;
        zero: boolean;
      }[];
      const merged: [number, number, boolean][] = [];
      for (const entry of map) {
        assert.equal(entry.zero, !entry.data, `zero flag at ${entry.start}`);
        const last = merged.at(-1);
        if (last && last[2] === entry.data) last[1] += entry.length;
        else merged.push([entry.start, entry.length, entry.data]);
      }
      assert.deepEqual(merged, expectedMap());
      const out = `${serve.dataDir}/../converted.img`;
      await runOk("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, out]);
      assertSameBytes(await Deno.readFile(out), image);
      const blocks = (await Deno.stat(out)).blocks!;
      assert.ok(blocks * 512 <= dataBytes + MiB, `qemu-img left holes: ${blocks} blocks`);
    });
  },
);

toolTest(
  "nbd block status interop: nbdcopy to a file keeps the holes, byte-exact",
  ["nbdcopy"],
  async () => {
    await withSparseVolume(async (uri, image, serve) => {
      const out = `${serve.dataDir}/../copied.img`;
      // --sparse=0: no zero detection of its own, so only block status can leave holes.
      await runOk("nbdcopy", ["--sparse=0", uri, out]);
      assertSameBytes(await Deno.readFile(out), image);
      const blocks = (await Deno.stat(out)).blocks!;
      // Allocated: exactly the data ranges (a filesystem block of slack each), not 64 MiB.
      assert.ok(
        blocks * 512 <= dataBytes + DATA.length * 4096,
        `nbdcopy allocated ${blocks * 512} bytes for ${dataBytes} bytes of data`,
      );
      assert.ok(blocks * 512 >= dataBytes - DATA.length * 4096, "the data is there");
    });
  },
);
