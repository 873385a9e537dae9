/**
 * Snapshots of a volume that is being written, through a real `torus serve`: a writer keeps
 * writing (one request at a time, so its writes have one order) and flushing while
 * `torus ctl block snapshot create` runs. Each snapshot must be exactly the volume after some
 * prefix of the writes: every write acknowledged before the snapshot command started, none issued
 * after it returned, and no mix of two moments (checked per 4 KiB sector against the write log).
 * It must stay the same while the writer goes on. Then snapshot → dump → load into a new volume
 * gives the same bytes, and a clone shares the snapshot's blocks (the store grows by a root, not
 * by the data) and diverges only where it is written.
 */

import assert from "node:assert/strict";
import { type NbdClient } from "../../src/block/mod.ts";
import { crc32, SeededRandom, testSeed } from "../../src/core/mod.ts";
import {
  assertEqualBytes,
  closeQuietly,
  E2eNode,
  e2eTest,
  MiB,
  readAll,
  SECTOR,
} from "./e2e_support.ts";

const SIZE = 32 * MiB;
const SECTORS = SIZE / SECTOR;
const seed = testSeed();

/** Per sector, the writes that touched it, in order: [write index, CRC-32 of the sector]. */
class WriteLog {
  readonly #history: [number, number][][] = Array.from({ length: SECTORS }, () => []);
  /** Writes issued and acknowledged (one at a time, so acknowledged = issued or one less). */
  issued = 0;
  acknowledged = 0;

  /** Records write `issued` of `data` at sector `first`, and returns its index. */
  record(first: number, data: Uint8Array): number {
    const index = this.issued++;
    for (let i = 0; i < data.length / SECTOR; i++) {
      this.#history[first + i]!.push([index, crc32(data.subarray(i * SECTOR, (i + 1) * SECTOR))]);
    }
    return index;
  }

  /**
   * The cuts `c` (the writes with index < c, and no other) that `image` can be: an interval,
   * empty (lo > hi) when the image mixes moments or holds bytes no write wrote.
   */
  cuts(image: Uint8Array): { lo: number; hi: number; why: string } {
    let lo = 0;
    let hi = Number.MAX_SAFE_INTEGER;
    let why = "";
    for (let s = 0; s < SECTORS; s++) {
      const sector = image.subarray(s * SECTOR, (s + 1) * SECTOR);
      const history = this.#history[s]!;
      let from: number;
      let to: number;
      if (sector.every((byte) => byte === 0)) {
        [from, to] = [0, history[0]?.[0] ?? Number.MAX_SAFE_INTEGER];
      } else {
        const crc = crc32(sector);
        const at = history.findIndex(([, c]) => c === crc);
        if (at < 0) return { lo: 1, hi: 0, why: `sector ${s} holds bytes no write wrote` };
        [from, to] = [history[at]![0] + 1, history[at + 1]?.[0] ?? Number.MAX_SAFE_INTEGER];
      }
      if (from > lo) [lo, why] = [from, `sector ${s} needs at least ${from}`];
      if (to < hi) [hi, why] = [to, `${why}; sector ${s} at most ${to}`];
      if (lo > hi) return { lo, hi, why };
    }
    return { lo, hi, why };
  }
}

/**
 * Writes until stopped, flushing every 20 writes or so: 1-4 sectors at random places in the first
 * quarter (which soon lives in the current generation, written in place), or 8-32 sectors at a
 * cursor sweeping the rest, so that blocks keep entering the current generation (copied up) and
 * their map entries are often not yet flushed when a snapshot comes.
 */
async function keepWriting(
  client: NbdClient,
  log: WriteLog,
  options: { random: SeededRandom; stop: AbortSignal },
): Promise<void> {
  const { random, stop } = options;
  const quarter = SECTORS / 4;
  let cursor = quarter;
  while (!stop.aborted) {
    let count: number;
    let first: number;
    if (random.chance(0.4)) {
      count = 1 + random.int(4);
      first = random.int(quarter - count + 1);
    } else {
      count = 8 + random.int(25);
      if (cursor + count > SECTORS) cursor = quarter;
      first = cursor;
      cursor += count;
    }
    const data = random.bytes(count * SECTOR);
    log.record(first, data);
    await client.writeAt(first * SECTOR, data);
    log.acknowledged++;
    if (random.chance(0.05)) await client.flush();
  }
}

/** Takes snapshot `name` while the writer runs and checks it is one exact moment. */
async function exactSnapshot(node: E2eNode, log: WriteLog, name: string): Promise<Uint8Array> {
  const acknowledgedBefore = log.acknowledged;
  await node.ctl("block", "snapshot", "create", `v@${name}`);
  const issuedAfter = log.issued;
  const reader = await node.connect(`v@${name}`);
  try {
    const image = await readAll(reader);
    const { lo, hi, why } = log.cuts(image);
    assert.ok(lo <= hi, `snapshot ${name} is no single moment of the writes: ${why}`);
    assert.ok(
      hi >= acknowledgedBefore && lo <= issuedAfter,
      `snapshot ${name} is the volume after ${lo}..${hi} writes, but ${acknowledgedBefore} were ` +
        `acknowledged before it started and ${issuedAfter} issued before it returned`,
    );
    return image;
  } finally {
    await closeQuietly(reader);
  }
}

e2eTest(
  `snapshots under concurrent writes are exact and stay so; dump, load and clone (seed ${seed})`,
  {},
  async () => {
    await using node = await E2eNode.start();
    await node.createVolume("v", "32MiB");
    const log = new WriteLog();
    const writer = await node.connect("v");
    const stop = new AbortController();
    const writing = keepWriting(writer, log, { random: new SeededRandom(seed), stop: stop.signal });
    const images = new Map<string, Uint8Array>();
    try {
      // Let the writer get going, then snapshot three times while it runs.
      while (log.acknowledged < 200) await new Promise((resolve) => setTimeout(resolve, 10));
      for (const name of ["s1", "s2", "s3"]) {
        images.set(name, await exactSnapshot(node, log, name));
        const goal = log.acknowledged + 100;
        while (log.acknowledged < goal) await new Promise((resolve) => setTimeout(resolve, 10));
      }
      // Still the same while the writer goes on.
      for (const [name, image] of images) {
        const reader = await node.connect(`v@${name}`);
        try {
          assertEqualBytes(await readAll(reader), image, `snapshot ${name} read again`);
        } finally {
          await closeQuietly(reader);
        }
      }
    } finally {
      stop.abort();
      await writing.catch(() => {});
      await closeQuietly(writer);
    }
    const s1 = images.get("s1")!;
    await dumpAndLoad(node, s1);
    await cloneSharesBlocks(node, s1);
  },
);

/** snapshot → dump → load into a new volume → the same bytes. */
async function dumpAndLoad(node: E2eNode, snapshot: Uint8Array): Promise<void> {
  const file = `${node.dir}/s1.img`;
  await node.ctl("block", "dump", "v@s1", file);
  assertEqualBytes(await Deno.readFile(file), snapshot, "the dump of v@s1");
  await node.ctl("block", "load", file, "copy");
  const reader = await node.connect("copy");
  try {
    assertEqualBytes(await readAll(reader), snapshot, "the volume loaded from the dump");
  } finally {
    await closeQuietly(reader);
  }
}

/** A clone reads the snapshot, costs the store almost nothing, and diverges where written. */
async function cloneSharesBlocks(node: E2eNode, snapshot: Uint8Array): Promise<void> {
  await node.restart("SIGTERM");
  const before = node.usedBlocksAtStart();
  await node.ctl("block", "clone", "v@s1", "clone");
  await node.restart("SIGTERM");
  const after = node.usedBlocksAtStart();
  // A copy of the data would be 64 blocks of 512 KiB; a clone adds its root at most.
  assert.ok(after - before <= 1, `the clone took ${after - before} blocks`);
  const clone = await node.connect("clone");
  try {
    assertEqualBytes(await readAll(clone), snapshot, "the clone");
    const data = new Uint8Array(SECTOR).fill(0xc1);
    await clone.writeAt(5 * SECTOR, data);
    await clone.flush();
    const expected = snapshot.slice();
    expected.set(data, 5 * SECTOR);
    assertEqualBytes(await readAll(clone), expected, "the clone after its own write");
  } finally {
    await closeQuietly(clone);
  }
  const reader = await node.connect("v@s1");
  try {
    assertEqualBytes(await readAll(reader), snapshot, "the snapshot after the clone wrote");
  } finally {
    await closeQuietly(reader);
  }
}
