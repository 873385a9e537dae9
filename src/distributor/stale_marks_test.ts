import assert from "node:assert/strict";
import { testRef } from "../storage/mod.ts";
import { StaleMarkRecorder, type StaleMarkStore } from "./stale_marks.ts";
import { MemoryStaleMarks } from "./test_cluster.ts";

/** Marks whose removals take a while (a slow metadata service). */
class SlowRemovals extends MemoryStaleMarks implements StaleMarkStore {
  override async remove(...args: Parameters<MemoryStaleMarks["remove"]>): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, 20));
    await super.remove(...args);
  }
}

Deno.test("StaleMarkRecorder: marks of one turn go out in one add per volume and node", async () => {
  const store = new MemoryStaleMarks();
  const recorder = new StaleMarkRecorder(store);
  await Promise.all([0, 1, 2, 3].map((i) => recorder.record(testRef(i), "node-a")));
  await recorder.record(testRef(1), "node-a"); // already recorded: no new add
  assert.equal(store.adds, 1);
  assert.equal(store.marked().get("node-a")?.length, 4);
});

Deno.test("StaleMarkRecorder: a mark recorded again while its removal is on its way stays", async () => {
  const store = new SlowRemovals();
  const recorder = new StaleMarkRecorder(store);
  const ref = testRef(7);
  await recorder.record(ref, "node-a");
  recorder.release(ref, "node-a"); // resynced: the removal goes out...
  await recorder.record(ref, "node-a"); // ...and the node misses another change meanwhile
  await recorder.idle();
  assert.ok(store.isStale(ref, "node-a"), "the newer mark survives the older removal");
});

Deno.test("StaleMarkRecorder: a failed add is not remembered, so the next call records it", async () => {
  const store = new MemoryStaleMarks();
  const recorder = new StaleMarkRecorder(store);
  store.failAdds = true;
  await assert.rejects(recorder.record(testRef(2), "node-b"), /unreachable/);
  store.failAdds = false;
  await recorder.record(testRef(2), "node-b");
  assert.ok(store.isStale(testRef(2), "node-b"));
});
