/**
 * Checkpoints and a full journal: records that wait for room get it once what is applied is
 * checkpointed, even when the apply that made room ended while another checkpoint was running
 * (that one moves only past what was applied when it began).
 * @module
 */

import assert from "node:assert/strict";
import { BlockRef } from "../core/mod.ts";
import { FileBlockStore } from "./file.ts";
import { HookedFileIo } from "./hooked_file_io.ts";
import { SysFileIo } from "./sys_file_io.ts";

const BLOCK = 512 * 1024;
const SLOTS = 16;

/** Writes that wait while their gate is closed: the data file's, or the journal's checkpoints. */
class Gates extends HookedFileIo {
  holdData = false;
  holdCheckpoints = false;
  readonly #waiting: (() => void)[] = [];
  constructor() {
    super(new SysFileIo(), (path) => ({
      write: async (file, bytes, at) => {
        const data = path.includes("/data-") && this.holdData;
        // The journal's checkpoint records live in its first page, before the record region.
        const checkpoint = path.includes("/journal-") && at < 4096 && this.holdCheckpoints;
        while ((data && this.holdData) || (checkpoint && this.holdCheckpoints)) {
          await new Promise<void>((go) => this.#waiting.push(go));
        }
        return file.write(bytes, at);
      },
    }));
  }
  release(which: "data" | "checkpoints"): void {
    if (which === "data") this.holdData = false;
    else this.holdCheckpoints = false;
    for (const go of this.#waiting.splice(0)) go();
  }
}

function ref(index: number): BlockRef {
  return new BlockRef({ volume: 2, inode: 1, index });
}

function turns(count: number): Promise<void> {
  let chain = Promise.resolve();
  for (let i = 0; i < count; i++) {
    chain = chain.then(() => new Promise((resolve) => setTimeout(resolve, 1)));
  }
  return chain;
}

Deno.test("records waiting for room in a full journal get it when a checkpoint ran meanwhile", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-checkpoint-" });
  const gates = new Gates();
  const store = await FileBlockStore.open({
    dir,
    blockSizeBytes: BLOCK,
    sizeBytes: SLOTS * BLOCK,
    io: gates,
  });
  const whole = (fill: number) => new Uint8Array(BLOCK).fill(fill);
  try {
    for (let i = 0; i < 6; i++) await store.putBlock(ref(i), whole(i));
    await store.flush();
    // A small record is flushed; its apply waits at the data file while big records are placed,
    // so when it ends the journal is over half full: a checkpoint starts, past the small record
    // only, and its write is held.
    gates.holdData = true;
    await store.writeAt(ref(0), 0, new Uint8Array(4096).fill(0xaa));
    await store.flush();
    const big = [1, 2, 3, 4].map((i) => store.writeAt(ref(i), 0, whole(0x10 + i)));
    await Promise.all(big);
    gates.holdCheckpoints = true;
    gates.release("data");
    await turns(20);
    // The big records are flushed and applied while that checkpoint is held; then the journal
    // fills up and the last records wait for room.
    await store.flush();
    await turns(20);
    const more = [1, 2, 3, 4, 5].map((i) => store.writeAt(ref(i), 0, whole(0x20 + i)));
    await turns(20);
    gates.release("checkpoints");
    const timeout = new Promise<string>((resolve) => setTimeout(() => resolve("hung"), 10_000));
    const outcome = await Promise.race([Promise.all(more).then(() => "placed"), timeout]);
    assert.equal(outcome, "placed", "the waiting records got room");
    await store.flush();
    for (let i = 1; i <= 5; i++) assert.deepEqual(await store.getBlock(ref(i)), whole(0x20 + i));
  } finally {
    gates.release("data");
    gates.release("checkpoints");
    await store.close();
    await Deno.remove(dir, { recursive: true });
  }
});
