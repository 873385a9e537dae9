/**
 * The deterministic workload of the crash test, shared by the writer process and the verifier:
 * operation n touches key `n % KEYS`; every DELETE_EVERY-th operation deletes the key, the others
 * put a block whose bytes are a function of n alone (its first 8 bytes are n, so a block read
 * back names the operation that wrote it).
 * @module
 */

import { BlockRef } from "../../src/core/mod.ts";

/** Block size of the crash-test store. */
export const BLOCK_BYTES = 4096;
/** Slots of the crash-test store (capacity is one less: the spare). */
export const SLOT_COUNT = 64;
/** Keys the workload cycles through (fewer than the capacity, so puts never run out of space). */
export const KEYS = 40;
/** Operation n with n % DELETE_EVERY === DELETE_EVERY - 1 is a delete. */
export const DELETE_EVERY = 7;
/** Operations issued together (never two on one key, as BATCH < KEYS). */
export const BATCH = 8;
/** A flush after this many batches. */
export const FLUSH_EVERY_BATCHES = 2;

/** The ref of key `key`. */
export function keyRef(key: number): BlockRef {
  return new BlockRef({ volume: 2, inode: 7n, index: BigInt(key) });
}

/** Whether operation `op` is a delete. */
export function isDelete(op: number): boolean {
  return op % DELETE_EVERY === DELETE_EVERY - 1;
}

/** The block operation `op` puts. */
export function blockOf(op: number): Uint8Array {
  const block = new Uint8Array(BLOCK_BYTES);
  const view = new DataView(block.buffer);
  view.setBigUint64(0, BigInt(op), true);
  let x = (op * 2654435761 + 0x9e3779b9) >>> 0 || 1;
  for (let i = 8; i < BLOCK_BYTES; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    view.setUint32(i, x >>> 0, true);
  }
  return block;
}

/** The operation number stored in the first 8 bytes of a block. */
export function opOf(block: Uint8Array): number {
  return Number(new DataView(block.buffer, block.byteOffset).getBigUint64(0, true));
}
