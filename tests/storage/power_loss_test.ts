/**
 * Crash safety of FileBlockStore against power loss. The store runs over a PowerLossFileIo (the
 * real file system underneath): a seeded workload of puts, replaces, deletes, gets and flushes
 * keeps many calls in flight while the layer completes I/O in a seeded order; then the power is
 * cut (at a random point of the workload, or in the middle of an open) and every write since its
 * file's last sync is kept, dropped or torn. The store is reopened and checked, several cuts in a
 * row per seed:
 * - a key whose last operation was covered by a completed flush (it completed before the flush
 *   was called) holds exactly that state, unless a later operation on it was called;
 * - a key may otherwise hold its covered state or the state of any later operation on it, and
 *   nothing else: never bytes no put wrote, never a torn block (a get returns a whole block of
 *   one put, `not_exist`, or `block_unavailable` where being absent is allowed: a torn copy
 *   stays, unreadable, until it is replaced or deleted);
 * - usedBlocks counts exactly the keys present (readable or torn), the capacity is unchanged,
 *   and no two writes to overlapping bytes were ever in flight together.
 * The layer's choices, the workload and the pacing all come from the seed, so a failing seed
 * replays exactly: `SEED=<seed> deno task test -- tests/storage/power_loss_test.ts`.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom, testSeed } from "../../src/core/mod.ts";
import { FileBlockStore, PowerLossFileIo, SPARE_SLOTS, SysFileIo } from "../../src/storage/mod.ts";
import { blockOf, keyRef, opOf } from "./crash_workload.ts";

const BLOCK_BYTES = 4096;
/** Slots of the store: small, so it runs full and replaces wait for retiring copies. */
const SLOTS = 24;
/** A few keys more than the capacity, so puts of new keys also meet `out_of_space`. */
const KEYS = SLOTS - SPARE_SLOTS + 3;
/** Seeds run by CI, each its own test. */
const SEEDS = 12;
/** Power cuts per seed. */
const CUTS = 5;
const ABSENT = -1;
/** A copy that a power cut left torn: never returned, it stays until replaced or deleted. */
const TORN = -2;

/** One call of the workload. */
interface Op {
  id: number;
  key: number;
  /** The op's id for a put (its block), ABSENT for a delete. */
  state: number;
  /** Completed successfully (its promise resolved). */
  done: boolean;
  /** Failed in a way that says it changed nothing (out_of_space, not_exist). */
  noEffect: boolean;
}

/** What each key may hold after a power cut. */
class Model {
  /** Per key, the state known when this round started. */
  #base = new Map<number, number>();
  #ops = new Map<number, Op[]>();
  #covered = new Set<number>();
  #nextId: number;

  constructor(firstId: number) {
    this.#nextId = firstId;
  }

  /** Records a call; `state` is "put" (a new block) or ABSENT (a delete). */
  call(key: number, kind: "put" | "delete"): Op {
    const id = this.#nextId++;
    const op = { id, key, state: kind === "put" ? id : ABSENT, done: false, noEffect: false };
    const ops = this.#ops.get(key) ?? [];
    ops.push(op);
    this.#ops.set(key, ops);
    return op;
  }

  /** The ops completed by now: what a flush called now covers once it resolves. */
  completedOps(): Op[] {
    return [...this.#ops.values()].flat().filter((op) => op.done);
  }

  covered(ops: Op[]): void {
    for (const op of ops) this.#covered.add(op.id);
  }

  /** States `key` may be in: its last covered state and those of every later op. */
  allowed(key: number): Set<number> {
    const ops = this.#ops.get(key) ?? [];
    let last = -1;
    ops.forEach((op, i) => {
      if (this.#covered.has(op.id)) last = i;
    });
    const allowed = new Set([last >= 0 ? ops[last]!.state : this.#base.get(key) ?? ABSENT]);
    for (const op of ops.slice(last + 1)) if (!op.noEffect) allowed.add(op.state);
    return allowed;
  }

  /** States any put of `key` so far may have left (for gets while the workload runs). */
  written(key: number): Set<number> {
    const states = new Set([this.#base.get(key) ?? ABSENT]);
    for (const op of this.#ops.get(key) ?? []) if (op.state !== ABSENT) states.add(op.state);
    return states;
  }

  /** A new round starts from what the store was seen to hold. */
  startRound(observed: Map<number, number>): void {
    this.#base = observed;
    this.#ops.clear();
    this.#covered.clear();
  }

  get nextId(): number {
    return this.#nextId;
  }
}

/** What `key` holds: the op whose block it is (checked byte for byte), or ABSENT. */
async function observe(store: FileBlockStore, key: number, where: string): Promise<number> {
  try {
    const block = await store.getBlock(keyRef(key));
    const op = opOf(block);
    assert.deepEqual(block, blockOf(op), `${where}: key ${key} holds bytes no put wrote`);
    return op;
  } catch (error) {
    if (isTorusError(error, ErrorCode.NotExist)) return ABSENT;
    // A torn copy is detected and never returned (it stays, unreadable, until replaced).
    if (isTorusError(error, ErrorCode.BlockUnavailable)) return TORN;
    throw error;
  }
}

/**
 * Checks every key of a reopened store; returns what it holds, or null when the power was cut
 * meanwhile (`io` given: the reads then fail and prove nothing).
 */
async function verify(
  store: FileBlockStore,
  context: { model: Model; where: string; io?: PowerLossFileIo },
): Promise<Map<number, number> | null> {
  const { model, where, io } = context;
  const observed = new Map<number, number>();
  for (let key = 0; key < KEYS; key++) {
    const seen = await observe(store, key, where).catch((error) => {
      if (io?.isCut) return null;
      throw error;
    });
    if (io?.isCut) return null;
    assert.ok(seen !== null);
    const allowed = model.allowed(key);
    // A torn copy may be left where the key may be absent (an unflushed put of a new key), or
    // where it was torn already and nothing covered changed it since.
    const ok = allowed.has(seen) || (seen === TORN && allowed.has(ABSENT));
    const what = seen === TORN ? "a torn copy" : `state ${seen}`;
    assert.ok(ok, `${where}: key ${key} holds ${what}, allowed ${[...allowed]}`);
    if (seen !== ABSENT) observed.set(key, seen);
  }
  if (io?.isCut) return null;
  assert.equal(store.usedBlocks(), observed.size, `${where}: usedBlocks`);
  assert.equal(store.totalBlocks(), SLOTS - SPARE_SLOTS, `${where}: capacity`);
  return observed;
}

/** Runs the workload on `store` until `steps` calls were made, then cuts the power. */
async function workload(
  store: FileBlockStore,
  context: { io: PowerLossFileIo; model: Model; random: SeededRandom; where: string },
): Promise<void> {
  const { io, model, random } = context;
  const inFlight: Promise<unknown>[] = [];
  const failures: string[] = [];
  const expectNoFailure = (error: unknown, op: Op | null) => {
    if (io.isCut) return;
    const harmless = isTorusError(error, ErrorCode.OutOfSpace) ||
      isTorusError(error, ErrorCode.NotExist);
    if (op !== null && harmless) op.noEffect = true;
    else failures.push(String(error));
  };
  const track = (promise: Promise<unknown>, op: Op | null, onDone?: () => void) => {
    inFlight.push(
      promise.then(() => {
        if (op !== null) op.done = true;
        onDone?.();
      }, (error: unknown) => expectNoFailure(error, op)),
    );
  };
  const steps = 20 + random.int(250);
  for (let step = 0; step < steps && !io.isCut; step++) {
    const key = random.int(KEYS);
    const roll = random.float();
    if (roll < 0.5) {
      const op = model.call(key, "put");
      track(store.putBlock(keyRef(key), blockOf(op.id)), op);
    } else if (roll < 0.65) {
      track(store.deleteBlock(keyRef(key)), model.call(key, "delete"));
    } else if (roll < 0.75) {
      const covers = model.completedOps();
      track(store.flush(), null, () => model.covered(covers));
    } else if (roll < 0.9) {
      // Whole blocks of a put called by the time the get completes; never a torn one, but for
      // a copy the last cut left torn (still there until replaced or deleted).
      track(
        observe(store, key, context.where).then((seen) => {
          if (io.isCut || seen === ABSENT || model.written(key).has(seen)) return;
          failures.push(`a get of key ${key} returned state ${seen}`);
        }),
        null,
      );
    } else {
      // Let some of what is in flight complete (or all of it).
      if (random.chance(0.2)) await Promise.all(inFlight.splice(0));
    }
    await io.ran(random.int(4));
  }
  await io.cut();
  await Promise.all(inFlight);
  assert.deepEqual(failures, [], `${context.where}: calls failed before the power cut`);
}

/** Opens the store over `io`; null when the power was cut during the open. */
async function openOrCut(
  dir: string,
  io: PowerLossFileIo,
  journalRegionBytes: number | undefined,
): Promise<FileBlockStore | null> {
  try {
    return await FileBlockStore.open({
      dir,
      blockSizeBytes: BLOCK_BYTES,
      sizeBytes: SLOTS * BLOCK_BYTES,
      io,
      clock: io.clock,
      ...(journalRegionBytes === undefined ? {} : { journalRegionBytes }),
    });
  } catch (error) {
    if (!io.isCut) throw error;
    await io.whenCut();
    return null;
  }
}

/** Cuts the power CUTS times over one store, checking it after each. */
async function runSeed(seed: number): Promise<void> {
  const random = new SeededRandom(seed);
  const dir = await Deno.makeTempDir({ prefix: "torus-power-" });
  const model = new Model(1);
  let io: PowerLossFileIo | null = null;
  // Half the seeds get the smallest journal (8 whole-block records): its install and delete
  // records then wrap it and checkpoint within one workload.
  const journalRegionBytes = random.chance(0.5) ? 8 * (BLOCK_BYTES + 64) : undefined;
  try {
    for (let cut = 0; cut < CUTS; cut++) {
      const where = `seed ${seed}, power cut ${cut + 1}`;
      // Now and then the power fails again while the store is being opened (and repaired).
      const cutEarly = random.chance(0.2);
      io = new PowerLossFileIo(new SysFileIo(), {
        random: new SeededRandom(random.nextU32()),
        ...(cutEarly ? { cutBeforeOperation: 1 + random.int(40) } : {}),
      });
      const store = await openOrCut(dir, io, journalRegionBytes);
      const observed = store === null
        ? null
        : await verify(store, { model, where: `${where} (reopened)`, io });
      if (store === null || observed === null) {
        // Cut while opening or checking: the next open must find the same states allowed.
        await io.whenCut();
        continue;
      }
      model.startRound(observed);
      await workload(store, { io, model, random, where });
      assert.deepEqual(io.hazards, [], `${where}: overlapping writes were in flight`);
    }
    // A last open without the layer: the store is sound and keeps what it showed.
    const store = await FileBlockStore.open({
      dir,
      blockSizeBytes: BLOCK_BYTES,
      sizeBytes: SLOTS * BLOCK_BYTES,
    });
    const observed = await verify(store, { model, where: `seed ${seed}, final open` });
    assert.ok(observed !== null);
    // It still works: a new block when there is room, and a replace (same bytes) in any case.
    if (store.usedBlocks() < store.totalBlocks()) {
      const scratch = keyRef(KEYS + 1);
      await store.putBlock(scratch, blockOf(model.nextId));
      assert.deepEqual(await store.getBlock(scratch), blockOf(model.nextId));
      await store.deleteBlock(scratch);
    }
    for (const [key, state] of observed) {
      if (state === TORN) continue;
      await store.putBlock(keyRef(key), blockOf(state));
      assert.deepEqual(await store.getBlock(keyRef(key)), blockOf(state));
    }
    await store.close();
    const again = await FileBlockStore.open({
      dir,
      blockSizeBytes: BLOCK_BYTES,
      sizeBytes: SLOTS * BLOCK_BYTES,
    });
    model.startRound(observed);
    await verify(again, { model, where: `seed ${seed}, after a clean close` });
    await again.close();
  } finally {
    // A failed check leaves a store running over the layer: stop its I/O before removing files.
    await io?.cut();
    await Deno.remove(dir, { recursive: true });
  }
}

const firstSeed = testSeed();
for (let i = 0; i < SEEDS; i++) {
  const seed = (firstSeed + i) >>> 0;
  Deno.test(`FileBlockStore keeps every flushed block across power cuts (seed=${seed})`, () =>
    runSeed(seed));
}
