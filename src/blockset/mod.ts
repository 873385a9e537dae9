/**
 * Blocksets: a file as an array of blocks, built from layers (base, crc, rep). The contract is in
 * blockset.ts; spec strings in spec.ts; each layer in its own file. Other modules use only what
 * this file exports.
 * @module
 */

export * from "./blockset.ts";
export { formatBlockLayerSpec, parseBlockLayerSpec } from "./spec.ts";
export { createBlockset, unmarshalBlockset } from "./stack.ts";
export type { BlocksetOptions } from "./layer.ts";
