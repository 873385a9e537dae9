/**
 * Real power loss. `torus serve` runs inside a Debian kernel (vm-run.sh, qemu TCG) on an ext4 data
 * disk; a client on the host writes through a forwarded NBD port, with a FLUSH after each round.
 * qemu is SIGKILLed the moment the last FLUSH is acknowledged, with writes it does not cover in
 * flight: the guest's page cache is gone and only what the guest's kernel handed to its virtual
 * disk survives. Booted again on the same disk, serve must return every byte the flushes covered,
 * and each sector written after the last flush as its old or one of its new contents, never
 * anything else and never an I/O error.
 *
 * A SIGKILL of a process on the host keeps the page cache, so it cannot see a missing fdatasync;
 * this test can. It failed with the journal's fdatasync taken out, with the data file's before a
 * checkpoint taken out, and with the metadata store's `synchronous = FULL` turned off. Skipped,
 * saying why in its name, when the VM cannot run here.
 * @module
 */

import assert from "node:assert/strict";
import { NbdClient } from "../../src/block/mod.ts";
import { connStream } from "../../src/block/nbd/stream.ts";
import { SeededRandom, testSeed } from "../../src/core/mod.ts";
import { freePort } from "../support/etcd.ts";
import { makeDataDisk, root, type StartedGuest, startGuest, vmSkipReason } from "./vm_support.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const SECTOR = 4 * KiB;
const VOLUME_BYTES = 16 * MiB;
const SECTORS = VOLUME_BYTES / SECTOR;
const ROUNDS = 4;
const WRITES_PER_ROUND = 24;
/** Most writes sent after the last FLUSH (the power is cut while they go on). */
const WRITES_AFTER_FLUSH = 400;
const GUEST_PORT = 10809;
const DATA = "/vmdata/torus";
const SERVE =
  `deno run -A main.ts serve --data-dir ${DATA} --size 64MiB --nbd 0.0.0.0:${GUEST_PORT}`;

/** The 4 KiB content write `id` puts in `sector`: both numbers in every 8 bytes. */
function sectorContent(id: number, sector: number): Uint8Array {
  const bytes = new Uint8Array(SECTOR);
  const view = new DataView(bytes.buffer);
  for (let at = 0; at < SECTOR; at += 8) {
    view.setUint32(at, id + 1, true);
    view.setUint32(at + 4, sector ^ 0x5a5a0000, true);
  }
  return bytes;
}

/** Which write a sector holds: 0 for never written, -1 for anything no write put there. */
function writerOf(bytes: Uint8Array, sector: number): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const id = view.getUint32(0, true);
  if (id === 0) return bytes.every((b) => b === 0) ? 0 : -1;
  const expected = sectorContent(id - 1, sector);
  return bytes.every((b, i) => b === expected[i]) ? id : -1;
}

interface Write {
  readonly id: number;
  readonly firstSector: number;
  readonly sectors: number;
}

function randomWrite(random: SeededRandom, id: number): Write {
  const sectors = 1 + random.int(16);
  return { id, firstSector: random.int(SECTORS - sectors + 1), sectors };
}

function payloadOf(write: Write): Uint8Array {
  const data = new Uint8Array(write.sectors * SECTOR);
  for (let i = 0; i < write.sectors; i++) {
    data.set(sectorContent(write.id, write.firstSector + i), i * SECTOR);
  }
  return data;
}

/** Connects to the guest's NBD server, retrying while it starts (TCG: tens of seconds). */
async function connect(port: number): Promise<NbdClient> {
  const deadline = Date.now() + 300_000;
  for (;;) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      return await NbdClient.connect(connStream(conn), {
        exportName: "v",
        handshake: { timeoutMs: 30_000 },
      });
    } catch (error) {
      // Until serve listens, qemu's forward accepts and closes; a refusal is serve's answer.
      if (Date.now() > deadline || /NBD server refused/.test(String(error))) throw error;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

/** What each sector may hold after the power cut. */
class SectorModel {
  /** The write each sector held at the last acknowledged FLUSH (0: never written). */
  readonly durable = new Uint32Array(SECTORS);
  /** Writes a FLUSH did not cover yet, per sector (any of them may have landed). */
  readonly pending = new Map<number, Set<number>>();

  sent(write: Write): void {
    for (let s = write.firstSector; s < write.firstSector + write.sectors; s++) {
      const ids = this.pending.get(s) ?? new Set<number>();
      ids.add(write.id + 1);
      this.pending.set(s, ids);
    }
  }

  /**
   * A FLUSH was acknowledged; `covered` are the writes acknowledged before it was sent, in the
   * order they were (writes in flight together never overlap), so they are durable.
   */
  flushed(covered: readonly Write[]): void {
    for (const write of covered) {
      for (let s = write.firstSector; s < write.firstSector + write.sectors; s++) {
        this.durable[s] = write.id + 1;
        this.pending.get(s)!.delete(write.id + 1);
      }
    }
  }

  /** Why `holder` in `sector` breaks the promise, or null when it keeps it. */
  check(sector: number, holder: number): string | null {
    if (holder === this.durable[sector]) return null;
    if (holder > 0 && this.pending.get(sector)?.has(holder)) return null;
    const what = holder < 0 ? "bytes no write put there" : `write ${holder - 1}`;
    return `sector ${sector} holds ${what}; flushed: write ${this.durable[sector]! - 1}`;
  }
}

/** `count` writes whose sectors do not overlap (sent together, their order is undefined). */
function disjointWrites(random: SeededRandom, firstId: number, count: number): Write[] {
  const writes: Write[] = [];
  while (writes.length < count) {
    const write = randomWrite(random, firstId + writes.length);
    const end = write.firstSector + write.sectors;
    if (
      writes.every((w) => end <= w.firstSector || w.firstSector + w.sectors <= write.firstSector)
    ) {
      writes.push(write);
    }
  }
  return writes;
}

/**
 * Boot 1: rounds of writes, each ended by a FLUSH; then writes, a FLUSH, and writes sent after it
 * that it does not cover, with the power cut the moment the FLUSH is acknowledged (before the
 * store's background apply can make the same bytes durable a second way).
 */
async function writeThenCutPower(guest: StartedGuest, port: number, seed: number) {
  const random = new SeededRandom(seed);
  const model = new SectorModel();
  const client = await connect(port);
  let id = 0;
  const writeRound = async (count: number) => {
    const round: Write[] = [];
    // Four at a time: several requests in flight, as a kernel client sends them.
    for (let i = 0; i < count; i += 4) {
      const batch = disjointWrites(random, id, 4);
      id += batch.length;
      for (const write of batch) model.sent(write);
      await Promise.all(batch.map((w) => client.writeAt(w.firstSector * SECTOR, payloadOf(w))));
      round.push(...batch);
    }
    return round;
  };
  for (let round = 0; round < ROUNDS; round++) {
    const covered = await writeRound(WRITES_PER_ROUND);
    await client.flush();
    model.flushed(covered);
  }
  const covered = await writeRound(WRITES_PER_ROUND);
  const flushing = client.flush();
  let uncoveredAcknowledged = 0;
  const uncovered = (async () => {
    for (let i = 0; i < WRITES_AFTER_FLUSH; i++) {
      const write = randomWrite(random, id++);
      model.sent(write);
      await client.writeAt(write.firstSector * SECTOR, payloadOf(write));
      uncoveredAcknowledged++;
    }
  })().catch(() => {});
  await flushing;
  const run = await guest.powerCut();
  model.flushed(covered);
  await uncovered;
  await client.close().catch(() => {});
  console.log(
    `power cut at the last FLUSH's acknowledgment; ${uncoveredAcknowledged} writes sent after it ` +
      `had been acknowledged`,
  );
  return { model, run };
}

/** Boot 2: every sector against the model. */
async function verifyAfterRestart(port: number, model: SectorModel): Promise<string[]> {
  const client = await connect(port);
  const problems: string[] = [];
  try {
    const chunk = new Uint8Array(MiB);
    for (let offset = 0; offset < VOLUME_BYTES; offset += chunk.length) {
      await client.readAt(offset, chunk);
      for (let at = 0; at < chunk.length; at += SECTOR) {
        const sector = (offset + at) / SECTOR;
        const problem = model.check(sector, writerOf(chunk.subarray(at, at + SECTOR), sector));
        if (problem !== null) problems.push(problem);
      }
    }
  } finally {
    await client.close().catch(() => {});
  }
  return problems;
}

const seed = testSeed();

Deno.test({
  name: vmSkipReason === null
    ? `vm: power loss under torus serve: every flushed byte is back after qemu is killed (seed ${seed})`
    : `vm: power loss under torus serve (skipped: ${vmSkipReason})`,
  ignore: vmSkipReason !== null,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "torus-vm-power-" });
    const disk = { image: await makeDataDisk(work), mountPoint: "/vmdata" };
    const port = freePort();
    const forward = [{ hostPort: port, guestPort: GUEST_PORT }];
    try {
      const setup = `cd ${root} && deno run -A main.ts ctl init --data-dir ${DATA} && ` +
        `deno run -A main.ts ctl volume create-block v ${VOLUME_BYTES} --data-dir ${DATA} && `;
      const first = await startGuest(`${setup}exec ${SERVE}`, {
        disk,
        forward,
        timeoutSeconds: 900,
      });
      let written;
      try {
        written = await writeThenCutPower(first, port, seed);
      } catch (error) {
        const run = await first.powerCut();
        throw new Error(`${error}\n${run.context}`);
      }
      assert.equal(written.run.code, 125, `qemu was killed: ${written.run.context}`);

      const second = await startGuest(`cd ${root} && exec ${SERVE}`, {
        disk,
        forward,
        timeoutSeconds: 900,
      });
      let problems: string[];
      try {
        problems = await verifyAfterRestart(port, written.model);
      } finally {
        const run = await second.powerCut();
        assert.doesNotMatch(
          run.lines.join("\n"),
          / E \| /,
          `serve logged an error:\n${run.context}`,
        );
      }
      assert.deepEqual(problems.slice(0, 20), [], `${problems.length} sectors broke the promise`);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
