/**
 * Building stacks: from layer specs (a new, empty file) or from the BlockLayers of an INode.
 * Both go bottom-up (base first, each layer wrapping the one below) and check the stack against
 * the rules of spec.ts, so a stack that cannot be written as a spec is never built.
 * @module
 */

import { invalid } from "../core/mod.ts";
import type { BlockLayer } from "../models/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import { type Blockset, LayerKind, type LayerSpec } from "./blockset.ts";
import { BaseLayer } from "./base.ts";
import { CrcLayer } from "./crc.ts";
import { type BlocksetOptions, type Layer, StackContext } from "./layer.ts";
import { readRepCopies, RepLayer } from "./replication.ts";
import { checkLayerSpecs, repCopies } from "./spec.ts";

function build(specs: readonly LayerSpec[], context: StackContext): Layer {
  let layer: Layer = new BaseLayer(context);
  for (const spec of specs.slice(0, -1).reverse()) {
    if (spec.kind === LayerKind.Crc) layer = new CrcLayer(context, layer);
    else if (spec.kind === LayerKind.Rep) layer = new RepLayer(context, layer, repCopies(spec));
  }
  return layer;
}

/**
 * An empty blockset with the given layers (top first, as parseBlockLayerSpec returns them) over
 * `store`. Throws `invalid` for a stack that breaks the rules of spec.ts.
 */
export function createBlockset(
  specs: readonly LayerSpec[],
  store: BlockStore,
  options: BlocksetOptions = {},
): Blockset {
  checkLayerSpecs(specs, "block layer stack");
  return build(specs, new StackContext(store, options));
}

/** The layer specs that a marshalled stack was created with (rep copies come from content). */
function specsOf(layers: readonly BlockLayer[]): LayerSpec[] {
  return layers.map((layer, position) => {
    switch (layer.type) {
      case LayerKind.Base:
      case LayerKind.Crc:
        return { kind: layer.type, options: "" };
      case LayerKind.Rep:
        return { kind: layer.type, options: String(readRepCopies(layer.content)) };
      default:
        throw invalid(`block layer ${position} has unknown type ${layer.type}`);
    }
  });
}

/**
 * Rebuilds a blockset from INode.blocks (top layer first). Throws `invalid` for unknown kinds, a
 * stack in the wrong order, malformed or truncated content, and layers of different lengths.
 */
export function unmarshalBlockset(
  layers: readonly BlockLayer[],
  store: BlockStore,
  options: BlocksetOptions = {},
): Blockset {
  const specs = specsOf(layers);
  checkLayerSpecs(specs, "marshalled block layer stack");
  const blockset = build(specs, new StackContext(store, options));
  blockset.loadRange(0, layers);
  return blockset;
}
