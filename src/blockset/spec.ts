/**
 * Layer spec strings (`rep=3,crc,base`): parsing, canonical printing, and the one rule set for
 * which stacks are valid, shared by parsing, creation and unmarshalling.
 *
 * Rules (a stack is listed top layer first):
 * - `base` is the bottom layer and appears exactly once; a spec without it gets it appended.
 * - `crc` and `rep` appear at most once each, in either order above base. A second crc would
 *   check the same bytes twice; a second rep multiplies copies, which `rep=N` already says.
 * - Only `rep` takes an option: the total number of copies, an integer in
 *   1..REP_LAYER_COPIES_MAX (default REP_LAYER_COPIES_DEFAULT). Parsing normalises it, so the
 *   options of a parsed rep spec are always its decimal copy count.
 * @module
 */

import { invalid, REP_LAYER_COPIES_DEFAULT, REP_LAYER_COPIES_MAX } from "../core/mod.ts";
import { LayerKind, type LayerSpec } from "./blockset.ts";

const layerNames: ReadonlyMap<string, LayerKind> = new Map([
  ["base", LayerKind.Base],
  ["crc", LayerKind.Crc],
  ["rep", LayerKind.Rep],
  ["r", LayerKind.Rep],
]);

/** Canonical name of each kind, as printed by {@link formatBlockLayerSpec}. */
export const layerKindNames: Readonly<Record<LayerKind, string>> = {
  [LayerKind.Base]: "base",
  [LayerKind.Crc]: "crc",
  [LayerKind.Rep]: "rep",
};

/**
 * Parses a layer spec such as `crc,base` or `rep=3,crc` (base appended) into layers, top first.
 * Throws `invalid` naming the bad part.
 * @example
 * ```ts
 * import { parseBlockLayerSpec } from "./spec.ts";
 * parseBlockLayerSpec("REP=3,crc"); // rep "3", crc, base
 * ```
 */
export function parseBlockLayerSpec(spec: string): LayerSpec[] {
  const entries = spec.split(",").map((entry) => entry.trim());
  const layers = entries.map((entry) => parseEntry(spec, entry));
  if (!layers.some((layer) => layer.kind === LayerKind.Base)) {
    layers.push({ kind: LayerKind.Base, options: "" });
  }
  checkLayerSpecs(layers, `block layer spec ${quote(spec)}`);
  return layers;
}

/** `text` in quotes for a one-line error, shortened so a huge input cannot flood a log. */
function quote(text: string): string {
  const shown = text.length > 40 ? `${text.slice(0, 40)}...` : text;
  return `"${shown}"`;
}

function parseEntry(spec: string, entry: string): LayerSpec {
  const what = `invalid block layer spec ${quote(spec)}`;
  if (entry === "") throw invalid(`${what}: empty layer (expected e.g. "crc,base")`);
  const equals = entry.indexOf("=");
  const name = (equals < 0 ? entry : entry.slice(0, equals)).trim().toLowerCase();
  const option = equals < 0 ? undefined : entry.slice(equals + 1).trim();
  const kind = layerNames.get(name);
  if (kind === undefined) {
    throw invalid(`${what}: unknown layer ${quote(entry)} (known: base, crc, rep)`);
  }
  if (kind !== LayerKind.Rep) {
    if (option !== undefined) throw invalid(`${what}: layer ${quote(entry)} takes no option`);
    return { kind, options: "" };
  }
  const copies = option === undefined ? REP_LAYER_COPIES_DEFAULT : parseCopies(option);
  if (copies === undefined) {
    throw invalid(`${what}: ${quote(entry)} needs a copy count in 1..${REP_LAYER_COPIES_MAX}`);
  }
  return { kind, options: String(copies) };
}

/** The copy count of a rep option, or undefined when it is not an integer in range. */
function parseCopies(option: string): number | undefined {
  if (!/^[0-9]{1,3}$/.test(option)) return undefined;
  const copies = Number(option);
  return copies >= 1 && copies <= REP_LAYER_COPIES_MAX ? copies : undefined;
}

/**
 * The copy count of a rep layer spec (its options, or the default when empty). Throws `invalid`
 * for any other option.
 */
export function repCopies(layer: LayerSpec): number {
  if (layer.options === "") return REP_LAYER_COPIES_DEFAULT;
  const copies = parseCopies(layer.options);
  if (copies === undefined) {
    throw invalid(
      `rep layer option ${quote(layer.options)} is not a copy count in 1..${REP_LAYER_COPIES_MAX}`,
    );
  }
  return copies;
}

/**
 * Checks a stack of layer specs (top first) against the rules of the module doc. `what` names the
 * input in the one-line `invalid` error.
 */
export function checkLayerSpecs(layers: readonly LayerSpec[], what: string): void {
  if (layers.length === 0) throw invalid(`invalid ${what}: no layers`);
  const seen = new Set<LayerKind>();
  layers.forEach((layer, position) => {
    const name = layerKindNames[layer.kind];
    if (name === undefined) throw invalid(`invalid ${what}: unknown layer kind ${layer.kind}`);
    if (layer.kind === LayerKind.Base && position !== layers.length - 1) {
      throw invalid(`invalid ${what}: base must be the bottom (last) layer`);
    }
    if (seen.has(layer.kind)) throw invalid(`invalid ${what}: layer "${name}" appears twice`);
    seen.add(layer.kind);
    if (layer.kind === LayerKind.Rep) repCopies(layer);
    else if (layer.options !== "") {
      throw invalid(`invalid ${what}: layer "${name}" takes no option`);
    }
  });
  if (layers[layers.length - 1]?.kind !== LayerKind.Base) {
    throw invalid(`invalid ${what}: the bottom layer must be base`);
  }
}

/**
 * Prints layers in canonical form, top first: `rep=3,crc,base`. Throws `invalid` for a stack that
 * {@link parseBlockLayerSpec} would reject, so what is printed always parses back.
 */
export function formatBlockLayerSpec(specs: readonly LayerSpec[]): string {
  checkLayerSpecs(specs, "block layer stack");
  return specs.map((layer) => {
    const name = layerKindNames[layer.kind];
    return layer.kind === LayerKind.Rep ? `${name}=${repCopies(layer)}` : name;
  }).join(",");
}
