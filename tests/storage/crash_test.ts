/**
 * Crash safety of FileBlockStore against a real process kill: a writer process
 * (crash_writer.ts) runs a deterministic workload of puts, replaces and deletes with periodic
 * flushes and is SIGKILLed at seeded random points, several times over the same store. After
 * each kill the store is reopened here and checked:
 * - every key whose last operation before the last reported flush was not followed by another
 *   operation holds exactly that state (block intact, or absent after a delete);
 * - a key touched after that flush holds the flushed state or the state after one of the later
 *   operations on it, never bytes that no operation wrote;
 * - the store works afterwards: a put and get round trip, usedBlocks matches what is stored, the
 *   capacity is unchanged.
 * A process kill leaves the page cache intact, so this store never needs `block_unavailable`
 * here: the test treats it as a failure (stricter than the contract).
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom, testSeed } from "../../src/core/mod.ts";
import { FileBlockStore, SPARE_SLOTS } from "../../src/storage/mod.ts";
import {
  BATCH,
  BLOCK_BYTES,
  blockOf,
  FLUSH_EVERY_BATCHES,
  isDelete,
  keyRef,
  KEYS,
  opOf,
  SLOT_COUNT,
} from "./crash_workload.ts";

const ROUNDS = 8;
const writerPath = new URL("./crash_writer.ts", import.meta.url).pathname;
/** Operations a writer may have completed after printing its last `flushed N` line. */
const OPS_AFTER_LAST_FLUSH_MAX = FLUSH_EVERY_BATCHES * BATCH;
const ABSENT = -1;

/** Runs the writer until it reported `flushes` flushes, waits `delayMs`, kills it. */
async function runAndKill(
  options: { dir: string; start: number },
  kill: { flushes: number; delayMs: number },
): Promise<number> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      writerPath,
      `--dir=${options.dir}`,
      `--start=${options.start}`,
    ],
    stdout: "piped",
    stderr: "piped",
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((value) => {
    exited = true;
    return value;
  });
  try {
    const lastFlushed = await readUntilKilled(child, options.start, kill);
    assert.equal((await status).signal, "SIGKILL", `writer ended on its own: ${await stderr}`);
    return lastFlushed;
  } finally {
    // Whatever failed above, no writer outlives the test.
    if (!exited) child.kill("SIGKILL");
    await status;
    await stderr;
  }
}

/** Reads `flushed N` lines, kills the writer after `kill.flushes` of them; the last N. */
async function readUntilKilled(
  child: Deno.ChildProcess,
  start: number,
  kill: { flushes: number; delayMs: number },
): Promise<number> {
  let lastFlushed = start;
  let flushes = 0;
  let killed = false;
  let text = "";
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    text += chunk;
    const lines = text.split("\n");
    text = lines.pop() ?? "";
    for (const line of lines) {
      const match = /^flushed (\d+)$/.exec(line);
      if (match === null) continue;
      lastFlushed = Number(match[1]);
      flushes++;
    }
    if (!killed && flushes >= kill.flushes) {
      killed = true;
      await new Promise((resolve) => setTimeout(resolve, kill.delayMs));
      child.kill("SIGKILL");
    }
  }
  return lastFlushed;
}

/** Per key: the operations whose state the key may show after the crash. */
function allowedStates(
  before: Map<number, number>,
  start: number,
  lastFlushed: number,
): Map<number, Set<number>> {
  const durable = new Map(before);
  for (let op = start; op < lastFlushed; op++) {
    if (isDelete(op)) durable.delete(op % KEYS);
    else durable.set(op % KEYS, op);
  }
  const allowed = new Map<number, Set<number>>();
  for (let key = 0; key < KEYS; key++) allowed.set(key, new Set([durable.get(key) ?? ABSENT]));
  for (let op = lastFlushed; op < lastFlushed + OPS_AFTER_LAST_FLUSH_MAX; op++) {
    allowed.get(op % KEYS)!.add(isDelete(op) ? ABSENT : op);
  }
  return allowed;
}

/** Reopens the store, checks every key against `allowed`, returns what it holds. */
async function verify(
  options: { dir: string },
  allowed: Map<number, Set<number>>,
): Promise<Map<number, number>> {
  const store = await FileBlockStore.open({
    dir: options.dir,
    blockSizeBytes: BLOCK_BYTES,
    sizeBytes: SLOT_COUNT * BLOCK_BYTES,
  });
  try {
    const state = new Map<number, number>();
    for (let key = 0; key < KEYS; key++) {
      const seen = await readKey(store, key);
      const expected = allowed.get(key)!;
      assert.ok(expected.has(seen), `key ${key} holds op ${seen}, allowed ${[...expected]}`);
      if (seen !== ABSENT) state.set(key, seen);
    }
    assert.equal(store.usedBlocks(), state.size);
    assert.equal(store.totalBlocks(), SLOT_COUNT - SPARE_SLOTS);
    const scratch = keyRef(KEYS + 1);
    await store.putBlock(scratch, blockOf(7));
    assert.deepEqual(await store.getBlock(scratch), blockOf(7));
    await store.deleteBlock(scratch);
    assert.equal(store.usedBlocks(), state.size);
    return state;
  } finally {
    await store.close();
  }
}

/** The operation whose block `key` holds (checked byte for byte), or ABSENT. */
async function readKey(store: FileBlockStore, key: number): Promise<number> {
  try {
    const block = await store.getBlock(keyRef(key));
    const op = opOf(block);
    assert.equal(op % KEYS, key, `key ${key} holds a block of op ${op}`);
    assert.deepEqual(block, blockOf(op), `key ${key}: bytes differ from what op ${op} wrote`);
    return op;
  } catch (error) {
    if (isTorusError(error, ErrorCode.NotExist)) return ABSENT;
    throw error;
  }
}

const seed = testSeed();
Deno.test(
  `FileBlockStore keeps flushed blocks across SIGKILLs at random points (seed=${seed})`,
  async () => {
    const random = new SeededRandom(seed);
    const dir = await Deno.makeTempDir({ prefix: "torus-crash-" });
    try {
      let state = new Map<number, number>();
      for (let round = 0; round < ROUNDS; round++) {
        const start = round * 1_000_000;
        const kill = { flushes: 1 + random.int(40), delayMs: random.int(30) };
        const lastFlushed = await runAndKill({ dir, start }, kill);
        assert.ok(lastFlushed > start, "the writer flushed before it was killed");
        state = await verify({ dir }, allowedStates(state, start, lastFlushed));
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
