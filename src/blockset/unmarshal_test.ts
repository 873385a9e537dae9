/**
 * unmarshalBlockset and loadRange against malformed input: every bad INode.blocks is rejected as
 * `invalid` (never a crash, never another error), and good input is copied, not aliased.
 * @module
 */

import assert from "node:assert/strict";
import {
  BLOCK_REF_BYTES,
  BlockRef,
  ErrorCode,
  INodeRef,
  isTorusError,
  SeededRandom,
  testSeed,
  U64_MAX,
} from "../core/mod.ts";
import type { BlockLayer } from "../models/mod.ts";
import { MemoryBlockStore } from "../storage/mod.ts";
import { type Blockset, LayerKind } from "./blockset.ts";
import { blockOf, CONTRACT_BLOCK_BYTES, readAll, torusCode } from "./blockset_contract.ts";
import { createBlockset, parseBlockLayerSpec, unmarshalBlockset } from "./mod.ts";

function newStore(): MemoryBlockStore {
  return new MemoryBlockStore({ blockSizeBytes: CONTRACT_BLOCK_BYTES, totalBlocks: 10_000 });
}

async function written(spec: string, count: number, store = newStore()): Promise<Blockset> {
  const blockset = createBlockset(parseBlockLayerSpec(spec), store);
  for (let i = 0; i < count; i++) {
    await blockset.putBlock(new INodeRef(2, 5n), i, blockOf(i + 1));
  }
  return blockset;
}

function int32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setInt32(0, value, true);
  return bytes;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function rejectsInvalid(layers: BlockLayer[], why: string): void {
  assert.throws(() => unmarshalBlockset(layers, newStore()), (error: unknown) => {
    assert.ok(isTorusError(error, ErrorCode.Invalid), `${why}: ${String(error)}`);
    assert.ok(!error.message.includes("\n"), "one line");
    return true;
  }, why);
}

const refBytes = (index: number) => new INodeRef(2, 5n).blockRef(index).toBytes();

Deno.test("unmarshalBlockset rejects bad stacks: none, unknown kinds, wrong order, repeats", () => {
  const baseLayer = { type: LayerKind.Base, content: new Uint8Array() };
  const crcLayer = { type: LayerKind.Crc, content: new Uint8Array() };
  const repLayer = { type: LayerKind.Rep, content: int32(2) };
  rejectsInvalid([], "no layers");
  rejectsInvalid([{ type: 3, content: new Uint8Array() }, baseLayer], "unknown kind 3");
  rejectsInvalid([{ type: 2 ** 32 - 1, content: new Uint8Array() }], "unknown kind");
  rejectsInvalid([baseLayer, crcLayer], "base on top");
  rejectsInvalid([crcLayer], "no base");
  rejectsInvalid([crcLayer, crcLayer, baseLayer], "crc twice");
  rejectsInvalid([baseLayer, baseLayer], "base twice");
  rejectsInvalid([repLayer, repLayer, baseLayer], "rep twice");
});

Deno.test("unmarshalBlockset rejects truncated and misaligned layer content", async () => {
  const good = (await written("rep=3,crc,base", 3)).marshal();
  for (let layer = 0; layer < good.length; layer++) {
    const content = good[layer]!.content;
    for (let length = 0; length < content.length; length++) {
      const layers = good.map((l, i) =>
        i === layer ? { ...l, content: content.slice(0, length) } : l
      );
      rejectsInvalid(layers, `layer ${layer} cut to ${length} bytes`);
    }
  }
});

Deno.test("unmarshalBlockset rejects oversized layer content and lengths that disagree", async () => {
  const good = (await written("rep=3,crc,base", 3)).marshal();
  for (let layer = 0; layer < good.length; layer++) {
    for (const extra of [1, 4, BLOCK_REF_BYTES, 1000]) {
      const content = concat(good[layer]!.content, new Uint8Array(extra));
      const layers = good.map((l, i) => i === layer ? { ...l, content } : l);
      rejectsInvalid(layers, `layer ${layer} with ${extra} extra bytes`);
    }
  }
  const crcOnly = (await written("crc,base", 2)).marshal();
  rejectsInvalid([crcOnly[0]!, { type: 0, content: refBytes(1) }], "crc holds more than base");
});

Deno.test("unmarshalBlockset checks the rep header and lists (N−1 lists, not N)", () => {
  const base = { type: LayerKind.Base, content: concat(refBytes(1), refBytes(2)) };
  const list = (count: number, ...refs: Uint8Array[]) => concat(int32(count), ...refs);
  const repOf = (...parts: Uint8Array[]) => ({ type: LayerKind.Rep, content: concat(...parts) });
  const ok = repOf(int32(2), list(2, refBytes(3), refBytes(4)));
  assert.equal(unmarshalBlockset([ok, base], newStore()).length(), 2);
  rejectsInvalid([repOf(int32(2), list(2, refBytes(3), refBytes(4)), list(2)), base], "N lists");
  rejectsInvalid([repOf(int32(3), list(2, refBytes(3), refBytes(4))), base], "a list missing");
  rejectsInvalid([repOf(int32(0)), base], "zero copies");
  rejectsInvalid([repOf(int32(-1)), base], "negative copies");
  rejectsInvalid([repOf(int32(17)), base], "too many copies");
  rejectsInvalid([repOf(int32(2 ** 31 - 1)), base], "huge copies");
  rejectsInvalid([repOf(int32(2), list(-1)), base], "negative count");
  rejectsInvalid([repOf(int32(2), list(2 ** 31 - 1, refBytes(3))), base], "count past the end");
  rejectsInvalid([repOf(int32(2), list(1, refBytes(3))), base], "count differs from base");
  rejectsInvalid(
    [repOf(int32(3), list(2, refBytes(3), refBytes(4)), list(1, refBytes(5))), base],
    "lists of different lengths",
  );
  rejectsInvalid([repOf(new Uint8Array([2, 0, 0])), base], "header cut short");
  // One copy means no lists: the header alone is the whole content.
  assert.equal(unmarshalBlockset([repOf(int32(1)), base], newStore()).length(), 2);
  rejectsInvalid([repOf(int32(1), list(2, refBytes(3), refBytes(4))), base], "rep=1 with a list");
});

Deno.test("unmarshalBlockset rejects refs that are not data block refs", () => {
  const inodeRef = new BlockRef({ type: 1, volume: 2, inode: 5n, index: 1n }).toBytes();
  rejectsInvalid([{ type: LayerKind.Base, content: inodeRef }], "INode-type ref in base");
  const typeBits = refBytes(1);
  typeBits[7] = 0x80;
  rejectsInvalid([{ type: LayerKind.Base, content: typeBits }], "high type bits");
});

const garbageSeed = testSeed();
Deno.test(`unmarshalBlockset turns random garbage into invalid, never a crash (seed=${garbageSeed})`, () => {
  for (const seed of [garbageSeed, 1, 2, 3]) {
    const random = new SeededRandom(seed);
    for (let round = 0; round < 300; round++) {
      const layers: BlockLayer[] = [];
      const count = random.int(4);
      for (let i = 0; i < count; i++) {
        const content = random.bytes(random.int(80));
        if (random.chance(0.5) && content.length >= 4) content.set(int32(1 + random.int(3)));
        layers.push({ type: random.int(4), content });
      }
      try {
        const blockset = unmarshalBlockset(layers, newStore());
        assert.ok(blockset.length() >= 0);
      } catch (error) {
        assert.ok(isTorusError(error, ErrorCode.Invalid), `seed ${seed}: ${String(error)}`);
      }
    }
  }
});

Deno.test("unmarshalled blocksets copy their input and marshal fresh buffers", async () => {
  const store = newStore();
  const original = await written("rep=2,crc,base", 2, store);
  const layers = original.marshal();
  // Content inside a larger buffer at an odd offset, as a decoder may hand it over.
  const shifted = layers.map((layer) => {
    const buffer = new Uint8Array(layer.content.length + 3);
    buffer.set(layer.content, 1);
    return { type: layer.type, content: buffer.subarray(1, 1 + layer.content.length) };
  });
  const copy = unmarshalBlockset(shifted, store);
  for (const layer of shifted) layer.content.fill(0xff);
  assert.deepEqual(await readAll(copy), [blockOf(1), blockOf(2)]);
  const marshalled = copy.marshal();
  for (const layer of marshalled) layer.content.fill(0xff);
  assert.deepEqual(copy.marshal(), layers);
});

Deno.test("loadRange applies nothing when any layer's content is bad", async () => {
  const blockset = await written("crc,base", 3);
  const before = blockset.marshal();
  const chunk = blockset.marshalRange(0, 2);
  const badCrc = { ...chunk[0]!, content: chunk[0]!.content.slice(0, 7) };
  assert.throws(() => blockset.loadRange(1, [badCrc, chunk[1]!]), torusCode(ErrorCode.Invalid));
  assert.throws(() => blockset.loadRange(2 ** 30, chunk), torusCode(ErrorCode.Invalid));
  assert.deepEqual(blockset.marshal(), before);
});

Deno.test("new refs skip past loaded refs of the epoch being written", async () => {
  const store = newStore();
  const epoch = new INodeRef(2, 5n);
  const loaded = { type: LayerKind.Base, content: concat(epoch.blockRef(100).toBytes()) };
  const blockset = unmarshalBlockset([loaded], store);
  await blockset.putBlock(epoch, 1, blockOf(1));
  assert.ok(blockset.getAllBlockRefs()[1]!.index > 100n);
  // Loading refs of the current epoch later moves the counter past them too.
  blockset.loadRange(2, [{ type: LayerKind.Base, content: epoch.blockRef(500).toBytes() }]);
  await blockset.putBlock(epoch, 3, blockOf(3));
  assert.ok(blockset.getAllBlockRefs()[3]!.index > 500n);
});

Deno.test("a loaded ref at the top of the index space makes puts invalid, never a reused ref", async () => {
  const epoch = new INodeRef(2, 5n);
  const top = { type: LayerKind.Base, content: epoch.blockRef(U64_MAX).toBytes() };
  const blockset = unmarshalBlockset([top], newStore());
  await assert.rejects(blockset.putBlock(epoch, 1, blockOf(1)), torusCode(ErrorCode.Invalid));
  assert.equal(blockset.length(), 1);
});
