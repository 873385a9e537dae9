/**
 * MapWriter: writes the file engine's index entries to the map file in the background, off the
 * caller's path. The engine changes its in-memory index at once and marks the slot dirty; the
 * writer writes the *current* entry of every dirty slot in batches, one batch at a time, through
 * the store's FileIo (nonblocking writes). A batch takes every slot marked before it started, so
 * entries marked while one runs are coalesced into the next.
 *
 * Invariants:
 * - One batch at a time, and all map writes of a running store go through here, so two writes
 *   of one entry are never in flight together and the later content always lands last.
 * - What a batch writes is what the index says when the batch encodes it: a Stored or Retiring
 *   slot's entry, else zero. Writing the current state of any slot is correct, as the engine
 *   changes a slot's state only when the entry it implies may reach the disk.
 * - A valid entry that did not change is never rewritten: a write that a power loss tears can
 *   leave garbage in the bytes it covered, and a rewrite would put a durable entry at that risk.
 *   Runs of dirty slots are therefore only joined over slots whose entry is zero (garbage there
 *   reads as a damaged entry, which is treated as free), and they are encoded all at once so
 *   the states that decided this cannot change before they are written.
 * - `onWritten` reports the slots whose entry is in the file as the index still says (slots
 *   marked again meanwhile are left for the next batch), before the batch's waiters resume.
 * - High-water mark: every entry at or above the persisted mark H is zero on disk. Before an
 *   entry at or above H is written, the writer raises H: it writes the current state of every
 *   slot in [H, H') (zeroing stale entries a power loss may have left there), syncs the map, and
 *   only then writes the record of H' (see file_format.ts). The map is synced before the record
 *   is written, so a record never becomes durable ahead of the zeros it vouches for.
 * - A failed write stops the writer: every waiter fails and `onFailure` is told.
 * @module
 */

import { assert } from "../core/mod.ts";
import type { IoFile } from "./file_io.ts";
import {
  encodeHighWaterMark,
  EntryBuffer,
  entryOffsetBytes,
  type HighWaterMark,
  HWM_RECORD_OFFSETS,
} from "./file_format.ts";
import { type SlotIndex, SlotState } from "./slot_index.ts";

/** Most slots of a high-water mark step (1 MiB of entries). */
export const HIGH_WATER_STEP_SLOTS_MAX = 16_384;

/**
 * The unit the high-water mark moves in: 1/8 of a small store (so even a test store raises it
 * several times), at most HIGH_WATER_STEP_SLOTS_MAX.
 */
export function highWaterStepSlots(slotCount: number): number {
  return Math.min(HIGH_WATER_STEP_SLOTS_MAX, Math.max(8, Math.ceil(slotCount / 8)));
}
/** Entries of a raised range encoded and written per write call. */
const ENTRIES_PER_WRITE = 16_384;
/** Dirty slots this close together are written as one run (the gap rewritten as it is). */
const RUN_GAP_SLOTS_MAX = 8;

/** What a MapWriter needs. */
export interface MapWriterOptions {
  map: IoFile;
  index: SlotIndex;
  /** Slots of the store (entries past it do not exist). */
  slotCount: number;
  /** The persisted high-water mark. */
  highWater: HighWaterMark;
  /** Slots whose current entry is now in the file (see the module doc). */
  onWritten(slots: readonly number[]): void;
  /** A write failed; the writer has stopped. */
  onFailure(error: unknown): void;
}

interface Waiter {
  /** Resumes once this many batches completed. */
  batch: number;
  resolve(): void;
  reject(error: unknown): void;
}

/**
 * The high-water mark a write of `slot` needs, raised from `current` (see the module doc): by a
 * step at least and by half at least, so a store that fills up raises it a few dozen times.
 */
export function raisedHighWater(current: number, slot: number, slotCount: number): number {
  const step = highWaterStepSlots(slotCount);
  const wanted = Math.max(slot + 1, current + Math.max(step, current >>> 1));
  return Math.min(slotCount, Math.ceil(wanted / step) * step);
}

/** Background writer of map entries; see the module doc. */
export class MapWriter {
  readonly #options: MapWriterOptions;
  readonly #index: SlotIndex;
  readonly #isDirty: Uint8Array;
  #dirty: number[] = [];
  #highWater: HighWaterMark;
  #running = false;
  #started = 0;
  #completed = 0;
  #waiters: Waiter[] = [];
  #failure: unknown = null;
  #stopped = false;

  constructor(options: MapWriterOptions) {
    this.#options = options;
    this.#index = options.index;
    this.#isDirty = new Uint8Array(options.slotCount);
    this.#highWater = options.highWater;
  }

  /** The persisted high-water mark (slots), as far as this writer knows. */
  get highWaterSlots(): number {
    return this.#highWater.slots;
  }

  /** Batches that finished writing (a count that only grows). */
  get batchesCompleted(): number {
    return this.#completed;
  }

  /** Slots waiting for a batch. */
  get dirtyCount(): number {
    return this.#dirty.length;
  }

  /** Schedules the entry of `slot` to be written (with the content it has then). */
  markDirty(slot: number): void {
    assert(slot >= 0 && slot < this.#options.slotCount, `markDirty: slot ${slot} out of range`);
    if (this.#isDirty[slot] === 0) {
      this.#isDirty[slot] = 1;
      this.#dirty.push(slot);
    }
    this.#kick();
  }

  /** Resolves once every entry marked before this call is in the file. */
  written(): Promise<void> {
    if (this.#failure !== null) return Promise.reject(this.#failure);
    if (this.#stopped && this.#dirty.length > 0) {
      return Promise.reject(new Error("map writer stopped with entries unwritten"));
    }
    // With nothing dirty, the batch running now (if any) holds every earlier mark.
    const batch = this.#dirty.length > 0 ? this.#started + 1 : this.#started;
    if (batch <= this.#completed) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiters.push({ batch, resolve, reject }));
  }

  /** Stops starting batches (the store is closing); a running batch finishes. */
  stop(): void {
    this.#stopped = true;
  }

  #kick(): void {
    if (this.#running || this.#stopped || this.#failure !== null) return;
    this.#running = true;
    // A microtask later, so marks made in the same turn share the batch.
    queueMicrotask(() => void this.#loop());
  }

  async #loop(): Promise<void> {
    try {
      while (this.#dirty.length > 0 && !this.#stopped) {
        this.#started++;
        const written = await this.#batch();
        this.#completed++;
        this.#options.onWritten(written);
        this.#wake();
      }
    } catch (error) {
      this.#failure = error;
      for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
      this.#options.onFailure(error);
    } finally {
      this.#running = false;
    }
    // A stop leaves marks unwritten: waiters would wait forever, so they fail.
    if (this.#stopped && this.#waiters.length > 0 && this.#failure === null) {
      const error = new Error("map writer stopped");
      for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    }
  }

  #wake(): void {
    const ready = this.#waiters.filter((waiter) => waiter.batch <= this.#completed);
    this.#waiters = this.#waiters.filter((waiter) => waiter.batch > this.#completed);
    for (const waiter of ready) waiter.resolve();
  }

  /** Writes one batch; returns the slots whose current entry it wrote. */
  async #batch(): Promise<number[]> {
    const slots = this.#dirty.sort((a, b) => a - b);
    this.#dirty = [];
    for (const slot of slots) this.#isDirty[slot] = 0;
    const highWater = this.#highWater.slots;
    const highest = slots[slots.length - 1]!;
    // Slots at or above the high-water mark are written with the whole raised range below.
    const below = slots.filter((slot) => slot < highWater);
    const zeroEntry = (slot: number) => !hasEntry(this.#index.states[slot]!);
    const writes = toRuns(below, zeroEntry).map(([first, end]) => {
      const buffer = this.#encode(first, end);
      return this.#options.map.write(buffer.bytes, entryOffsetBytes(first));
    });
    await Promise.all(writes);
    if (highest >= highWater) {
      const raiseTo = raisedHighWater(highWater, highest, this.#options.slotCount);
      for (let start = highWater; start < raiseTo; start += ENTRIES_PER_WRITE) {
        const end = Math.min(raiseTo, start + ENTRIES_PER_WRITE);
        await this.#options.map.write(this.#encode(start, end).bytes, entryOffsetBytes(start));
      }
      await this.#raise(raiseTo);
    }
    return slots.filter((slot) => this.#isDirty[slot] === 0);
  }

  /** The current entries of slots [first, end). */
  #encode(first: number, end: number): EntryBuffer {
    const buffer = new EntryBuffer(end - first, this.#index);
    for (let slot = first; slot < end; slot++) {
      if (hasEntry(this.#index.states[slot]!)) buffer.encodeSlot(slot - first, slot);
    }
    return buffer;
  }

  async #raise(slots: number): Promise<void> {
    await this.#options.map.datasync();
    const mark = { sequence: this.#highWater.sequence + 1, slots };
    const offset = HWM_RECORD_OFFSETS[mark.sequence % HWM_RECORD_OFFSETS.length]!;
    await this.#options.map.write(encodeHighWaterMark(mark), offset);
    this.#highWater = mark;
  }
}

/** Whether a slot in `state` has a used entry on disk (else its entry is zero). */
function hasEntry(state: number): boolean {
  return state === SlotState.Stored || state === SlotState.Retiring ||
    state === SlotState.Dead || state === SlotState.Deleting;
}

/**
 * Sorted slots as runs [first, end): neighbours at most RUN_GAP_SLOTS_MAX apart share a run when
 * every slot between them has a zero entry (`zeroEntry`).
 */
export function toRuns(
  sortedSlots: readonly number[],
  zeroEntry: (slot: number) => boolean,
): [number, number][] {
  const runs: [number, number][] = [];
  for (const slot of sortedSlots) {
    const last = runs[runs.length - 1];
    if (last !== undefined && slot <= last[1] + RUN_GAP_SLOTS_MAX && gapIsZero(last[1], slot)) {
      last[1] = slot + 1;
    } else {
      runs.push([slot, slot + 1]);
    }
  }
  return runs;

  function gapIsZero(from: number, to: number): boolean {
    for (let slot = from; slot < to; slot++) if (!zeroEntry(slot)) return false;
    return true;
  }
}
