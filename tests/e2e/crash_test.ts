/**
 * Crash durability of `torus serve` with a per-sector model: a client writes random 4 KiB sectors,
 * odd ranges and zeroed ranges (some of whole blocks, which frees them), up to 8 requests in
 * flight, flushing sometimes and using FUA sometimes; serve is SIGKILLed after a random number of
 * requests (seeded: the name prints the seed, `SEED=n` replays the workload) and restarted. Then
 * every sector must read back without an I/O error as one of the versions the client wrote to it
 * since the last point that made it durable (a completed FLUSH, or an FUA write of that version):
 * never older, never garbage. Three rounds, each starting from what the previous one read back
 * with a snapshot of it, which must read back exactly after the crash too; after the first, serve
 * is also stopped cleanly (SIGTERM) and started again before the next round's writes.
 *
 * SIGKILL keeps the page cache, so this proves the server's ordering and what it keeps in memory
 * (block-map changes wait for a FLUSH), not its fdatasyncs: power loss is the VM tests' job.
 */

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

const SIZE = 64 * MiB;
const BLOCK = 512 * 1024;
const SECTORS = SIZE / SECTOR;
const IN_FLIGHT = 8;
const ROUNDS = 3;
const seed = testSeed();

/** What each sector may hold after a crash. */
class SectorModel {
  /** The volume as the client last wrote it (every issued write applied, in issue order). */
  readonly current = new Uint8Array(SIZE);
  /** Per sector, the CRC-32 of each version, oldest first; version 0 is the round's start. */
  readonly #versions: number[][] = [];
  /** Per sector, the newest version acknowledged. */
  readonly #acknowledged = new Int32Array(SECTORS);
  /** Per sector, the oldest version it may hold after a crash. */
  readonly #durable = new Int32Array(SECTORS);

  constructor() {
    this.restart(new Uint8Array(SIZE));
  }

  /** Starts a round from what the volume holds now. */
  restart(image: Uint8Array): void {
    this.current.set(image);
    this.#versions.length = 0;
    for (let s = 0; s < SECTORS; s++) this.#versions.push([this.#crc(s)]);
    this.#acknowledged.fill(0);
    this.#durable.fill(0);
  }

  /** Applies a write to `current`; returns the new version of each sector it touched. */
  issue(offset: number, data: Uint8Array): Map<number, number> {
    this.current.set(data, offset);
    const touched = new Map<number, number>();
    for (const s of sectorsOf(offset, data.length)) {
      const versions = this.#versions[s]!;
      versions.push(this.#crc(s));
      touched.set(s, versions.length - 1);
    }
    return touched;
  }

  acknowledge(touched: Map<number, number>, options: { fua: boolean }): void {
    for (const [s, version] of touched) {
      this.#acknowledged[s] = Math.max(this.#acknowledged[s]!, version);
      if (options.fua) this.#durable[s] = Math.max(this.#durable[s]!, version);
    }
  }

  /** What a FLUSH started now covers; pass it to {@link flushed} when the FLUSH completes. */
  flushStarts(): Int32Array {
    return this.#acknowledged.slice();
  }

  flushed(covered: Int32Array): void {
    for (let s = 0; s < SECTORS; s++) {
      this.#durable[s] = Math.max(this.#durable[s]!, covered[s]!);
    }
  }

  /** Throws unless every sector of `image` is a version at or after its durable one. */
  check(image: Uint8Array, what: string): void {
    for (let s = 0; s < SECTORS; s++) {
      const crc = crc32(image.subarray(s * SECTOR, (s + 1) * SECTOR));
      const versions = this.#versions[s]!;
      const found = versions.lastIndexOf(crc);
      if (found < 0) {
        throw new Error(`${what}: sector ${s} holds bytes the client never wrote there (garbage)`);
      }
      if (found < this.#durable[s]!) {
        throw new Error(
          `${what}: sector ${s} holds version ${found} of ${versions.length - 1}, but version ` +
            `${this.#durable[s]} was made durable (by a FLUSH or FUA)`,
        );
      }
    }
  }

  #crc(sector: number): number {
    return crc32(this.current.subarray(sector * SECTOR, (sector + 1) * SECTOR));
  }
}

/** The sectors a byte range touches. */
function sectorsOf(offset: number, length: number): number[] {
  const out: number[] = [];
  for (let s = Math.floor(offset / SECTOR); s * SECTOR < offset + length; s++) out.push(s);
  return out;
}

/** One request of the workload: where, what, and how. */
interface Op {
  offset: number;
  data: Uint8Array;
  zero: boolean;
  fua: boolean;
}

/**
 * 70% one random sector, 17% an odd range, 10% a zeroed odd range, 3% a zeroed whole block (which
 * frees it, so a later write brings it back: map changes that only a FLUSH makes durable);
 * 3 in 100 with FUA (which flushes the volume too, so it is rare, or FLUSH would go untested).
 */
function nextOp(random: SeededRandom): Op {
  const kind = random.float();
  const fua = random.chance(0.03);
  if (kind >= 0.97) {
    return {
      offset: random.int(SIZE / BLOCK) * BLOCK,
      data: new Uint8Array(BLOCK),
      zero: true,
      fua,
    };
  }
  if (kind < 0.7) {
    return { offset: random.int(SECTORS) * SECTOR, data: random.bytes(SECTOR), zero: false, fua };
  }
  const length = 1 + random.int(3 * SECTOR);
  const offset = random.int(SIZE - length);
  const zero = kind >= 0.87;
  return { offset, data: zero ? new Uint8Array(length) : random.bytes(length), zero, fua };
}

/**
 * Runs the workload on `client` until `count` requests were issued (then returns without waiting
 * for those in flight: the caller kills serve under them). Requests in flight never share a
 * sector, so each sector's versions have one order.
 */
async function runUntilKill(
  client: NbdClient,
  model: SectorModel,
  options: { random: SeededRandom; count: number },
): Promise<void> {
  const { random } = options;
  const busy = new Set<number>();
  const inFlight = new Set<Promise<void>>();
  for (let issued = 0; issued < options.count;) {
    while (inFlight.size >= IN_FLIGHT) await Promise.race(inFlight);
    if (random.chance(0.05)) {
      const covered = model.flushStarts();
      track(inFlight, client.flush().then(() => model.flushed(covered)));
      issued++;
      continue;
    }
    const op = nextOp(random);
    const sectors = sectorsOf(op.offset, op.data.length);
    if (sectors.some((s) => busy.has(s))) {
      await Promise.race(inFlight);
      continue;
    }
    for (const s of sectors) busy.add(s);
    const touched = model.issue(op.offset, op.data);
    const request = op.zero
      ? client.writeZeroes(op.offset, op.data.length, { fua: op.fua })
      : client.writeAt(op.offset, op.data, { fua: op.fua });
    track(
      inFlight,
      request.then(() => model.acknowledge(touched, { fua: op.fua })).finally(() => {
        for (const s of sectors) busy.delete(s);
      }),
    );
    issued++;
  }
}

/** Keeps `promise` in `set` until it settles; its failure (serve killed) is expected. */
function track(set: Set<Promise<void>>, promise: Promise<void>): void {
  const settled: Promise<void> = promise.catch(() => {}).finally(() => set.delete(settled));
  set.add(settled);
}

e2eTest(
  `SIGKILL at a random moment: flushed and FUA sectors exact, the rest old or new, never ` +
    `garbage (seed ${seed})`,
  {},
  async () => {
    const random = new SeededRandom(seed);
    await using node = await E2eNode.start();
    await node.createVolume("crash", "64MiB");
    const model = new SectorModel();
    await node.keepOnFailure(async () => {
      for (let round = 1; round <= ROUNDS; round++) {
        const count = 100 + random.int(500);
        const client = await node.connect("crash");
        // A snapshot first: every block's first write in the round is then a copy-up into the new
        // generation, a map change that only a FLUSH (or FUA) makes durable.
        const snapshot = `crash@r${round}`;
        const snapshotImage = model.current.slice();
        try {
          await node.ctl("block", "snapshot", "create", snapshot);
          await runUntilKill(client, model, { random, count });
          await node.restart("SIGKILL");
        } finally {
          await closeQuietly(client);
        }
        const reader = await node.connect("crash");
        try {
          // A read error fails the test as surely as a wrong byte.
          const image = await readAll(reader);
          model.check(image, `round ${round} (killed after ${count} requests)`);
          model.restart(image);
        } finally {
          await closeQuietly(reader);
        }
        const snapshotReader = await node.connect(snapshot);
        try {
          assertEqualBytes(await readAll(snapshotReader), snapshotImage, `snapshot ${snapshot}`);
        } finally {
          await closeQuietly(snapshotReader);
        }
        // A clean stop before the next round: its journal checkpoint must not confuse the replay
        // after the next kill (records once got seqs below a clean stop's checkpoint).
        if (round % 2 === 1 && round < ROUNDS) await node.restart("SIGTERM");
      }
    });
  },
);
