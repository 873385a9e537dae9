/**
 * Blocksets: a file as an array of blocks, built from layers (base, crc, rep).
 * @module
 */

export * from "./blockset.ts";
