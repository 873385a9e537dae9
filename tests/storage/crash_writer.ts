/**
 * The process the crash test kills: opens a FileBlockStore and runs the crash workload from
 * operation `--start` on, BATCH operations at a time, flushing every FLUSH_EVERY_BATCHES batches
 * and printing `flushed N` once a flush that started after operations [start, N) completed has
 * resolved. Runs until killed (or `--ops` operations).
 *
 * Usage: deno run -A tests/storage/crash_writer.ts --dir DIR --start N [--ops N]
 * @module
 */

import { parseArgs } from "node:util";
import { FileBlockStore } from "../../src/storage/mod.ts";
import {
  BATCH,
  BLOCK_BYTES,
  blockOf,
  FLUSH_EVERY_BATCHES,
  isDelete,
  keyRef,
  KEYS,
  SLOT_COUNT,
} from "./crash_workload.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    dir: { type: "string" },
    start: { type: "string", default: "0" },
    ops: { type: "string", default: String(Number.MAX_SAFE_INTEGER) },
  },
});
if (values.dir === undefined) throw new Error("--dir is required");

const store = await FileBlockStore.open({
  dir: values.dir,
  blockSizeBytes: BLOCK_BYTES,
  sizeBytes: SLOT_COUNT * BLOCK_BYTES,
});
const encoder = new TextEncoder();
const say = (line: string) => Deno.stdout.writeSync(encoder.encode(line + "\n"));
say("opened");

const start = Number(values.start);
const end = start + Number(values.ops);
let batches = 0;
for (let first = start; first < end; first += BATCH) {
  const calls: Promise<void>[] = [];
  for (let op = first; op < Math.min(end, first + BATCH); op++) {
    const ref = keyRef(op % KEYS);
    // A delete of a key that is not stored answers not_exist; the workload does not care.
    calls.push(
      isDelete(op) ? store.deleteBlock(ref).catch(() => {}) : store.putBlock(ref, blockOf(op)),
    );
  }
  await Promise.all(calls);
  if (++batches % FLUSH_EVERY_BATCHES === 0) {
    const covered = Math.min(end, first + BATCH);
    await store.flush();
    say(`flushed ${covered}`);
  }
}
await store.close();
say("done");
