/**
 * The file engine's in-memory index, off the JavaScript heap: one typed array per per-slot field
 * (ref bytes, generation, checksum, state, link to an older copy) and an open-addressing hash
 * table from ref to slot. About 50 bytes per slot, allocated zeroed and therefore committed by
 * the kernel only for slots that are used; nothing here is a JavaScript object per block, so the
 * garbage collector never walks the index. A new per-slot field is one more typed array.
 *
 * Invariants:
 * - The table holds exactly the slots in state Stored, one per ref; a ref's bytes live in the
 *   slot's ref field (the table stores `slot + 1`, 0 marks an empty cell).
 * - Linear probing with backward-shift deletion: no tombstones, so lookups stay short however
 *   many deletes happen. The table has at least twice as many cells as slots (load <= 1/2).
 * - `older[s]` (stored as slot + 1) links a Stored or Retiring copy to the next older copy of the
 *   same ref that is still Retiring; the chain ends at 0.
 * Pure: no I/O.
 * @module
 */

import { assert, BLOCK_REF_BYTES, BlockRef } from "../core/mod.ts";

/** What a slot is used for. Every slot is in exactly one state. */
export const SlotState = {
  /** Free (on the free stack or never used). Its entry on disk is zero. */
  Free: 0,
  /** Taken by a put whose data write runs; entry on disk still zero. */
  Held: 1,
  /** The current copy of its ref: in the hash table. */
  Stored: 2,
  /** An older copy of a stored ref: its entry stays until a flush made the newer one durable. */
  Retiring: 3,
  /**
   * An older copy whose ref was deleted: its entry stays until a flush retires it (as Retiring),
   * so a power loss that takes the delete and the newest copy's entry finds the durable state.
   */
  Dead: 4,
  /** A deleted or dropped copy: entry being zeroed, slot free once that write completed. */
  Clearing: 5,
  /** An old copy retired by the running flush: entry zeroed, slot free after the map sync. */
  Retired: 6,
  /**
   * A deleted copy whose entry stays on disk until the delete's journal record is durable (then
   * it is Clearing): a zeroed entry must never be found, after a power loss, without the delete
   * that explains it (replay would otherwise bring the ref back from older records).
   */
  Deleting: 7,
} as const;
export type SlotState = typeof SlotState[keyof typeof SlotState];

/** 32-bit words of a ref. */
export const REF_WORDS = BLOCK_REF_BYTES / 4;

/** Per-slot fields and the ref → slot table; see the module doc. */
export class SlotIndex {
  readonly slotCount: number;
  /** The ref of each slot (meaningful in states Held..Retired), 24 bytes per slot. */
  readonly refBytes: Uint8Array;
  /** The same bytes as 6 words per slot. */
  readonly refWords: Uint32Array;
  /** Generation of the copy in each slot (a safe integer). */
  readonly generations: Float64Array;
  /** CRC-32 (IEEE) of the block in each slot. */
  readonly crcs: Uint32Array;
  /** {@link SlotState} of each slot. */
  readonly states: Uint8Array;
  /** slot + 1 of the next older retiring copy of the same ref, 0 for none. */
  readonly older: Uint32Array;
  readonly #table: Uint32Array;
  readonly #mask: number;
  #size = 0;

  constructor(slotCount: number) {
    assert(Number.isSafeInteger(slotCount) && slotCount >= 0, "slot index: bad slot count");
    this.slotCount = slotCount;
    this.refBytes = new Uint8Array(slotCount * BLOCK_REF_BYTES);
    this.refWords = new Uint32Array(this.refBytes.buffer);
    this.generations = new Float64Array(slotCount);
    this.crcs = new Uint32Array(slotCount);
    this.states = new Uint8Array(slotCount);
    this.older = new Uint32Array(slotCount);
    let cells = 16;
    while (cells < slotCount * 2) cells *= 2;
    this.#table = new Uint32Array(cells);
    this.#mask = cells - 1;
  }

  /** Refs in the table (slots in state Stored). */
  get size(): number {
    return this.#size;
  }

  /** Writes `ref`'s words into `key` (6 words), for {@link find}. */
  static keyOf(ref: BlockRef, key: Uint32Array): Uint32Array {
    ref.writeTo(new Uint8Array(key.buffer, key.byteOffset, BLOCK_REF_BYTES), 0);
    return key;
  }

  /** The stored slot of the ref whose words are `key`, or -1. */
  find(key: Uint32Array): number {
    for (let cell = hashWords(key, 0) & this.#mask;; cell = (cell + 1) & this.#mask) {
      const entry = this.#table[cell]!;
      if (entry === 0) return -1;
      if (this.#refEquals(entry - 1, key, 0)) return entry - 1;
    }
  }

  /** The stored slot of the ref held by `slot` (which may be in any state), or -1. */
  findRefOf(slot: number): number {
    for (let cell = this.#hashOfSlot(slot) & this.#mask;; cell = (cell + 1) & this.#mask) {
      const entry = this.#table[cell]!;
      if (entry === 0) return -1;
      if (this.#refEquals(entry - 1, this.refWords, slot)) return entry - 1;
    }
  }

  /**
   * Adds `slot` (its ref field set) as Stored unless its ref is stored already: returns -1 when
   * added, else the slot that stores the ref (nothing changes then). One probe for both.
   */
  insertIfAbsent(slot: number): number {
    let cell = this.#hashOfSlot(slot) & this.#mask;
    for (; this.#table[cell] !== 0; cell = (cell + 1) & this.#mask) {
      const other = this.#table[cell]! - 1;
      if (this.#refEquals(other, this.refWords, slot)) return other;
    }
    this.#table[cell] = slot + 1;
    this.states[slot] = SlotState.Stored;
    this.#size++;
    return -1;
  }

  /** Copies `key` into the ref field of `slot`. */
  setRef(slot: number, key: Uint32Array): void {
    this.refWords.set(key.subarray(0, REF_WORDS), slot * REF_WORDS);
  }

  /** The ref held by `slot`. */
  refAt(slot: number): BlockRef {
    return BlockRef.fromBytes(this.refBytes, slot * BLOCK_REF_BYTES);
  }

  /** Adds `slot` (its ref field set, its ref not in the table) to the table as Stored. */
  insert(slot: number): void {
    let cell = this.#hashOfSlot(slot) & this.#mask;
    for (; this.#table[cell] !== 0; cell = (cell + 1) & this.#mask) {
      assert(!this.#refEquals(this.#table[cell]! - 1, this.refWords, slot), "ref already indexed");
    }
    this.#table[cell] = slot + 1;
    this.states[slot] = SlotState.Stored;
    this.#size++;
  }

  /** Makes `next` (same ref as `current`, ref field set) the stored slot in place of `current`. */
  replace(current: number, next: number): void {
    const cell = this.#cellOf(current);
    this.#table[cell] = next + 1;
    this.states[next] = SlotState.Stored;
  }

  /** Removes stored `slot` from the table (its state is the caller's to set). */
  remove(slot: number): void {
    let hole = this.#cellOf(slot);
    this.#table[hole] = 0;
    this.#size--;
    // Backward-shift: move later members of the probe run into the hole when their home allows.
    for (let cell = (hole + 1) & this.#mask;; cell = (cell + 1) & this.#mask) {
      const entry = this.#table[cell]!;
      if (entry === 0) return;
      const home = this.#hashOfSlot(entry - 1) & this.#mask;
      // The entry may fill the hole when its home is not in the cyclic range (hole, cell].
      if (((cell - home) & this.#mask) >= ((cell - hole) & this.#mask)) {
        this.#table[hole] = entry;
        this.#table[cell] = 0;
        hole = cell;
      }
    }
  }

  #cellOf(slot: number): number {
    for (let cell = this.#hashOfSlot(slot) & this.#mask;; cell = (cell + 1) & this.#mask) {
      const entry = this.#table[cell]!;
      assert(entry !== 0, `slot ${slot} is not in the index`);
      if (entry === slot + 1) return cell;
    }
  }

  #hashOfSlot(slot: number): number {
    return hashWords(this.refWords, slot * REF_WORDS);
  }

  #refEquals(slot: number, words: Uint32Array, wordsSlot: number): boolean {
    const a = slot * REF_WORDS;
    const b = wordsSlot * REF_WORDS;
    const refs = this.refWords;
    return refs[a] === words[b] && refs[a + 1] === words[b + 1] &&
      refs[a + 2] === words[b + 2] && refs[a + 3] === words[b + 3] &&
      refs[a + 4] === words[b + 4] && refs[a + 5] === words[b + 5];
  }
}

/** A 32-bit hash of the 6 words at `offset` (murmur3-style mixing). */
export function hashWords(words: Uint32Array, offset: number): number {
  let h = 0x2545f491;
  for (let i = offset; i < offset + REF_WORDS; i++) {
    let k = Math.imul(words[i]!, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    h ^= Math.imul(k, 0x1b873593);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
