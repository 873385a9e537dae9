/**
 * The FileIo contract against the real file system and the power-loss layer over it, and what
 * only the power-loss layer does: replayable operation order, what a power cut keeps, drops and
 * tears, and the hazards it flags.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom } from "../core/mod.ts";
import { fileIoContract } from "./file_io_contract.ts";
import { PowerLossFileIo } from "./power_loss_file_io.ts";
import { CacheHitRate, SysFileIo } from "./sys_file_io.ts";

async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "torus-io-" });
  return { dir, cleanup: () => Deno.remove(dir, { recursive: true }) };
}

fileIoContract("SysFileIo", async () => ({ io: new SysFileIo(), ...(await tempDir()) }));
fileIoContract("PowerLossFileIo", async () => ({
  io: new PowerLossFileIo(new SysFileIo(), { random: new SeededRandom(1) }),
  ...(await tempDir()),
}));

Deno.test("SysFileIo: readCached copies what the page cache holds", async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const file = await new SysFileIo().open(`${dir}/f`, { create: true });
    const data = Uint8Array.from({ length: 8192 }, (_, i) => (i * 13) & 0xff);
    await file.write(data, 0);
    const into = new Uint8Array(4096);
    assert.equal(file.readCached(into, 4096), true, "just written: in the page cache");
    assert.deepEqual(into, data.subarray(4096));
    await file.close();
  } finally {
    await cleanup();
  }
});

/** Runs `body` with a fresh power-loss layer over the real file system in a temp dir. */
async function withPowerLoss(
  seed: number,
  body: (io: PowerLossFileIo, dir: string) => Promise<void>,
): Promise<void> {
  const { dir, cleanup } = await tempDir();
  try {
    await body(new PowerLossFileIo(new SysFileIo(), { random: new SeededRandom(seed) }), dir);
  } finally {
    await cleanup();
  }
}

const block = (seed: number) => Uint8Array.from({ length: 4096 }, (_, i) => (i + seed) & 0xff);

Deno.test("PowerLossFileIo: synced writes and synced names survive every cut", async () => {
  for (let seed = 0; seed < 30; seed++) {
    await withPowerLoss(seed, async (io, dir) => {
      const file = await io.open(`${dir}/f`, { create: true });
      await file.write(block(1), 0);
      await file.write(block(2), 4096);
      await file.datasync();
      await io.syncDirectory(dir);
      await file.write(block(3), 8192);
      await file.write(block(4), 0); // unsynced overwrite of synced bytes
      await io.cut();
      const after = await Deno.readFile(`${dir}/f`);
      assert.deepEqual(after.subarray(4096, 8192), block(2), `seed ${seed}`);
      // The overwritten sectors hold old or new bytes (or garbage from a torn write), but the
      // file never loses the synced length.
      assert.ok(after.length >= 8192, `seed ${seed}: length ${after.length}`);
    });
  }
});

Deno.test("PowerLossFileIo: unsynced writes are kept, dropped or torn by sector", async () => {
  const outcomes = new Set<string>();
  for (let seed = 0; seed < 60; seed++) {
    await withPowerLoss(seed, async (io, dir) => {
      const file = await io.open(`${dir}/f`, { create: true });
      await file.write(new Uint8Array(4096), 0);
      await file.datasync();
      await io.syncDirectory(dir);
      const data = block(7);
      await file.write(data, 0);
      await io.cut();
      const after = await Deno.readFile(`${dir}/f`);
      let newSectors = 0;
      let oldSectors = 0;
      for (let sector = 0; sector < 8; sector++) {
        const bytes = after.subarray(sector * 512, sector * 512 + 512);
        if (bytes.every((b, i) => b === data[sector * 512 + i])) newSectors++;
        else if (bytes.every((b) => b === 0)) oldSectors++;
      }
      outcomes.add(newSectors === 8 ? "kept" : oldSectors === 8 ? "dropped" : "torn");
      if (newSectors + oldSectors === 8 && newSectors > 0 && oldSectors > 0) {
        outcomes.add("torn by whole sectors");
      }
    });
  }
  assert.deepEqual(
    [...outcomes].sort(),
    ["dropped", "kept", "torn", "torn by whole sectors"],
  );
});

Deno.test("PowerLossFileIo: a new name survives only once its directory was synced", async () => {
  const seen = new Set<boolean>();
  for (let seed = 0; seed < 20; seed++) {
    await withPowerLoss(seed, async (io, dir) => {
      const file = await io.open(`${dir}/new`, { create: true });
      await file.write(block(1), 0);
      await file.datasync();
      const synced = await io.open(`${dir}/synced`, { create: true });
      await io.syncDirectory(dir);
      await io.rename(`${dir}/synced`, `${dir}/renamed`);
      await io.cut();
      seen.add(await Deno.stat(`${dir}/new`).then(() => true, () => false));
      // The rename is atomic: exactly one of the two names exists.
      const names = [
        await Deno.stat(`${dir}/synced`).then(() => 1, () => 0),
        await Deno.stat(`${dir}/renamed`).then(() => 1, () => 0),
      ];
      assert.equal(names[0]! + names[1]!, 1, `seed ${seed}`);
      void synced;
    });
  }
  // The creation was synced together with the second file's: it always survives.
  assert.deepEqual([...seen], [true]);
  const unsyncedSeen = new Set<boolean>();
  for (let seed = 0; seed < 20; seed++) {
    await withPowerLoss(seed, async (io, dir) => {
      const file = await io.open(`${dir}/new`, { create: true });
      await file.write(block(1), 0);
      await file.datasync();
      await io.cut();
      unsyncedSeen.add(await Deno.stat(`${dir}/new`).then(() => true, () => false));
    });
  }
  assert.deepEqual([...unsyncedSeen].sort(), [false, true]);
});

/** The order in which 8 writes in flight together completed, under `seed`. */
async function completionOrder(seed: number): Promise<number[]> {
  const order: number[] = [];
  await withPowerLoss(seed, async (io, dir) => {
    const file = await io.open(`${dir}/f`, { create: true });
    await Promise.all(
      Array.from({ length: 8 }, (_, i) => file.write(block(i), i * 4096).then(() => order.push(i))),
    );
    await file.close();
  });
  return order;
}

Deno.test("PowerLossFileIo: calls in flight complete in a seeded, replayable order", async () => {
  const first = await completionOrder(5);
  assert.deepEqual(await completionOrder(5), first);
  const others = await Promise.all([6, 7, 8].map(completionOrder));
  assert.ok(others.some((order) => order.join() !== first.join()), "the seed changes the order");
  assert.ok(
    [first, ...others].some((order) => order.join() !== "0,1,2,3,4,5,6,7"),
    "completions are reordered",
  );
});

Deno.test("PowerLossFileIo: after a cut every call fails and the files are unlocked", async () => {
  await withPowerLoss(3, async (io, dir) => {
    const file = await io.open(`${dir}/f`, { create: true });
    await io.syncDirectory(dir);
    assert.equal(await file.tryLock(), true);
    const late = file.write(block(1), 0).catch((error: unknown) => error);
    const report = await io.cut();
    assert.ok(isTorusError(await late, ErrorCode.Unavailable), String(await late));
    await assert.rejects(file.read(new Uint8Array(1), 0), /power cut/);
    await assert.rejects(io.open(`${dir}/f`), /power cut/);
    assert.equal(report.operations, 3);
    assert.equal(await io.whenCut(), report);
    const real = await new SysFileIo().open(`${dir}/f`);
    assert.equal(await real.tryLock(), true);
    await real.close();
  });
});

Deno.test("PowerLossFileIo: cuts by itself before a given operation", async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const io = new PowerLossFileIo(new SysFileIo(), {
      random: new SeededRandom(2),
      cutBeforeOperation: 4,
    });
    const file = await io.open(`${dir}/f`, { create: true });
    await file.write(block(1), 0);
    await file.datasync();
    await assert.rejects(file.write(block(2), 0), /power cut/);
    const report = await io.whenCut();
    assert.equal(report.operations, 3);
  } finally {
    await cleanup();
  }
});

Deno.test("PowerLossFileIo: overlapping writes in flight together are flagged", async () => {
  await withPowerLoss(4, async (io, dir) => {
    const file = await io.open(`${dir}/f`, { create: true });
    await Promise.all([file.write(block(1), 0), file.write(block(2), 4096)]);
    assert.deepEqual(io.hazards, []);
    await Promise.all([file.write(block(1), 0), file.write(block(2), 4000)]);
    assert.equal(io.hazards.length, 1);
    assert.match(io.hazards[0]!, /\[4000, 8096\) issued while \[0, 4096\)/);
  });
});

Deno.test("CacheHitRate: reads that keep missing the page cache stop trying it, but sample it", () => {
  const rate = new CacheHitRate();
  assert.equal(rate.worthTrying(), true, "a new file tries");
  for (let i = 0; i < 40; i++) rate.saw(false);
  let tries = 0;
  for (let i = 0; i < 160; i++) if (rate.worthTrying()) tries++;
  assert.equal(tries, 160 / CacheHitRate.SAMPLE_EVERY, "only every SAMPLE_EVERY-th read tries");
  // The pages come back: sampled hits bring the attempts back.
  for (let i = 0; i < 40; i++) rate.saw(true);
  assert.equal(rate.worthTrying(), true);
});

/** When a wait of `waitMs` ended among 8 writes in flight, under `seed`: writes done before it. */
async function writesBeforeWaitEnded(seed: number, waitMs: number): Promise<number> {
  let done = 0;
  let seen = -1;
  await withPowerLoss(seed, async (io, dir) => {
    const file = await io.open(`${dir}/f`, { create: true });
    const writes = Array.from({ length: 8 }, (_, i) => file.write(block(i), i * 4096));
    const wait = io.clock.sleep(waitMs).then(() => void (seen = done));
    await Promise.all([...writes.map((w) => w.then(() => void done++)), wait]);
    await file.close();
  });
  return seen;
}

Deno.test("PowerLossFileIo: its clock's waits end among the operations, replayably", async () => {
  const seeds = [1, 2, 3, 4, 5, 6];
  const soon = await Promise.all(seeds.map((seed) => writesBeforeWaitEnded(seed, 2)));
  assert.deepEqual(await Promise.all(seeds.map((seed) => writesBeforeWaitEnded(seed, 2))), soon);
  assert.ok(new Set(soon).size > 1, `a wait ends at a seeded point: ${soon}`);
  assert.ok(soon.some((writes) => writes < 8), `a short wait can end first: ${soon}`);
  for (const seed of seeds) {
    // It ends after the writes, as nothing else waits then: time jumps to its end.
    assert.equal(await writesBeforeWaitEnded(seed, 1_000), 8);
  }
});

Deno.test("PowerLossFileIo: an aborted wait ends at once, a cut rejects the others", async () => {
  await withPowerLoss(6, async (io) => {
    const abort = new AbortController();
    const aborted = io.clock.sleep(50, abort.signal);
    const pending = io.clock.sleep(50);
    abort.abort(new Error("not needed"));
    await assert.rejects(aborted, /not needed/);
    await io.cut();
    await assert.rejects(pending, /power cut/);
    await assert.rejects(io.clock.sleep(1), /power cut/);
  });
});
