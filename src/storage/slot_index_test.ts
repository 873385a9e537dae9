/** The off-heap index: the ref → slot table against a Map model, with many collisions. */

import assert from "node:assert/strict";
import { BlockRef, SeededRandom, testSeed } from "../core/mod.ts";
import { REF_WORDS, SlotIndex, SlotState } from "./slot_index.ts";

function refOf(n: number): BlockRef {
  return new BlockRef({ volume: 2, inode: 7n, index: BigInt(n) });
}

const seed = testSeed();
Deno.test(`SlotIndex: inserts, replaces and removes match a Map (seed=${seed})`, () => {
  const random = new SeededRandom(seed);
  // 64 slots give a 128-cell table: long probe runs, and removals that must shift entries back.
  const index = new SlotIndex(64);
  const model = new Map<number, number>(); // ref number -> slot
  const freeSlots = Array.from({ length: 64 }, (_, i) => i);
  const key = new Uint32Array(REF_WORDS);
  for (let step = 0; step < 20_000; step++) {
    const n = random.int(100);
    const slot = index.find(SlotIndex.keyOf(refOf(n), key));
    assert.equal(slot, model.get(n) ?? -1, `step ${step}: ref ${n}`);
    if (slot < 0 && freeSlots.length > 0) {
      const next = freeSlots.splice(random.int(freeSlots.length), 1)[0]!;
      index.setRef(next, key);
      index.insert(next);
      model.set(n, next);
    } else if (slot >= 0 && random.chance(0.5) && freeSlots.length > 0) {
      const next = freeSlots.splice(random.int(freeSlots.length), 1)[0]!;
      index.setRef(next, key);
      index.replace(slot, next);
      index.states[slot] = SlotState.Free;
      freeSlots.push(slot);
      model.set(n, next);
    } else if (slot >= 0) {
      index.remove(slot);
      index.states[slot] = SlotState.Free;
      freeSlots.push(slot);
      model.delete(n);
    }
    assert.equal(index.size, model.size);
  }
  for (const [n, slot] of model) {
    assert.equal(index.find(SlotIndex.keyOf(refOf(n), key)), slot);
    assert.ok(index.refAt(slot).equals(refOf(n)));
    assert.equal(index.states[slot], SlotState.Stored);
    assert.equal(index.findRefOf(slot), slot);
  }
});

Deno.test("SlotIndex: a large index costs memory only for the slots it uses", () => {
  const before = Deno.memoryUsage().rss;
  const index = new SlotIndex(16_000_000);
  const key = new Uint32Array(REF_WORDS);
  for (let i = 0; i < 1000; i++) {
    index.setRef(i, SlotIndex.keyOf(refOf(i), key));
    index.insert(i);
  }
  // Well under the ~800 MiB the arrays span: zeroed pages are committed on first touch.
  const grownBytes = Deno.memoryUsage().rss - before;
  assert.ok(grownBytes < 200 * 1024 * 1024, `rss grew ${grownBytes} bytes`);
  assert.equal(index.find(SlotIndex.keyOf(refOf(999), key)), 999);
});
