/**
 * Cost of a large block map: a 1 TiB volume at 512 KiB blocks has 2 Mi indexes. Measures the
 * whole-map operations (unmarshal, marshal, GC walks), one 4096-index chunk (the unit a chunked
 * map rewrites per sync), and the first put of a new write epoch.
 * Run: deno bench -A src/blockset/blockset_bench.ts
 * @module
 */

import { INodeRef } from "../core/mod.ts";
import type { BlockLayer } from "../models/mod.ts";
import { MemoryBlockStore } from "../storage/mod.ts";
import { LayerKind } from "./blockset.ts";
import { unmarshalBlockset } from "./mod.ts";

const indexes = 2 * 1024 * 1024;
const store = new MemoryBlockStore({ blockSizeBytes: 4096, totalBlocks: 1_000_000 });

function syntheticLayers(): BlockLayer[] {
  const refs = new Uint8Array(indexes * 24);
  for (let i = 0; i < indexes; i++) {
    // Every index set, written over 64 epochs, as after a long life of syncs.
    new INodeRef(2, 100 + (i % 64)).blockRef(i + 1).writeTo(refs, i * 24);
  }
  const crcs = new Uint8Array(indexes * 4).fill(0x11);
  return [{ type: LayerKind.Crc, content: crcs }, { type: LayerKind.Base, content: refs }];
}

const layers = syntheticLayers();
const blockset = unmarshalBlockset(layers, store);

Deno.bench("unmarshal crc,base of 2 Mi indexes", { group: "map" }, () => {
  unmarshalBlockset(layers, store);
});
Deno.bench("marshal crc,base of 2 Mi indexes", { group: "map" }, () => {
  blockset.marshal();
});
Deno.bench("getLiveINodes of 2 Mi indexes", { group: "map" }, () => {
  blockset.getLiveINodes();
});
Deno.bench("getAllBlockRefs of 2 Mi indexes", { group: "map" }, () => {
  blockset.getAllBlockRefs();
});
Deno.bench("marshalRange of a 4096-index chunk", { group: "chunk" }, () => {
  blockset.marshalRange(1_000_000, 1_004_096);
});
Deno.bench("loadRange of a 4096-index chunk", { group: "chunk" }, () => {
  blockset.loadRange(1_000_000, blockset.marshalRange(1_000_000, 1_004_096));
});
let epoch = 1000n;
Deno.bench("first put of a new epoch (4 KiB block)", { group: "put" }, async () => {
  await blockset.putBlock(new INodeRef(2, epoch++), 5, new Uint8Array(4096));
});
let oldEpoch = 100n;
Deno.bench("first put of an epoch present in the map (scan)", { group: "put" }, async () => {
  await blockset.putBlock(new INodeRef(2, 100n + (oldEpoch++ % 64n)), 6, new Uint8Array(4096));
});
